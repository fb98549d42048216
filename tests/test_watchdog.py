"""The way back from a hung model: a real ASR process (tests/hanging_asr.py) whose Whisper thread stops making
progress. It tells systemd it is ready, feeds the watchdog while its models answer, stops feeding once a call is
stalled, and exits non-zero when the stall lasts ``server.stall_exit_s``, so a supervisor (systemd's
``Restart=on-failure``) starts it again. ``$NOTIFY_SOCKET`` is a datagram socket this test owns."""

from __future__ import annotations

import os
import socket
import time

import httpx
import pytest

from conftest import DATA, ROOT, ServiceProcess

CALL_TIMEOUT_S = 1.0
STALL_EXIT_S = 4.0


def messages(sock: socket.socket, seconds: float, until=lambda: False) -> list[tuple[float, str]]:
    """What the service sent within ``seconds`` (or until ``until()``)."""
    out, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0 and not until():
        sock.settimeout(min(left, 0.2))
        try:
            out.append((time.monotonic(), sock.recv(4096).decode()))
        except socket.timeout:
            continue
    return out


@pytest.fixture
def notify_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    yield path, sock
    sock.close()


def test_a_stalled_model_stops_the_watchdog_and_the_process_exits_non_zero(tmp_path, notify_socket):
    path, sock = notify_socket
    flag = tmp_path / "hang"
    service = ServiceProcess("hanging_asr", {
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), "HANG_FLAG": str(flag),
        "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000",  # systemd's WatchdogSec=1
        "ASR_SCHEDULER__CALL_TIMEOUT_S": str(CALL_TIMEOUT_S), "ASR_SERVER__STALL_EXIT_S": str(STALL_EXIT_S),
        "ASR_MODEL__CPU_THREADS": "2"}, tmp_path / "asr.log").start()
    try:
        healthy = [m for _, m in messages(sock, 2.5)]
        assert "READY=1" in healthy and healthy.count("WATCHDOG=1") >= 3, healthy  # fed every half interval
        flag.touch()  # from now on a Whisper call never returns
        with open(DATA / "asr" / "jfk.wav", "rb") as f:
            r = httpx.post(service.http + "/v1/transcribe", files={"file": f}, timeout=30)
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal"  # failed at the call timeout
        assert httpx.get(service.http + "/ready", timeout=5).json()["status"] == "stalled"
        stalled_at = time.monotonic()
        messages(sock, 0.6)  # what was sent before the stall was seen (one feeding round) is behind us
        during = messages(sock, STALL_EXIT_S + 10, until=lambda: service.proc.poll() is not None)
        assert "WATCHDOG=1" not in [m for _, m in during], during  # systemd would kill the unit now
        code = service.proc.wait(15)
        assert code == 70, service.log()[-2000:]  # a supervisor restarts it
        assert time.monotonic() - stalled_at >= STALL_EXIT_S - 1.5
        assert "exiting so the supervisor restarts" in service.log()
    finally:
        flag.unlink(missing_ok=True)
        service.stop()
