"""What the Deepgram dialects of both services share: Deepgram's audio parameters and its refusal header.

Deepgram names encodings its own way (``linear16``, ``mulaw``) and defaults the
rate by encoding; :func:`parse_audio_query` is the one place those query
parameters become our :class:`~.audio.Encoding` and rate (anything else is a
fatal ``bad_audio``, which the dialects answer on the handshake). A refused
handshake carries the reason in Deepgram's ``dg-error`` header too
(:func:`refusal_headers`, which both dialect sessions register). Browsers cannot
set headers, so Deepgram's browser clients send the key as a WebSocket
subprotocol after ``token`` (or ``bearer``): :data:`KEY_SUBPROTOCOLS`. This is the
one dialect module in ``common``; the generic modules never import it.
"""

from __future__ import annotations

from .audio import Encoding, parse_sample_rate
from .errors import ErrorCode, ServiceError
from .protocol import shown

ENCODINGS = {"linear16": Encoding.PCM_S16LE, "mulaw": Encoding.MULAW}
KEY_SUBPROTOCOLS = ("token", "bearer")
"""``Sec-WebSocket-Protocol: token, KEY``: the API key as the subprotocol after one of these (accepted back)."""


def refusal_headers(err: ServiceError) -> dict[str, str]:
    """Deepgram's clients read why a handshake was refused from ``dg-error``."""
    return {"dg-error": err.message}


def parse_audio_query(query: dict[str, str], default_rates: dict[Encoding, int]) -> tuple[Encoding, int]:
    """``encoding`` (default linear16) and ``sample_rate`` (default by encoding) of a Deepgram query."""
    raw = (query.get("encoding") or "linear16").lower()
    encoding = ENCODINGS.get(raw)
    if encoding is None:
        raise ServiceError(ErrorCode.BAD_AUDIO, f"unsupported encoding {shown(raw)}: use linear16 or mulaw")
    raw_rate = query.get("sample_rate")
    return encoding, parse_sample_rate(raw_rate) if raw_rate else default_rates[encoding]
