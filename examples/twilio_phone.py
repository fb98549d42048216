#!/usr/bin/env python3
"""A phone line for the voice agent: a Twilio Media Streams bridge (ASGI, Starlette + uvicorn).

    PUBLIC_URL=https://abc123.ngrok.app TWILIO_AUTH_TOKEN=... \\
    LLM_BASE_URL=http://127.0.0.1:8080/v1 LLM_MODEL=any \\
    python examples/twilio_phone.py --port 8080

Routes:
- ``POST /twiml`` (also ``GET``): the number's voice webhook. Answers TwiML
  ``<Response><Connect><Stream url="wss://HOST/media"/></Connect></Response>``.
  With ``TWILIO_AUTH_TOKEN`` set, the ``X-Twilio-Signature`` header is checked
  with the official ``twilio`` library (``RequestValidator``; 403 when wrong),
  and the stream gets a per-call token (an HMAC of the CallSid, passed as a
  ``<Parameter>``) that the WebSocket must present in its ``start`` message.
- ``WS /media``: Twilio's Media Streams protocol. In: ``connected``, ``start``
  (``streamSid``, ``mediaFormat`` audio/x-mulaw 8000 Hz mono), ``media``
  (base64 mu-law), ``mark`` (a mark we sent has been played), ``stop``. Out:
  ``media`` (the agent's speech, base64 mu-law 8 kHz, 20 ms a message),
  ``mark`` after each reply, ``clear`` on barge-in.
- ``GET /health``.

The caller's audio goes to ``WS /v1/stream/asr?encoding=mulaw&sample_rate=8000``
as is, and ``WS /v1/stream/tts?encoding=mulaw&sample_rate=8000`` makes the reply
audio in the phone's own format: no transcoding here. The conversation (turns,
LLM, history, barge-in) is the shared agent of ``agent.py``, as in ``with_llm.py``.
The agent is "speaking" until Twilio has played the reply's last mark.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import sys
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from agent import AgentSettings, LlmConfig, VoiceAgent, make_replier
from audio_io import AudioOut

log = logging.getLogger("twilio_phone")
FRAME_BYTES = 160  # 20 ms of mu-law at 8 kHz
INBOUND_QUEUE_FRAMES = 500  # 10 s of caller audio; past that we stop reading and TCP pushes back on Twilio


@dataclass(frozen=True)
class BridgeSettings:
    """Everything the bridge reads from its environment (and command line)."""

    asr_url: str = "ws://127.0.0.1:8001/v1/stream/asr"
    tts_url: str = "ws://127.0.0.1:8002/v1/stream/tts"
    public_url: str | None = None  # https://abc.ngrok.app: what Twilio calls (signatures are over this URL)
    auth_token: str | None = None  # TWILIO_AUTH_TOKEN: validate webhooks when set
    services_api_key: str | None = None  # key of the speech services, if they require one
    voice: str | None = None

    @classmethod
    def from_env(cls, **overrides) -> "BridgeSettings":
        env = os.environ
        values = {"asr_url": env.get("ASR_URL") or cls.asr_url, "tts_url": env.get("TTS_URL") or cls.tts_url,
                  "public_url": (env.get("PUBLIC_URL") or "").rstrip("/") or None,
                  "auth_token": env.get("TWILIO_AUTH_TOKEN") or None,
                  "services_api_key": env.get("SERVICES_API_KEY") or None, "voice": env.get("TTS_VOICE") or None}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def call_token(auth_token: str, call_sid: str) -> str:
    """The per-call secret handed to the stream in the TwiML and checked at ``start``."""
    return hmac.new(auth_token.encode(), f"media-stream:{call_sid}".encode(), hashlib.sha256).hexdigest()


class TwilioOut(AudioOut):
    """The agent's speech, sent back to the call as Twilio ``media`` messages; ``mark``/``clear`` track playback."""

    def __init__(self, ws: WebSocket, stream_sid: str) -> None:
        super().__init__()
        self.ws = ws
        self.stream_sid = stream_sid
        self.pending_marks: set[str] = set()  # sent, not yet played by Twilio
        self._carry = b""

    async def _send(self, message: dict) -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # the call may have hung up
            await self.ws.send_text(json.dumps({"streamSid": self.stream_sid, **message}))

    async def play(self, audio: bytes) -> None:
        data = self._carry + audio
        whole = len(data) - len(data) % FRAME_BYTES
        for offset in range(0, whole, FRAME_BYTES):
            payload = base64.b64encode(data[offset:offset + FRAME_BYTES]).decode()
            await self._send({"event": "media", "media": {"payload": payload}})
        self._carry = data[whole:]

    async def reply_done(self, turn: int) -> None:
        if self._carry:
            await self._send({"event": "media", "media": {"payload": base64.b64encode(self._carry).decode()}})
            self._carry = b""
        name = f"reply-{turn}"
        self.pending_marks.add(name)
        await self._send({"event": "mark", "mark": {"name": name}})

    def played(self, name: str) -> None:
        self.pending_marks.discard(name)

    async def clear(self) -> None:
        self._carry = b""
        self.pending_marks.clear()  # Twilio echoes them after a clear; they no longer count
        await self._send({"event": "clear"})

    def busy(self) -> bool:
        return bool(self.pending_marks)


