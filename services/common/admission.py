"""Admission control for streaming sessions.

A counter with a hard limit that answers at once (TGI's semaphore habit): a
session either gets a slot immediately or is refused with ``overloaded``; it
never waits. Draining (on SIGTERM) refuses every new session while open ones
finish. ``/ready`` reports ``accepting``.
"""

from __future__ import annotations

import asyncio

from .errors import ErrorCode, ServiceError


class Admission:
    def __init__(self, max_sessions: int) -> None:
        self.max_sessions = max_sessions
        self.active = 0
        self._draining = False
        self.drain_requested = asyncio.Event()
        """Set once draining starts: open sessions await it to finish their current work and leave."""
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def draining(self) -> bool:
        return self._draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self._draining = value
        if value:
            self.drain_requested.set()

    @property
    def accepting(self) -> bool:
        return not self.draining and self.active < self.max_sessions

    def acquire(self) -> None:
        """Take a slot or raise ``overloaded`` at once."""
        if self.draining:
            raise ServiceError(ErrorCode.OVERLOADED, "this instance is shutting down; try another")
        if self.active >= self.max_sessions:
            raise ServiceError(
                ErrorCode.OVERLOADED, f"all {self.max_sessions} session slots are in use; try again later"
            )
        self.active += 1
        self._idle.clear()

    def release(self) -> None:
        self.active = max(0, self.active - 1)
        if self.active == 0:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except asyncio.TimeoutError:
            return False
