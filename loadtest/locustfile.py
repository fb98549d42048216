"""Locust load test of the voice services: live ASR and TTS sockets plus the POST routes.

Four user classes (pick some by name on the command line; all by default):

* ``AsrStreamUser``: streams a real speech clip over ``WS /v1/stream/asr`` at
  real-time pace (20 ms frames on a wall-clock schedule), then ``end``. Every
  ``final`` is reported as ``ASR-WS time_to_final``: wall time from the moment
  the utterance's last sample (its ``end``) was sent to the final's arrival.
  The whole session is ``ASR-WS session`` (a failure on an ``error`` event, a
  close other than 1000, or no final at all).
* ``TtsStreamUser``: sends a two-sentence reply over ``WS /v1/stream/tts`` and
  ``end``; reports ``TTS-WS time_to_first_audio`` (first text sent to first
  audio frame) and ``TTS-WS session``.
* ``AsrPostUser`` (``POST /v1/transcribe``) and ``TtsPostUser``
  (``POST /v1/synthesize``).

Targets: ``--host`` (the nginx front, e.g. http://127.0.0.1:8080, serves both);
against single instances set ``LOADTEST_ASR_HOST`` / ``LOADTEST_TTS_HOST``.
Clips: ``LOADTEST_CLIPS`` (comma-separated globs of 16-bit mono/stereo wav; default
``tests/data/asr/*.wav``; e.g. ``samples/*.wav,tests/data/asr/*.wav``). Commands are in
LOAD_BALANCING.md ("Load testing").
"""

from __future__ import annotations

import glob
import json
import os
import random
import time
import wave
from pathlib import Path

import gevent
import websocket  # websocket-client: plain sockets, cooperative under locust's gevent patching
from locust import HttpUser, User, between, task

ROOT = Path(__file__).resolve().parents[1]
FRAME_S = 0.02
TEXTS = [
    "Thanks for calling. Your order shipped this morning and should arrive on Thursday.",
    "I can help with that. Could you tell me the account number, please?",
    "The weather tomorrow looks clear, with a high of twenty one degrees.",
    "Sure. I have booked a table for four at seven thirty this evening.",
]


def _load_clips() -> list[tuple[bytes, int, str]]:
    patterns = os.environ.get("LOADTEST_CLIPS", str(ROOT / "tests/data/asr/*.wav")).split(",")
    clips = []
    for path in sorted({p for pattern in patterns for p in glob.glob(os.path.expanduser(pattern.strip()))}):
        with wave.open(path) as w:
            if w.getsampwidth() != 2:
                continue
            data, channels, rate = w.readframes(w.getnframes()), w.getnchannels(), w.getframerate()
        if channels > 1:  # keep the first channel
            import numpy as np

            data = np.frombuffer(data, dtype="<i2").reshape(-1, channels)[:, 0].tobytes()
        clips.append((data, rate, Path(path).name))
    if not clips:
        raise SystemExit(f"locustfile: no 16-bit wav clips match LOADTEST_CLIPS={patterns}")
    return clips


CLIPS = _load_clips()


def _ws_base(host: str) -> str:
    return host.replace("https://", "wss://").replace("http://", "ws://").rstrip("/")


class _SocketUser(User):
    abstract = True
    wait_time = between(0.5, 2.0)
    host_env = ""

    @property
    def base(self) -> str:
        return _ws_base(os.environ.get(self.host_env) or self.host)

    def report(self, kind: str, name: str, started: float, *, elapsed_ms: float | None = None, length: int = 0,
               error: Exception | str | None = None) -> None:
        self.environment.events.request.fire(
            request_type=kind, name=name, response_time=elapsed_ms if elapsed_ms is not None else
            (time.perf_counter() - started) * 1000, response_length=length,
            exception=(RuntimeError(error) if isinstance(error, str) else error), context={})


