"""API keys on both services: open operations routes, 401 / 1008 without a valid key, names not keys in logs."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets

from conftest import ASR_TEST_ENV, DATA, running
from services.common.auth import ApiKeys

ALICE = "alice-secret-key-0123456789"
BOB = "bob-secret-key-9876543210"


def test_api_keys_identify_in_constant_time_and_reject_short_keys(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# clients\nbob:{BOB}\n\n")
    keys = ApiKeys.load([f"alice:{ALICE}", "anonymous-key-000000000"], str(keys_file))
    assert len(keys) == 3 and keys.enabled
    assert keys.identify(ALICE) == "alice" and keys.identify(BOB) == "bob"
    assert keys.identify("anonymous-key-000000000").startswith("key-")
    assert keys.identify(ALICE + "x") is None and keys.identify("") is None and keys.identify(None) is None
    with pytest.raises(ValueError, match="16 characters"):
        ApiKeys(["short"])
    with pytest.raises(ValueError, match="not found"):
        ApiKeys.load([], str(tmp_path / "missing"))
    assert not ApiKeys([]).enabled


@pytest.fixture(scope="module")
def secured_asr(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auth")
    (tmp / "keys").write_text(f"bob:{BOB}\n")
    env = {**ASR_TEST_ENV, "ASR_SERVER__API_KEYS": json.dumps([f"alice:{ALICE}"]),
           "ASR_SERVER__API_KEYS_FILE": str(tmp / "keys")}
    with running("services.asr", env, tmp) as service:
        yield service


def test_operations_routes_stay_open(secured_asr):
    for path in ("/health", "/ready", "/metrics"):
        assert httpx.get(secured_asr.http + path).status_code == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key-000000000000"}, {"Authorization": ALICE}])
def test_http_without_a_valid_key_is_401(secured_asr, headers):
    with open(DATA / "asr" / "quilter.wav", "rb") as f:
        r = httpx.post(secured_asr.http + "/v1/transcribe", files={"file": f}, headers=headers, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_http_with_a_key_works_and_logs_the_client_name_only(secured_asr):
    with open(DATA / "asr" / "quilter.wav", "rb") as f:
        r = httpx.post(secured_asr.http + "/v1/transcribe", files={"file": f},
                       headers={"Authorization": f"Bearer {BOB}"}, timeout=60)
    assert r.status_code == 200 and "quilter" in r.json()["text"].lower()
    metrics = httpx.get(secured_asr.http + "/metrics").text
    assert 'asr_client_requests_total{client="bob",kind="http"}' in metrics
    assert BOB not in metrics and ALICE not in metrics


def test_websocket_key_by_header_or_query_and_refusal_with_1008(secured_asr):
    async def go():
        out = {}
        async with websockets.connect(f"{secured_asr.ws}/v1/stream/asr") as ws:
            out["none"] = (json.loads(await ws.recv()), await _closed(ws))
        async with websockets.connect(f"{secured_asr.ws}/v1/stream/asr?api_key=nope-nope-nope-nope") as ws:
            out["wrong"] = (json.loads(await ws.recv()), await _closed(ws))
        async with websockets.connect(f"{secured_asr.ws}/v1/stream/asr?api_key={ALICE}") as ws:
            out["query"] = json.loads(await ws.recv())
        async with websockets.connect(f"{secured_asr.ws}/v1/stream/asr",
                                      additional_headers={"Authorization": f"Bearer {BOB}"}) as ws:
            out["header"] = json.loads(await ws.recv())
        return out
    out = asyncio.run(go())
    for case in ("none", "wrong"):
        event, code = out[case]
        assert event["type"] == "error" and event["code"] == "unauthorized" and code == 1008
    assert out["query"]["type"] == "ready" and out["header"]["type"] == "ready"
    log = secured_asr.log()
    assert '"client": "alice"' in log and '"client": "bob"' in log
    assert ALICE not in log and BOB not in log


def test_a_key_in_the_query_counts_only_on_a_websocket_and_only_by_its_plain_name(secured_asr):
    """Query strings end up in proxies' access logs: plain HTTP never takes a key from one, and a
    percent-encoded name (which the log redaction would not match) is no key either."""
    r = httpx.post(f"{secured_asr.http}/v1/transcribe?api_key={ALICE}", files={"file": ("a.wav", b"RIFF")},
                   timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"

    async def go():
        async with websockets.connect(f"{secured_asr.ws}/v1/stream/asr?api%5Fkey={ALICE}") as ws:
            return json.loads(await ws.recv()), await _closed(ws)
    event, code = asyncio.run(go())
    assert event["code"] == "unauthorized" and code == 1008


def test_deepgram_socket_takes_a_browsers_key_as_a_subprotocol_and_accepts_the_scheme_back(secured_asr):
    """Deepgram's browser clients cannot set headers: ``new WebSocket(url, ["token", KEY])``. The scheme is accepted
    back (a browser drops a socket that does not), never the key; a wrong key is refused on the handshake."""
    async def go():
        out = {}
        for scheme in ("token", "bearer"):
            async with websockets.connect(f"{secured_asr.ws}/v1/listen", subprotocols=[scheme, BOB]) as ws:
                await ws.send(json.dumps({"type": "CloseStream"}))
                out[scheme] = (ws.subprotocol, json.loads(await ws.recv()))
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(f"{secured_asr.ws}/v1/listen", subprotocols=["token", "wrong-key-0123456789"]):
                pass
        out["wrong"] = refused.value.response.status_code
        # the native socket names no key subprotocol: a key offered there is no key
        async with websockets.connect(f"{secured_asr.ws}/v1/stream/asr", subprotocols=["token", BOB]) as ws:
            out["native"] = (json.loads(await ws.recv()), await _closed(ws))
        return out
    out = asyncio.run(go())
    for scheme in ("token", "bearer"):
        assert out[scheme] == (scheme, out[scheme][1]) and out[scheme][1]["type"] == "Metadata"
    assert out["wrong"] == 401
    assert out["native"][0]["code"] == "unauthorized" and out["native"][1] == 1008
    assert '"client": "bob"' in secured_asr.log() and BOB not in secured_asr.log()


async def _closed(ws) -> int | None:
    try:
        await asyncio.wait_for(ws.recv(), 5)
    except websockets.ConnectionClosed:
        pass
    return ws.close_code


def test_bad_key_configuration_stops_the_service_at_start(tmp_path):
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "services.asr"], capture_output=True, text=True, timeout=60,
                          env={"ASR_SERVER__API_KEYS": '["short"]', "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and "16 characters" in proc.stderr


def test_tts_checks_keys_too(tmp_path):
    env = {"TTS_SERVER__API_KEYS": json.dumps([f"alice:{ALICE}"]), "TTS_VOICES__STORE_DIR": str(tmp_path / "v")}
    with running("services.tts", env, tmp_path) as tts:
        assert httpx.get(tts.http + "/ready").status_code == 200
        assert httpx.get(tts.http + "/v1/voices").status_code == 401
        assert httpx.get(tts.http + "/v1/voices", headers={"Authorization": f"Bearer {ALICE}"}).status_code == 200

        async def ws():
            async with websockets.connect(f"{tts.ws}/v1/stream/tts") as s:
                return json.loads(await s.recv()), await _closed(s)
        event, code = asyncio.run(ws())
        assert event["code"] == "unauthorized" and code == 1008

        async def browser():  # Deepgram's streaming TTS from a browser: the key as a subprotocol
            async with websockets.connect(f"{tts.ws}/v1/speak", subprotocols=["token", ALICE]) as s:
                return s.subprotocol, json.loads(await s.recv())
        subprotocol, metadata = asyncio.run(browser())
        assert subprotocol == "token" and metadata["type"] == "Metadata"
