"""``scripts/start_all.sh`` driven from Python: the cluster the fault tests and ``scripts/bench_resume.py`` run.

``LocalCluster`` starts the script in its own session with its ports set through its environment variables
(``CLUSTER_FRONT_PORT``, ``CLUSTER_ASR_PORTS``, ``CLUSTER_TTS_PORTS``), follows its output line by line, and
knows each instance's pid from the script's own ``start_all: asr :PORT started (pid N)`` lines. Everything
waits on those lines or on an instance's ``/ready``, bounded in time; nothing sleeps a fixed time. ``stop()``
is a Ctrl-C: SIGINT to the script's process group, which is the script alone (it puts every instance in a group
of its own), then the instances drain and the script exits. Standard library only; loopback only.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STARTED = re.compile(r"^start_all: (?P<name>\S+ :\d+|nginx) started \(pid (?P<pid>\d+)\)")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held open together while picked, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def ready(port: int, path: str = "/ready") -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


class LocalCluster:
    """``start_all.sh`` with ``asr`` ASR and ``tts`` TTS instances on free ports; ``env`` reaches every instance."""

    def __init__(self, asr: int = 2, tts: int = 1, env: dict[str, str] | None = None,
                 log_path: Path | None = None) -> None:
        self.front, *rest = free_ports(1 + asr + tts)
        self.asr_ports, self.tts_ports = rest[:asr], rest[asr:]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {}), "CLUSTER_FRONT_PORT": str(self.front),
                    "CLUSTER_ASR_PORTS": ",".join(map(str, self.asr_ports)),
                    "CLUSTER_TTS_PORTS": ",".join(map(str, self.tts_ports))}
        self.log_path = log_path
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.proc: subprocess.Popen | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.front}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.front}"

    def start(self, timeout_s: float = 600) -> "LocalCluster":
        # Ctrl-C must reach the script even when this process was started with SIGINT ignored (as a background job).
        self.proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "start_all.sh")], cwd=ROOT, env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        threading.Thread(target=self._follow, daemon=True).start()
        try:
            self.wait_line(r"^start_all: front ", timeout_s=timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _follow(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        log = open(self.log_path, "a", encoding="utf-8") if self.log_path else None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if log:
                log.write(line + "\n")
                log.flush()
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self.lines.append("")  # end of output: wake every waiter
            self._changed.notify_all()
        if log:
            log.close()

    def wait_line(self, pattern: str, *, start: int = 0, timeout_s: float = 120) -> re.Match:
        """The first line at index >= ``start`` matching ``pattern``; raises if the script ends or time is up."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        seen = start
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if m := regex.search(line):
                        return m
                seen = max(seen, len(self.lines))
                if self.lines[-1:] == [""]:  # its output ended: the script has exited, or is exiting
                    code = self.proc.wait(30) if self.proc is not None else None
                    raise RuntimeError(f"start_all.sh exited ({code}) before {pattern!r}:\n"
                                       + "\n".join(self.lines[-30:]))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {pattern!r} in start_all.sh's output after {timeout_s} s")
                self._changed.wait(left)

    def pid(self, name: str) -> int:
        """The current pid of ``name`` ("asr :8001", "tts :8002", "nginx")."""
        with self._changed:
            pids = [int(m["pid"]) for line in self.lines if (m := STARTED.match(line)) and m["name"] == name]
        if not pids:
            raise KeyError(name)
        return pids[-1]

    def kill(self, name: str, sig: int = signal.SIGKILL) -> tuple[int, int]:
        """Send ``sig`` to ``name``'s process; returns its pid and the log position to wait from."""
        with self._changed:
            mark = len(self.lines)
        pid = self.pid(name)
        os.kill(pid, sig)
        return pid, mark

    def wait_restarted(self, name: str, old_pid: int, *, start: int = 0, timeout_s: float = 180) -> tuple[str, int]:
        """Wait for the script to log how ``old_pid`` ended and to start ``name`` again, then for its ``/ready``.
        Returns the logged reason line and the new pid."""
        deadline = time.monotonic() + timeout_s
        why = self.wait_line(rf"^start_all: {re.escape(name)} \(pid {old_pid}\) .*restart", start=start,
                             timeout_s=timeout_s).group(0)
        new = self.wait_line(rf"^start_all: {re.escape(name)} started \(pid (?!{old_pid}\))(\d+)\)", start=start,
                             timeout_s=max(1.0, deadline - time.monotonic()))
        port = int(name.rsplit(":", 1)[1])
        while not ready(port):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} restarted but not ready after {timeout_s} s")
            with self._changed:  # woken by any output (the instance logs as it loads), at most every 0.5 s
                self._changed.wait(0.5)
        return why, int(new.group(1))

    def stop(self, timeout_s: float = 90) -> int | None:
        """Ctrl-C: SIGINT to the script, which drains and stops everything; a second one, then SIGKILL, if it hangs."""
        if self.proc is None:
            return None
        for sig in (signal.SIGINT, signal.SIGINT, signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout_s if sig == signal.SIGINT else 10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        if self.proc.returncode == -signal.SIGKILL:  # the script could not stop them: its instances are orphans
            with self._changed:
                pids = {m["name"]: int(m["pid"]) for line in self.lines if (m := STARTED.match(line))}
            for pid in pids.values():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return self.proc.returncode
