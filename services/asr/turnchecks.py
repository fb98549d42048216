"""The turn checks of one stream's open pause, run beside the stream: which are out, which waits, and waiting.

:class:`PauseChecks` is the processor's bookkeeping for the Smart Turn checks of the pause it is in (the decisions
are the processor's): the check tasks still out; at real time one at a time, the newest checkpoint reached
meanwhile put off until it is back (a newer one replaces it); what the next window waits for (the checks out, if
its actions depend on them); and :meth:`PauseChecks.take` / :meth:`PauseChecks.drop` when the pause is over.
:class:`SendingPace` tells whether a client sends its audio ahead of real time, when a stream runs every check.
Neither touches the models or holds audio beyond the waiting checkpoint's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..common.audio import SAMPLE_RATE_HZ
from ..common.tasks import TaskSet

AHEAD_S = 1.0  # audio this far ahead of the wall clock: the client sends faster than real time

Decide = Callable[..., Awaitable[bool]]  # one check of a checkpoint: True if it ended the turn


class PauseChecks:
    def __init__(self, tasks: TaskSet, hold_stream: bool = False) -> None:
        self._tasks = tasks
        self.hold_stream = hold_stream  # every window waits for the checks out (the old path)
        self._out: set[asyncio.Task] = set()
        self.waiting: tuple[Any, ...] | None = None  # the newest checkpoint reached while a check is out

    def __bool__(self) -> bool:
        """A check is out."""
        return bool(self._out)

    def ask(self, decide: Decide, *checkpoint: Any, one_at_a_time: bool) -> None:
        """Run ``decide(*checkpoint)`` beside the stream; with ``one_at_a_time`` and a check out, when that one
        is back (unless the pause is over by then; a newer checkpoint replaces this one)."""
        if one_at_a_time and self._out:
            self.waiting = checkpoint
            return
        task = self._tasks.spawn(self._run(decide, checkpoint), "turn-check")
        self._out.add(task)
        task.add_done_callback(self._out.discard)

    async def _run(self, decide: Decide, checkpoint: tuple) -> bool:
        complete = await decide(*checkpoint)
        waiting, self.waiting = self.waiting, None  # None if the pause is over (take / drop)
        if waiting is not None:
            self.ask(decide, *waiting, one_at_a_time=False)
        return complete

    def before(self, settles: bool) -> Awaitable[None] | None:
        """What the next window waits for: the checks out, if its actions depend on them (``settles``: it would
        resume speech or reach the length limit) or with ``hold_stream``."""
        return self.settle() if self._out and (settles or self.hold_stream) else None

    async def settle(self) -> None:
        """Until no check is out (one back may have started the checkpoint that waited for it)."""
        while self._out:
            await asyncio.wait(set(self._out))

    def take(self) -> tuple[asyncio.Task, ...]:
        """The pause is over: the checks out, forgotten here (the caller may still await them); none waits."""
        out, self._out, self.waiting = tuple(self._out), set(), None
        return out

    def drop(self, keep: asyncio.Task | None = None) -> None:
        """The pause is over and what its checks say no longer matters: cancel them (all but ``keep``)."""
        for task in self.take():
            if task is not keep:
                task.cancel()


class SendingPace:
    """How far a stream's audio runs ahead of the wall clock since its first frame."""

    def __init__(self) -> None:
        self._first_at: float | None = None

    def frame(self) -> None:
        if self._first_at is None:
            self._first_at = time.perf_counter()

    def ahead(self, heard_sample: int) -> bool:
        """Sent ahead of real time by more than ``AHEAD_S`` (a file streamed as fast as the socket takes it)."""
        if self._first_at is None:
            return False
        return heard_sample / SAMPLE_RATE_HZ - (time.perf_counter() - self._first_at) > AHEAD_S