class AsrStreamUser(_SocketUser):
    """One caller: a real clip at real-time pace, then ``end``."""

    weight = 3
    host_env = "LOADTEST_ASR_HOST"

    @task
    def stream(self) -> None:
        audio, rate, name = random.choice(CLIPS)
        started = time.perf_counter()
        try:
            ws = websocket.create_connection(f"{self.base}/v1/stream/asr?sample_rate={rate}", timeout=30)
        except Exception as exc:  # noqa: BLE001 - reported to locust
            self.report("ASR-WS", "session", started, error=exc)
            return
        finals: list[dict] = []
        problems: list[str] = []
        closed = {"code": None}
        t0 = {"t": None}

        def receive() -> None:
            try:
                while True:
                    opcode, data = ws.recv_data(control_frame=False)
                    if opcode == websocket.ABNF.OPCODE_CLOSE:
                        closed["code"] = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
                        return
                    if opcode != websocket.ABNF.OPCODE_TEXT:
                        continue
                    event = json.loads(data)
                    if event["type"] == "final":
                        finals.append(event)
                        if t0["t"] is not None:
                            ttf_ms = (time.perf_counter() - (t0["t"] + event["end"])) * 1000
                            self.report("ASR-WS", "time_to_final", started, elapsed_ms=max(0.0, ttf_ms),
                                        length=len(event["text"]))
                    elif event["type"] == "error":
                        problems.append(f"{event['code']}: {event['message']}")
            except websocket.WebSocketConnectionClosedException:
                return
            except Exception as exc:  # noqa: BLE001
                problems.append(f"receive: {exc!r}")

        try:
            ready = json.loads(ws.recv())
            if ready.get("type") != "ready":
                raise RuntimeError(f"first event was {ready}")
            reader = gevent.spawn(receive)
            step = int(rate * FRAME_S) * 2
            t0["t"] = time.perf_counter()
            for i, offset in enumerate(range(0, len(audio), step)):
                ws.send_binary(audio[offset:offset + step])
                gevent.sleep(max(0.0, t0["t"] + (i + 1) * FRAME_S - time.perf_counter()))
            ws.send(json.dumps({"type": "end"}))
            reader.join(timeout=60)
            if closed["code"] != 1000:
                problems.append(f"closed with {closed['code']}")
            if not finals:
                problems.append("no final")
        except Exception as exc:  # noqa: BLE001
            problems.append(repr(exc))
        finally:
            ws.close()
        self.report("ASR-WS", "session", started, length=sum(len(f["text"]) for f in finals),
                    error="; ".join(problems) or None)


class TtsStreamUser(_SocketUser):
    """One agent turn: a two-sentence reply streamed as text, audio back until ``closed``."""

    weight = 2
    host_env = "LOADTEST_TTS_HOST"

    @task
    def speak(self) -> None:
        started = time.perf_counter()
        problems: list[str] = []
        audio_bytes = 0
        try:
            ws = websocket.create_connection(f"{self.base}/v1/stream/tts", timeout=60)
        except Exception as exc:  # noqa: BLE001
            self.report("TTS-WS", "session", started, error=exc)
            return
        try:
            ready = json.loads(ws.recv())
            if ready.get("type") != "ready":
                raise RuntimeError(f"first event was {ready}")
            sent = time.perf_counter()
            for word in random.choice(TEXTS).split(" "):  # as an LLM streams tokens
                ws.send(json.dumps({"type": "text", "text": word + " "}))
            ws.send(json.dumps({"type": "end"}))
            first = None
            kinds: list[str] = []
            while True:
                opcode, data = ws.recv_data(control_frame=False)
                if opcode == websocket.ABNF.OPCODE_BINARY:
                    audio_bytes += len(data)
                    if first is None:
                        first = time.perf_counter()
                        self.report("TTS-WS", "time_to_first_audio", started,
                                    elapsed_ms=(first - sent) * 1000)
                elif opcode == websocket.ABNF.OPCODE_TEXT:
                    event = json.loads(data)
                    kinds.append(event["type"])
                    if event["type"] == "error":
                        problems.append(f"{event['code']}: {event['message']}")
                elif opcode == websocket.ABNF.OPCODE_CLOSE:
                    code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
                    if code != 1000:
                        problems.append(f"closed with {code}")
                    break
            if kinds[-2:] != ["done", "closed"] or not audio_bytes:
                problems.append(f"events {kinds[-3:]}, {audio_bytes} audio bytes")
        except Exception as exc:  # noqa: BLE001
            problems.append(repr(exc))
        finally:
            ws.close()
        self.report("TTS-WS", "session", started, length=audio_bytes, error="; ".join(problems) or None)


class AsrPostUser(HttpUser):
    weight = 1
    host = os.environ.get("LOADTEST_ASR_HOST")
    wait_time = between(1.0, 3.0)

    def on_start(self) -> None:
        if os.environ.get("LOADTEST_ASR_HOST"):
            self.client.base_url = os.environ["LOADTEST_ASR_HOST"]

    @task
    def transcribe(self) -> None:
        audio, rate, name = random.choice(CLIPS)
        import io

        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(audio)
        with self.client.post("/v1/transcribe", files={"file": (name, buf.getvalue(), "audio/wav")},
                              name="/v1/transcribe", timeout=300, catch_response=True) as r:
            if r.status_code != 200 or not r.json().get("text"):
                r.failure(f"{r.status_code}: {r.text[:200]}")


class TtsPostUser(HttpUser):
    weight = 1
    host = os.environ.get("LOADTEST_TTS_HOST")
    wait_time = between(1.0, 3.0)

    def on_start(self) -> None:
        if os.environ.get("LOADTEST_TTS_HOST"):
            self.client.base_url = os.environ["LOADTEST_TTS_HOST"]

    @task
    def synthesize(self) -> None:
        with self.client.post("/v1/synthesize", json={"text": random.choice(TEXTS), "format": "wav"},
                              name="/v1/synthesize", timeout=120, catch_response=True) as r:
            if r.status_code != 200 or len(r.content) < 1000:
                r.failure(f"{r.status_code}: {len(r.content)} bytes")
