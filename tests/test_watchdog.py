"""The way back from a hung model: a real ASR process (tests/hanging_asr.py) whose Whisper thread stops making
progress. It tells systemd it is ready, feeds the watchdog while its models answer, stops feeding once a call is
stalled, and exits non-zero when the stall lasts ``server.stall_exit_s``, so a supervisor (systemd's
``Restart=on-failure``) starts it again. ``$NOTIFY_SOCKET`` is a datagram socket this test owns."""

from __future__ import annotations

import os
import re
import socket
import time

import httpx
import pytest

from conftest import DATA, ROOT, ServiceProcess, wait_until

CALL_TIMEOUT_S = 1.0
STALL_EXIT_S = 4.0


def messages(sock: socket.socket, seconds: float, until=lambda sent: False) -> list[str]:
    """What the service sent until ``until(sent)`` holds (at most ``seconds``): the socket is read as the
    messages come, and looked at again every 0.2 s for a condition outside it (the process's exit)."""
    out, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0 and not until(out):
        sock.settimeout(min(left, 0.2))
        try:
            out.append(sock.recv(4096).decode())
        except socket.timeout:
            continue
    return out


def pending(sock: socket.socket) -> list[str]:
    """The messages already waiting on the socket."""
    sock.setblocking(False)
    out = []
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        return out
    finally:
        sock.setblocking(True)


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
        healthy = messages(sock, 30, until=lambda sent: "READY=1" in sent and sent.count("WATCHDOG=1") >= 3)
        assert "READY=1" in healthy and healthy.count("WATCHDOG=1") >= 3, healthy  # fed, again and again
        flag.touch()  # from now on a Whisper call never returns
        with open(DATA / "asr" / "jfk.wav", "rb") as f:
            r = httpx.post(service.http + "/v1/transcribe", files={"file": f}, timeout=30)
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal"  # failed at the call timeout
        assert httpx.get(service.http + "/ready", timeout=5).json()["status"] == "stalled"
        wait_until(lambda: "the watchdog is no longer fed" in service.log(), 10, "the watchdog saw the stall")
        pending(sock)  # what was sent before the watchdog saw the stall is behind us
        during = messages(sock, STALL_EXIT_S + 10, until=lambda sent: service.proc.poll() is not None)
        assert "WATCHDOG=1" not in during, during  # systemd would kill the unit now
        code = service.proc.wait(15)
        assert code == 70, service.log()[-2000:]  # a supervisor restarts it
        stalled_for = re.search(r"stalled for (\d+) s; exiting so the supervisor restarts", service.log())
        assert stalled_for and int(stalled_for.group(1)) >= STALL_EXIT_S  # not before stall_exit_s, by its clock
    finally:
        flag.unlink(missing_ok=True)
        service.stop()
