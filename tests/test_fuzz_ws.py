"""Property-based tests of both WebSocket handlers over real sockets (``asr_service``, ``examples_tts``).

Each example opens a session with random query parameters, sends a random
mix of binary frames (random bytes and sizes, oversized ones too), raw text
frames and JSON objects (known and unknown types, odd fields), then ``end``.
Invariants, whatever was sent:

* every text frame from the server is a JSON object with a ``type``;
* a client's garbage never produces ``internal`` or close 1011;
* the session either finishes normally (``closed``, 1000) or ends with a
  contract error whose close code matches its code (bad_audio 1003,
  too_large 1009, timeout 1000, overloaded 1013, ...);
* finals (ASR) come once each, in order; nothing arrives after ``closed``;
* it all ends within a bound (no hang), and the process stays up.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlencode

import httpx
import websockets
from hypothesis import given
from hypothesis import strategies as st

from fuzzing import fuzz_settings, seeded
from services.common.errors import ErrorCode, ServiceError

SESSION_BOUND_S = 60.0
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                 st.dictionaries(st.text(max_size=6), inner,
                                                                                 max_size=4)), max_leaves=10)


def json_messages(types: list[str], text: st.SearchStrategy) -> st.SearchStrategy:
    known = st.builds(lambda t, txt, extra: json.dumps({**extra, "type": t, **({"text": txt} if t == "text" else {})}),
                      st.sampled_from(types), text, st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=3))
    odd = st.builds(lambda t, extra: json.dumps({**extra, "type": t}), JSON_VALUES,
                    st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=3))
    return st.one_of(known, odd, JSON_VALUES.map(json.dumps))


def frames(types: list[str], text: st.SearchStrategy, max_binary: int) -> st.SearchStrategy:
    return st.lists(st.one_of(
        st.binary(max_size=max_binary),
        st.integers(65537, 70000).map(bytes),  # over the frame limit of the test services
        st.text(max_size=100),
        json_messages(types, text),
    ), max_size=8)


def query(options: dict[str, list[str]]) -> st.SearchStrategy:
    return st.fixed_dictionaries({}, optional={k: st.sampled_from(v) | st.text(max_size=8) for k, v in options.items()})


async def session(url: str, messages: list, must_end: bool = True) -> tuple[list[dict], int | None]:
    events: list[dict] = []
    async with websockets.connect(url, max_size=None, open_timeout=20) as ws:
        async def receive() -> None:
            try:
                async for message in ws:
                    if isinstance(message, str):
                        events.append(json.loads(message))
                    else:
                        events.append({"type": "<audio>"})
            except websockets.ConnectionClosed:
                pass

        reader = asyncio.create_task(receive())
        try:
            for message in messages + ([json.dumps({"type": "end"})] if must_end else []):
                await ws.send(message)
        except websockets.ConnectionClosed:
            pass
        await reader
        return events, ws.close_code


def check(events: list[dict], close_code: int | None) -> None:
    for event in events:
        assert isinstance(event, dict) and isinstance(event.get("type"), str), event
    errors = [e for e in events if e["type"] == "error"]
    assert all(e["code"] in {c.value for c in ErrorCode} and e["code"] != "internal" for e in errors), errors
    assert close_code != 1011
    if events and events[-1]["type"] == "closed":
        assert close_code == 1000
    else:
        assert errors and events[-1] is errors[-1], events[-3:]
        fatal = ServiceError(ErrorCode(errors[-1]["code"]), "")
        assert fatal.fatal and close_code == fatal.close_code, (errors[-1], close_code)
    closed_at = [i for i, e in enumerate(events) if e["type"] == "closed"]
    assert not closed_at or closed_at == [len(events) - 1]  # nothing after closed


@seeded
@fuzz_settings(12)
@given(params=query({"sample_rate": ["16000", "8000", "48000", "7999", "48001", "abc", "-1", "1e4"],
                     "encoding": ["pcm_s16le", "mulaw", "opus", ""], "partials": ["true", "false", "maybe"],
                     "turn_detection": ["smart_turn", "vad", "none", "x"], "language": ["en", "auto", "de", "??"]}),
       messages=frames(["commit", "end", "text", "flush", "cancel", "ready", "final"], st.text(max_size=20), 4000))
def test_asr_socket_survives_anything(asr_service, params, messages):
    url = f"{asr_service.ws}/v1/stream/asr" + ("?" + urlencode(params) if params else "")
    events, code = asyncio.run(asyncio.wait_for(session(url, messages), SESSION_BOUND_S))
    check(events, code)
    if events and events[0]["type"] == "ready":
        finals = [e["utterance"] for e in events if e["type"] == "final"]
        assert finals == list(range(len(finals)))
    assert httpx.get(asr_service.http + "/health", timeout=10).status_code == 200


SPEAKABLE = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=24) | st.sampled_from(
    ["Hello there. ", "3.14 and 10:30, e.g. Dr. Who", "…", "\n\n", "<speak>x</speak>", "ﷺ", "🙂🙂", "a" * 60])


@seeded
@fuzz_settings(12)
@given(params=query({"voice": ["", "alloy", "en_US-joe-medium", "nope", "../../etc/passwd", "c0" * 16],
                     "encoding": ["pcm_s16le", "mulaw", "wav"], "sample_rate": ["8000", "16000", "24000", "0", "x"]}),
       messages=frames(["text", "text", "flush", "cancel", "end", "commit"], SPEAKABLE, 200))
def test_tts_socket_survives_anything(examples_tts, params, messages):
    url = f"{examples_tts.ws}/v1/stream/tts" + ("?" + urlencode(params) if params else "")
    events, code = asyncio.run(asyncio.wait_for(session(url, messages), SESSION_BOUND_S))
    check(events, code)
    assert httpx.get(examples_tts.http + "/health", timeout=10).status_code == 200
