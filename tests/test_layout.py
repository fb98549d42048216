"""The code's layout rules (ARCHITECTURE.md), checked on the source: two services that never import each
other, no import circle, small modules; and one middleware stack for the app a test builds and the app
that is served."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest
from starlette.testclient import TestClient

from services.common.admission import Admission
from services.common.auth import ApiKeyAuth
from services.common.http import BodySizeLimit
from services.common.serve import BalancerGate

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ROOT / "services"
MAX_MODULE_LINES = 400
MAX_SESSION_LINES = 250  # a service's session: its messages and the wiring of its work
MAX_CHASSIS_LINES = 300  # what both services' sessions share


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts): p for p in SERVICES.rglob("*.py")}


def imports_of(name: str, path: Path) -> set[str]:
    """Every services.* module ``name`` imports, at module level or inside a function."""
    package = name.rsplit(".", 1)[0] if path.name != "__init__.py" else name
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    known = modules()
    return {m for m in found if m in known and m != name}


def test_the_services_never_import_each_other():
    crossing = []
    for name, path in modules().items():
        service = name.split(".")[1]
        for target in imports_of(name, path):
            other = target.split(".")[1]
            if {service, other} == {"asr", "tts"}:
                crossing.append(f"{name} -> {target}")
    assert not crossing, crossing


def test_no_import_circle():
    graph = {name: imports_of(name, path) for name, path in modules().items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return trail + [node, nxt]
            if nxt not in state and (cycle := visit(nxt, trail + [node])):
                return cycle
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            assert (cycle := visit(name, [])) is None, " -> ".join(cycle)


def test_modules_stay_small():
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert all(n <= MAX_MODULE_LINES for n in sizes.values()), {k: v for k, v in sizes.items() if v > MAX_MODULE_LINES}
    for session in ("services.asr.session", "services.tts.session"):
        assert sizes[session] <= MAX_SESSION_LINES, (session, sizes[session])
    assert sizes["services.common.session"] <= MAX_CHASSIS_LINES


@pytest.mark.parametrize("service", ["asr", "tts"])
def test_create_app_carries_the_served_middleware_stack(service, monkeypatch):
    """Tests build apps with create_app(); production serves the very same object, so both run the same
    stack (the balancer gate included: it used to be wrapped around the app only when served)."""
    import importlib

    from services.common import serve as serving

    app = importlib.import_module(f"services.{service}.app").create_app()
    assert [m.cls for m in app.user_middleware] == [BalancerGate, ApiKeyAuth, BodySizeLimit]
    served = []
    monkeypatch.setattr(serving.DrainingServer, "run", lambda self: served.append(self.config.app))
    serving.serve(app, host="127.0.0.1", port=1, drain_timeout_s=1, log_level="warning")
    assert served == [app]
    # and the gate works in the app a test builds: a draining instance refuses HTTP work with 503
    admission = Admission(4)
    admission.draining = True
    app.state.runtime = SimpleNamespace(admission=admission)
    response = TestClient(app).post("/v1/transcribe" if service == "asr" else "/v1/synthesize", json={})
    assert response.status_code == 503 and response.json()["error"]["code"] == "overloaded"
    assert response.headers["retry-after"] == "1"
    assert TestClient(app).get("/health").status_code == 200


def test_a_full_file_lane_refuses_an_upload_before_reading_it():
    """With every HTTP work slot taken, the gate answers a POST with 503 + Retry-After before the app (and its
    multipart parser) reads the body: refused uploads cost no CPU beside live streams."""
    from services.asr.app import create_app

    app = create_app()
    work = Admission(1, "file transcription")
    work.acquire()
    app.state.runtime = SimpleNamespace(admission=Admission(4), http_admission=work)  # no models: nothing may run

    def body():
        yield b"x" * 1000
        raise AssertionError("the body was read")

    response = TestClient(app).post("/v1/transcribe", content=body(),
                                    headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert "file transcription slots" in response.json()["error"]["message"]


def test_common_names_no_dialect():
    """The compatible APIs are the services' business: common's generic modules neither import the one dialect
    module there (common/deepgram.py, shared by both services' Deepgram sessions) nor name a dialect, its paths
    or its headers; the services register their dialects' sockets and refusal headers with the app."""
    marks = ("deepgram", "dg-error", "openai", "realtime", "/v1/listen", "/v1/speak")
    naming = []
    for name, path in modules().items():
        if name.startswith("services.common.") and name != "services.common.deepgram":
            text = path.read_text().lower()
            naming += [f"{name}: {m}" for m in marks if m in text]
            naming += [f"{name} imports it" for m in imports_of(name, path) if m == "services.common.deepgram"]
    assert not naming, naming
