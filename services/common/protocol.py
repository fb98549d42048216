"""The base of every typed server-to-client WebSocket event of both services.

A service's events are dataclasses that subclass :class:`Event` and set ``type``
(a class constant): ``to_json()`` writes ``{"type": ..., <fields>}``, the
contract's shape.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, ClassVar


class Event:
    type: ClassVar[str]

    def to_json(self) -> str:
        body: dict[str, Any] = {"type": self.type}
        body.update(asdict(self))  # type: ignore[call-overload]
        return json.dumps(body, ensure_ascii=False)
