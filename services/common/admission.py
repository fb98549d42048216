"""Admission control for streaming sessions.

A counter with a hard limit that answers at once (TGI's semaphore habit): a
session either gets a slot immediately or is refused with ``overloaded``; it
never waits. Draining (on SIGTERM) refuses every new session while open ones
finish, and so does a stalled model (a scheduler whose model call has not
returned within its timeout, :meth:`Admission.set_stalled`) until it answers
again. ``/ready`` reports ``accepting``. :func:`refuse` and :func:`session_slot`
are the refusal and the accounting around a session that both services share.
The same counter bounds HTTP work (ASR uploads, TTS synthesis): :meth:`Admission.slot`
holds one for a request and refuses at once with ``overloaded`` (503 and
``Retry-After``) when all are taken; a draining instance waits for both kinds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from .errors import ErrorCode, ServiceError, http_response

log = logging.getLogger(__name__)


class Admission:
    def __init__(self, max_sessions: int, what: str = "session") -> None:
        self.max_sessions = max_sessions
        self.what = what
        self.active = 0
        self._draining = False
        self.drain_requested = asyncio.Event()
        """Set once draining starts: open sessions await it to finish their current work and leave."""
        self._idle = asyncio.Event()
        self._idle.set()
        self.stalled: set[str] = set()
        """Models whose call has not returned within their timeout (see ``Scheduler``'s ``on_stall``)."""

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
        return not self.draining and not self.stalled and self.active < self.max_sessions

    @property
    def state(self) -> str:
        """What ``/ready`` says: ready, draining, stalled or full."""
        if self.draining:
            return "draining"
        if self.stalled:
            return "stalled"
        return "ready" if self.active < self.max_sessions else "full"

    def set_stalled(self, model: str, stalled: bool) -> None:
        """A scheduler's ``on_stall`` callback: no new sessions while any model is stalled."""
        if stalled:
            self.stalled.add(model)
        else:
            self.stalled.discard(model)

    def acquire(self) -> None:
        """Take a slot or raise ``overloaded`` at once."""
        if self.draining:
            raise ServiceError(ErrorCode.OVERLOADED, "this instance is shutting down; try another")
        if self.stalled:
            raise stalled_refusal(self.stalled)
        if self.active >= self.max_sessions:
            raise ServiceError(
                ErrorCode.OVERLOADED, f"all {self.max_sessions} {self.what} slots are in use; try again later"
            )
        self.active += 1
        self._idle.clear()

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a slot for the block (``overloaded`` at once when none is free)."""
        self.acquire()
        try:
            yield
        finally:
            self.release()

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


async def drain(pools: list[Admission], timeout_s: float) -> bool:
    """Refuse new work in every pool (sessions and HTTP work) and wait, within ``timeout_s`` in all, until
    each is idle. True if everything finished."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    for pool in pools:
        pool.draining = True
    finished = True
    for pool in pools:
        finished = await pool.wait_idle(max(0.0, deadline - loop.time())) and finished
    return finished


def work_pools(runtime) -> list[Admission]:
    """A runtime's admission pools: its sessions and, where it has them, its HTTP work slots."""
    return [pool for pool in (runtime.admission, getattr(runtime, "http_admission", None)) if pool is not None]


def stalled_refusal(models) -> ServiceError:
    """What a new session or request is told while a model is stalled (retryable on another instance)."""
    return ServiceError(ErrorCode.OVERLOADED, f"the {', '.join(sorted(models))} model is not answering on this "
                                              "instance; try again later or another instance")


async def refuse(ws, metrics, err: ServiceError, frame: str | None = None, deny: bool = False,
                 headers: dict[str, str] | None = None) -> None:
    """Tell a WebSocket client why its session cannot start, count it, close it: an error frame (``frame``, the
    session dialect's rendering of ``err``) then a close, or (``deny``: the socket is not accepted yet) the error
    as the handshake's HTTP response, with the dialect's ``headers``."""
    if err.code is ErrorCode.OVERLOADED:
        metrics.refusals.labels(reason="max_connections").inc()
    metrics.errors.labels(code=err.code.value).inc()
    log.info("session refused", extra={"code": err.code.value, "detail": err.message})
    if deny:
        await ws.send_denial_response(http_response(err, headers=headers))
        return
    if frame is not None:
        await ws.send_text(frame)
    await ws.close(err.close_code)


@contextlib.contextmanager
def session_slot(admission: Admission, metrics) -> Iterator[None]:
    """Around an admitted session (``admission.acquire()`` succeeded): counts it while it runs and gives
    the slot back however it ends."""
    metrics.sessions_total.inc()
    metrics.sessions_active.inc()
    try:
        yield
    finally:
        metrics.sessions_active.dec()
        admission.release()
