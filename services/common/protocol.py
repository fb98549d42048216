"""What both services' WebSocket protocols share: the event base, ``closed``, and parsing a client message.

A service's server-to-client events are dataclasses that subclass :class:`Event`
and set ``type`` (a class constant): ``to_json()`` writes ``{"type": ...,
<fields>}``, the contract's shape. ``end`` (client) and ``closed`` (server) mean
the same on both sockets and are defined here, with the fields every ``ready``
carries. :func:`parse_message` is how every text frame
a client sends becomes a typed message: a JSON object whose ``type`` names an
entry of the service's table (unknown fields are ignored; anything else is a
non-fatal ``bad_message`` that echoes at most :data:`ECHO_CHARS` characters of
what the client sent).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal, TypeVar

from .errors import ErrorCode, ServiceError

ECHO_CHARS = 60
"""The most of a client's own input an error message repeats (logs and events stay small)."""

M = TypeVar("M")


class Event:
    type: ClassVar[str]

    def to_json(self) -> str:
        body: dict[str, Any] = {"type": self.type}
        body.update(asdict(self))  # type: ignore[call-overload]
        return json.dumps(body, ensure_ascii=False)


@dataclass(frozen=True)
class End:
    """``{"type":"end"}``, both services' last client message: finish what was sent, then close."""

    type: Literal["end"] = "end"


@dataclass
class Ready(Event):
    """The first event of every session; each service adds what it settled on."""

    type: ClassVar[str] = "ready"
    session_id: str
    sample_rate: int
    encoding: str


@dataclass
class Closed(Event):
    """The last event of a session the client ended with ``end``."""

    type: ClassVar[str] = "closed"


def shown(value: Any) -> str:
    """``repr(value)`` cut to :data:`ECHO_CHARS` characters, for error messages that name client input."""
    text = repr(value)
    return text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS] + "..."


def parse_object(raw: str) -> dict:
    """A text frame as a JSON object, or ``bad_message``."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, ValueError):
        raise ServiceError(ErrorCode.BAD_MESSAGE, "text frames must be JSON objects") from None
    if not isinstance(data, dict):
        raise ServiceError(ErrorCode.BAD_MESSAGE, "text frames must be JSON objects")
    return data


def parse_message(raw: str, table: Mapping[str, Callable[[dict], M]]) -> M:
    """The typed message ``table[data["type"]](data)``, or ``bad_message`` naming the known types."""
    data = parse_object(raw)
    kind = data.get("type")
    build = table.get(kind) if isinstance(kind, str) else None
    if build is None:
        expected = ", ".join(repr(k) for k in table)
        raise ServiceError(ErrorCode.BAD_MESSAGE, f"unknown message type {shown(kind)}; expected one of {expected}")
    return build(data)