def _public_request_url(request: Request, settings: BridgeSettings) -> str:
    """The URL Twilio signed: PUBLIC_URL + path + query when set, else the request's own (behind a proxy,
    X-Forwarded-Proto says https)."""
    if settings.public_url:
        query = f"?{request.url.query}" if request.url.query else ""
        return f"{settings.public_url}{request.url.path}{query}"
    proto = request.headers.get("x-forwarded-proto", request.url.scheme)
    return str(request.url.replace(scheme=proto))


async def twiml(request: Request) -> Response:
    settings: BridgeSettings = request.app.state.settings
    params = dict(await request.form()) if request.method == "POST" else {}
    if settings.auth_token:
        from twilio.request_validator import RequestValidator

        signature = request.headers.get("x-twilio-signature", "")
        if not RequestValidator(settings.auth_token).validate(_public_request_url(request, settings), params,
                                                              signature):
            log.warning("refused a webhook with a missing or wrong X-Twilio-Signature")
            return PlainTextResponse("invalid Twilio signature", status_code=403)
    if settings.public_url:
        host = settings.public_url.split("://", 1)[-1]
    else:
        host = request.headers.get("x-forwarded-host") or request.headers.get("host", "localhost")
    stream_url = f"wss://{host}/media"
    parameter = ""
    call_sid = str(params.get("CallSid") or request.query_params.get("CallSid") or "")
    if settings.auth_token:
        parameter = f'<Parameter name="token" value="{call_token(settings.auth_token, call_sid)}"/>'
    body = ('<?xml version="1.0" encoding="UTF-8"?>'
            f"<Response><Connect><Stream url={quoteattr(stream_url)}>{parameter}</Stream></Connect></Response>")
    return Response(body, media_type="application/xml")


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def media(ws: WebSocket) -> None:
    settings: BridgeSettings = ws.app.state.settings
    await ws.accept()
    start = None
    while start is None:  # `connected` comes first, then `start`
        message = json.loads(await ws.receive_text())
        if message.get("event") == "start":
            start = message["start"]
    stream_sid = start.get("streamSid") or message.get("streamSid")
    fmt = start.get("mediaFormat") or {}
    if (fmt.get("encoding"), int(fmt.get("sampleRate", 0))) != ("audio/x-mulaw", 8000):
        log.warning("unexpected media format %s; closing", fmt)
        await ws.close(1003)
        return
    if settings.auth_token:
        token = (start.get("customParameters") or {}).get("token", "")
        if not hmac.compare_digest(token, call_token(settings.auth_token, start.get("callSid", ""))):
            log.warning("refused a media stream without this call's token")
            await ws.close(1008)
            return
    log.info("call %s: stream %s started", start.get("callSid"), stream_sid)
    out = TwilioOut(ws, stream_sid)
    agent = VoiceAgent(AgentSettings(asr_url=settings.asr_url, tts_url=settings.tts_url, in_sample_rate_hz=8000,
                                     in_encoding="mulaw", out_sample_rate_hz=8000, out_encoding="mulaw",
                                     voice=settings.voice, api_key=settings.services_api_key),
                       make_replier(LlmConfig.from_env(), log=log.info), out, log=log.info)
    inbound: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=INBOUND_QUEUE_FRAMES)

    async def caller_audio():
        while (frame := await inbound.get()) is not None:
            yield frame

    conversation = asyncio.create_task(agent.run(caller_audio(), drain=False))
    try:
        while not conversation.done():
            receive = asyncio.ensure_future(ws.receive_text())
            await asyncio.wait({receive, conversation}, return_when=asyncio.FIRST_COMPLETED)
            if not receive.done():
                receive.cancel()
                break
            message = json.loads(receive.result())
            event = message.get("event")
            if event == "media" and (message["media"].get("track") or "inbound") == "inbound":
                await inbound.put(base64.b64decode(message["media"]["payload"]))
            elif event == "mark":
                out.played(message["mark"]["name"])
            elif event == "stop":
                break
    except WebSocketDisconnect:
        pass
    finally:
        with contextlib.suppress(asyncio.QueueFull):
            inbound.put_nowait(None)
        if not conversation.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conversation, 10)  # hang-up: the agent stops without draining
        conversation.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await conversation
        with contextlib.suppress(Exception):
            await ws.close()
    log.info("stream %s ended after %d turns", stream_sid, len(agent.turns))
    for stats in agent.turns:
        log.info(stats.line())


def create_app(settings: BridgeSettings) -> Starlette:
    app = Starlette(routes=[Route("/twiml", twiml, methods=["GET", "POST"]), Route("/health", health),
                            WebSocketRoute("/media", media)])
    app.state.settings = settings
    return app


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--asr-url", help="default $ASR_URL or ws://127.0.0.1:8001/v1/stream/asr")
    p.add_argument("--tts-url", help="default $TTS_URL or ws://127.0.0.1:8002/v1/stream/tts")
    p.add_argument("--public-url", help="default $PUBLIC_URL, e.g. https://abc123.ngrok.app")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = BridgeSettings.from_env(asr_url=args.asr_url, tts_url=args.tts_url, public_url=args.public_url)
    if not settings.auth_token:
        log.warning("TWILIO_AUTH_TOKEN is not set: webhooks are not validated (fine for local tests only)")
    import uvicorn

    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info", proxy_headers=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
