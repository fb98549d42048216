"""The tasks one session runs: named after it, forgotten when done, cancelled and awaited together at its end.

A session (ASR or TTS) runs a reader, a writer, a processor and short-lived
helpers (a partial decode, a speculative final, a piece of speech). Each is
spawned here under ``NAME-SESSION_ID``; a task that finishes leaves the set by
itself, and :meth:`TaskSet.cancel_all` ends whatever is left when the session
ends, waiting until every task has unwound so nothing of the session outlives it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class TaskSet:
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=f"{name}-{self.owner}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    async def cancel_all(self) -> None:
        """Cancel every running task and wait for all of them; their exceptions are theirs to report."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
