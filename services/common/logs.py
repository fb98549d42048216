"""Structured logging: one JSON object per line, with the session id attached.

Sessions set :data:`session_id` (a context variable) when they start, and the
API-key check sets the client's name, so every log line written while serving
them, in any module, carries ``session_id`` and ``client`` without threading
them through calls.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterator

from .auth import client_name

session_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("session_id", default=None)

_SECRET_IN_QUERY = re.compile(r"(api_key=)[^&\s\"']+", re.IGNORECASE)

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


@contextlib.contextmanager
def session_scope() -> Iterator[str]:
    """A new session id, attached to every log line written inside the block."""
    sid = uuid.uuid4().hex[:16]
    token = session_id.set(sid)
    try:
        yield sid
    finally:
        session_id.reset(token)


class RedactSecrets(logging.Filter):
    """Removes API keys that clients put in query strings (uvicorn logs WebSocket paths with them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _SECRET_IN_QUERY.sub(r"\1***", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        sid = session_id.get()
        if sid is not None:
            out["session_id"] = sid
        client = client_name.get()
        if client is not None:
            out["client"] = client
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "info", json_format: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_format else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
