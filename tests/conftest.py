"""Shared fixtures: real audio from tests/data, and real service processes on loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path
from typing import Callable

import httpx
import numpy as np
import pytest
import uvicorn

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """int16 samples (mono) and rate."""
    with wave.open(str(path)) as w:
        rate, channels = w.getframerate(), w.getnchannels()
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return samples, rate


def normalise(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


@contextlib.contextmanager
def script_modules(*names: str):
    """scripts/NAME.py imported as modules, as Python runs a script: with its folder on ``sys.path`` (where
    ``benchlib`` is); the folder and the scripts' modules are gone again afterwards."""
    folder = str(ROOT / "scripts")
    sys.path.insert(0, folder)
    try:
        yield [importlib.import_module(name) for name in names]
    finally:
        sys.path.remove(folder)
        for name in [n for n, m in sys.modules.items() if getattr(m, "__file__", None) and
                     str(Path(m.__file__).parent) == folder]:
            del sys.modules[name]


with script_modules("asr_client", "benchlib") as (_asr_client, _benchlib):
    stream_asr = _asr_client.stream  # scripts/asr_client.py: the minimal client of WS /v1/stream/asr
    stop_process = _benchlib.stop_process  # SIGTERM, then SIGKILL after a grace


def metric(service: Loopback, name: str) -> float:
    """The sum of a metric's samples (all label sets) on a running service's /metrics."""
    text = httpx.get(service.http + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"))


# Another process's state (a service's /ready or /metrics, a log file it writes) says what happened only when
# asked: these two helpers are the one place a test asks again, every POLL_S, until the condition holds.
POLL_S = 0.05


def wait_until(condition: Callable[[], object], timeout_s: float, what: str) -> None:
    """Return once ``condition()`` is true; fail with ``what`` if it is not within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(POLL_S)  # the condition is another process's state: nothing to wait on but asking again


async def await_until(condition: Callable[[], object], timeout_s: float, what: str) -> None:
    """``wait_until`` inside an event loop: a blocking condition (an HTTP request) runs in a thread."""
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        await asyncio.sleep(POLL_S)  # as in wait_until: another process's state, known only by asking


async def loop_pass() -> None:
    """One pass of the event loop, no time: the tasks made ready before it (one just created, one whose future was
    just resolved) run their next step first."""
    await asyncio.sleep(0)  # a yield to the event loop, not a wait on time


async def paced(items, period_s: float):
    """``items`` as a live source delivers them (a microphone, a caller, an LLM writing): one every ``period_s``
    (0: as fast as they are taken)."""
    for item in items:
        yield item
        if period_s:
            await asyncio.sleep(period_s)  # the source's pace is the input under test, not a wait for an event


class ThreadedServer(uvicorn.Server):
    """A uvicorn server run in a thread of the test process; ``__enter__`` returns once it listens."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket] | None = None,
                 start_timeout_s: float = 30.0) -> None:
        super().__init__(config)
        self.up = threading.Event()  # set when start-up has ended, listening or not
        self.start_timeout_s = start_timeout_s
        self.thread = threading.Thread(target=self._run_in_thread, args=(sockets,), daemon=True,
                                       name=f"uvicorn-{config.port}")

    def _run_in_thread(self, sockets) -> None:
        try:
            self.run(sockets=sockets)
        finally:
            self.up.set()

    async def startup(self, sockets=None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self.up.set()

    def __enter__(self) -> "ThreadedServer":
        self.thread.start()
        if not self.up.wait(self.start_timeout_s):
            raise TimeoutError(f"the in-process server did not start in {self.start_timeout_s} s")
        if not self.started:
            raise RuntimeError("the in-process server stopped during start-up")
        return self

    def __exit__(self, *exc) -> None:
        self.should_exit = True
        self.thread.join(30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Loopback:
    """Something listening on 127.0.0.1:``self.port``: its HTTP and WebSocket base URLs."""

    port: int

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


class ServiceProcess(Loopback):
    """``python -m <module> --port N`` in a subprocess, with environment overrides."""

    def __init__(self, module: str, env: dict[str, str] | None = None, log_path: Path | None = None) -> None:
        self.module = module
        self.port = free_port()
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None


    def start(self, timeout_s: float = 90.0) -> "ServiceProcess":
        out = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", self.module, "--host", "127.0.0.1", "--port",
                                      str(self.port)], cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until(self._ready, timeout_s, f"{self.module} ready")
        except AssertionError:
            self.stop()
            raise TimeoutError(f"{self.module} not ready after {timeout_s} s") from None
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.module} exited with {self.proc.returncode}; log: {self.log_path}")
        try:
            return httpx.get(self.http + "/ready", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> int | None:
        return None if self.proc is None else stop_process(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


# Piper samples noise on every synthesis, so the same text sounds slightly different each run and the
# intelligibility checks (tiny.en must hear the words) would pass or fail by chance. Test TTS services
# synthesize deterministically unless a test asks otherwise.
DETERMINISTIC_TTS = {"TTS_PIPER__NOISE_SCALE": "0", "TTS_PIPER__NOISE_W_SCALE": "0"}


@contextlib.contextmanager
def running(module: str, env: dict[str, str] | None, tmp: Path):
    if module == "services.tts":
        env = {**DETERMINISTIC_TTS, **(env or {})}
    service = ServiceProcess(module, env, tmp / f"{module.replace('.', '_')}-{free_port()}.log").start()
    try:
        yield service
    finally:
        service.stop()


ASR_TEST_ENV = {
    "ASR_SERVER__MAX_CONNECTIONS": "4",
    "ASR_SERVER__IDLE_TIMEOUT_S": "4",
    "ASR_SERVER__MAX_FRAME_BYTES": "65536",
    "ASR_SERVER__MAX_UPLOAD_BYTES": "4000000",
    "ASR_MODEL__CPU_THREADS": "2",
    "ASR_STREAMING__FINAL_BEAM_SIZE": "5",  # as files decode: the tests compare streams with uploads
}


@pytest.fixture(scope="session")
def asr_service(tmp_path_factory):
    with running("services.asr", ASR_TEST_ENV, tmp_path_factory.mktemp("asr")) as service:
        yield service


@pytest.fixture(scope="session")
def jfk() -> np.ndarray:
    return read_wav(DATA / "asr" / "jfk.wav")[0]


@pytest.fixture(scope="session")
def examples_tts(tmp_path_factory):
    """One TTS service (Piper, defaults) shared by the tests of examples/ (tests/test_examples_*.py) and of the
    word timings (tests/test_tts_word_timings.py)."""
    env = {"TTS_VOICES__STORE_DIR": str(tmp_path_factory.mktemp("examples-voices")),
           "TTS_ENGINE__CPU_THREADS": "2"}
    with running("services.tts", env, tmp_path_factory.mktemp("examples-tts")) as service:
        yield service
