"""A stand-in for an OpenAI-compatible LLM server, speaking the real streaming chat protocol.

``POST /v1/chat/completions`` with ``stream: true`` answers ``text/event-stream``:
one ``data: {chat.completion.chunk}`` per token (role first, then content
deltas, then a ``finish_reason`` chunk) and ``data: [DONE]``. The reply is made
by a function of the request's messages, and tokens are spaced by
``token_delay_s`` so a test can barge in mid-stream. Each request is recorded
with whether it finished or the client went away first. It runs a real
uvicorn server on a loopback port in a background thread.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from conftest import ThreadedServer, free_port, paced


@dataclass
class LlmRequest:
    body: dict
    tokens_sent: int = 0
    finished: bool = False  # [DONE] was sent
    disconnected: bool = False  # the client closed the stream before [DONE]
    ended: threading.Event = field(default_factory=threading.Event)


class FakeOpenAI:
    def __init__(self, reply: Callable[[list[dict]], str], token_delay_s: float = 0.02) -> None:
        self.reply = reply
        self.token_delay_s = token_delay_s
        self.requests: list[LlmRequest] = []
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])
        self._server = ThreadedServer(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                     lifespan="off"), start_timeout_s=20)

    def __enter__(self) -> "FakeOpenAI":
        self._server.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._server.__exit__(*exc)

    async def _chat(self, request: Request):
        body = await request.json()
        if not body.get("stream"):
            return JSONResponse({"error": {"message": "this fake only streams"}}, status_code=400)
        record = LlmRequest(body)
        self.requests.append(record)
        words = self.reply(body["messages"]).split(" ")
        tokens = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]

        def chunk(delta: dict, finish: str | None = None) -> str:
            return "data: " + json.dumps({
                "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n"

        async def events():
            try:
                yield chunk({"role": "assistant", "content": ""})
                async for token in paced(tokens, self.token_delay_s):  # an LLM's pace: tests barge in mid-reply
                    yield chunk({"content": token})
                    record.tokens_sent += 1
                yield chunk({}, "stop")
                yield "data: [DONE]\n\n"
                record.finished = True
            except (asyncio.CancelledError, GeneratorExit):
                record.disconnected = True  # Starlette cancels the stream when the client disconnects
                raise
            finally:
                record.ended.set()

        return StreamingResponse(events(), media_type="text/event-stream")
