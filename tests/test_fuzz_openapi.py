"""Schemathesis against both services' OpenAPI schemas (``/openapi.json``), over real sockets.

Every operation gets generated requests, valid and invalid (missing fields,
wrong types, random multipart bodies and uploads). Invariants: no 5xx (the one
documented exception: ``501 not_supported`` from ``POST /v1/voices`` on an
engine that cannot clone), every error body is the contract's
``{"error":{"code","message"}}``, every request is answered within a bound (no
hang), and the process stays up. CI runs a few examples per operation;
``FUZZ_MULTIPLIER`` makes it a long run (RELIABILITY.md).
"""

from __future__ import annotations

import httpx
import schemathesis
from hypothesis import given
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode

from fuzzing import fuzz_settings, seeded
from services.common.errors import ErrorCode

REQUEST_BOUND_S = 60.0
CODES = {c.value for c in ErrorCode}


def check_response(case, response, *, allowed_5xx: set[tuple[str, str, int]] = frozenset()) -> None:
    key = (case.method.upper(), case.operation.path, response.status_code)
    assert response.status_code < 500 or key in allowed_5xx, (key, response.text[:300])
    if response.status_code >= 400:
        body = response.json()
        where = (case.method, case.formatted_path, response.status_code, body)
        assert set(body) == {"error"}, where
        assert body["error"]["code"] in CODES and isinstance(body["error"]["message"], str)
        if response.status_code == 503:
            assert response.headers.get("Retry-After")


def fuzz_schema(base: str, allowed_5xx=frozenset()) -> list[str]:
    """Run every operation's generated cases; returns the operations tested."""
    schema = schemathesis.openapi.from_url(base + "/openapi.json")
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @seeded
        @fuzz_settings(8)
        @given(case=st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                              operation.as_strategy(GenerationMode.NEGATIVE)))
        def run_case(case) -> None:
            check_response(case, case.call(timeout=REQUEST_BOUND_S), allowed_5xx=allowed_5xx)

        run_case()
        tested.append(f"{operation.method.upper()} {operation.path}")
        assert httpx.get(base + "/health", timeout=10).status_code == 200
    return tested


def test_asr_openapi(asr_service):
    tested = fuzz_schema(asr_service.http)
    assert {"POST /v1/transcribe", "POST /v1/audio/transcriptions"} <= set(tested)


def test_tts_openapi(examples_tts):
    tested = fuzz_schema(examples_tts.http, allowed_5xx={("POST", "/v1/voices", 501)})
    assert {"POST /v1/synthesize", "POST /v1/audio/speech", "POST /v1/voices"} <= set(tested)


def test_framework_errors_use_the_contract_body(asr_service):
    """Found by the fuzzer: malformed multipart (and unknown routes, wrong methods) answered FastAPI's
    ``{"detail": ...}`` instead of the contract's error body."""
    broken = httpx.post(asr_service.http + "/v1/transcribe", content=b"--x\r\nnot multipart",
                        headers={"Content-Type": "multipart/form-data; boundary=x"}, timeout=30)
    missing = httpx.get(asr_service.http + "/v1/nothing-here", timeout=30)
    method = httpx.delete(asr_service.http + "/v1/transcribe", timeout=30)
    assert (broken.status_code, broken.json()["error"]["code"]) == (400, "bad_request")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
    assert method.status_code == 405 and set(method.json()) == {"error"} and "POST" in method.headers["allow"]
