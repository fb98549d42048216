"""The scheduler that owns one model: the only way sessions reach it.

One asyncio task per model pulls requests from a bounded pending set, forms a batch and runs it on the model's own
worker thread, so blocking inference leaves the event loop in exactly this place. An engine that can run several
calls at once (Piper's lanes: a copy of the voice per thread) gets ``workers`` threads, and ``urgent_workers`` more
for ``URGENT`` work only (workers.py): the owner starts a batch whenever one it may take is free, so a piece never
waits for a longer one beside it. Its limits, caps and threads come in a :class:`SchedulerOptions` (work.py),
which each runtime builds from its settings. The habits of TGI's router:

* bounded: when ``max_pending`` requests wait, a new one is refused at once with ``overloaded``;
* ordered: lower :class:`Priority` first (finals before partials), then FIFO;
* two lanes: ``BULK`` requests (file work) have a bound of their own (``max_bulk_pending``), so they can never make
  a live request be refused; they run only when no live request is ready to run (a live lane resting under its duty
  cap does not count, so file work progresses under sustained live load);
* duty caps: while live streams are active (``live_active()``), the work of a capped priority (``duty``: partials,
  file work) runs one request at a time (one batch of it at a time, whatever ``workers``) and takes at most its
  share of the model's time, so latency-critical work finds the model (and the CPU) free;
* measured: each request's queue wait and compute time, by model and priority;
* merged: a request submitted with a ``replace_key`` supersedes the pending one with the same key (a session's stale
  partial), whose caller gets :class:`Superseded`;
* batched: requests with equal ``batch_key`` run together, up to ``max_batch`` (or the smaller cap the first request
  of the batch asks for);
* promotable: work done ahead of need (a speculative final) waits at a low priority and is raised with
  :meth:`Scheduler.promote` once it is needed;
* no work for the gone: a request whose caller was cancelled is skipped;
* isolated: if a batch raises, its requests are retried one by one so only the faulty request fails, and the loop
  carries on (a batch function that knows which request failed returns :class:`Failed` in its place instead: nothing
  is retried);
* watched: a model call that has not returned after ``call_timeout_s`` (a hung native library: a thread cannot be
  killed) fails its batch and everything waiting with ``internal``, new requests are refused at once
  (``overloaded``), and ``on_stall(name, True)`` tells admission to take no sessions (``/ready`` 503 "stalled", so
  balancers route around it); when the call does return the scheduler reports ``on_stall(name, False)`` and serves
  again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

from .admission import stalled_refusal
from .errors import ErrorCode, ServiceError
from .metrics import Metrics
from .work import Entry, Failed, Priority, SchedulerOptions, Superseded
from .workers import Running, WorkerThreads

__all__ = ["Failed", "Priority", "Scheduler", "SchedulerOptions", "Superseded"]

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Res = TypeVar("Res")


class Scheduler(Generic[Req, Res]):
    def __init__(self, name: str, run_batch: Callable[[list[Req]], Sequence[Res]],
                 options: SchedulerOptions = SchedulerOptions(), *, metrics: Metrics | None = None,
                 on_stall: Callable[[str, bool], None] | None = None,
                 live_active: Callable[[], bool] = lambda: False) -> None:
        """``on_stall(name, stalled)`` reports a stall and its end; ``live_active()`` says whether live streams
        are open (the duty caps apply only then)."""
        self.name = name
        self._run_batch = run_batch
        self.max_batch = options.max_batch
        self.max_pending = options.max_pending
        self._metrics = metrics
        self._pending: list[Entry] = []
        self._by_key: dict[Hashable, Entry] = {}
        self._seq = itertools.count()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._threads = WorkerThreads(name, options.workers, options.urgent_workers, options.worker_nice)
        self._closed = False
        self.batches_run = 0
        self.call_timeout_s = options.call_timeout_s
        self._on_stall = on_stall
        self.stalled_since: float | None = None
        """monotonic time the running call passed its timeout; None while the model answers."""
        self.max_bulk_pending = options.max_pending if options.max_bulk_pending is None else options.max_bulk_pending
        self.duty = {int(p): share for p, share in options.duty.items()}
        self._live_active = live_active
        self._ready_at: dict[int, float] = {}  # priority -> monotonic time its next capped batch may start
        self._running: list[Running] = []
        self._stalled_calls = 0

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._threads.start()
        self._task = asyncio.create_task(self._loop(), name=f"scheduler-{self.name}")

    async def stop(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for entry in self._pending:
            if not entry.future.done():
                entry.future.set_exception(ServiceError(ErrorCode.OVERLOADED, "the service is shutting down"))
        self._pending.clear()
        self._by_key.clear()
        self._threads.shutdown(wait=self.stalled_since is None)  # a hung call's thread cannot be joined: leave it
        self._set_depth()

    @property
    def depth(self) -> int:
        return len(self._pending)

    @property
    def busy(self) -> bool:
        """A batch is running on one of the model's threads."""
        return bool(self._running)

    @property
    def live_depth(self) -> int:
        """Live requests waiting (the bulk lane's file work not counted)."""
        return self._lane_depth(False)

    @property
    def busy_live(self) -> bool:
        """A batch of live requests is running (a file segment running does not count)."""
        return any(r.priority < Priority.BULK for r in self._running)

    def waiting_for_others(self, owner: Hashable) -> int:
        """Requests waiting that are not ``owner``'s (all of them for ``None``; a cancelled caller's entry, not
        yet dropped, does not count)."""
        return sum(1 for e in self._pending if (owner is None or e.owner != owner) and not e.future.done())

    def live_running_only(self, owner: Hashable) -> bool:
        """No live batch runs but one made only of ``owner``'s requests (a stream's own partial): what a request
        of that stream submitted now would wait for is its own work, or file work."""
        return all(r.priority >= Priority.BULK or r.owners == {owner} for r in self._running)

    # -- submitting ------------------------------------------------------------
    async def submit(
        self,
        request: Req,
        *,
        priority: Priority = Priority.NORMAL,
        batch_key: Hashable = None,
        replace_key: Hashable | None = None,
        max_batch: int = 0,
        owner: Hashable = None,
    ) -> Res:
        if self._closed or self._wakeup is None:
            raise ServiceError(ErrorCode.OVERLOADED, f"the {self.name} model is not running")
        if self.stalled_since is not None:
            raise stalled_refusal([self.name])
        old = self._by_key.get(replace_key) if replace_key is not None else None
        if old is not None:
            self._remove(old)
            if not old.future.done():
                old.future.set_exception(Superseded())
        else:
            bulk = priority >= Priority.BULK
            limit = self.max_bulk_pending if bulk else self.max_pending
            if len(self._pending) >= limit:  # cancelled callers' entries must not pile up while a long batch runs
                self._purge_gone()
            if self._lane_depth(bulk) >= limit:
                if self._metrics is not None:
                    self._metrics.refusals.labels(reason=f"{self.name}_{'bulk_' if bulk else ''}queue_full").inc()
                raise ServiceError(ErrorCode.OVERLOADED, f"the {self.name} {'file lane' if bulk else 'queue'} is "
                                                         f"full ({limit} waiting); try again later")
        entry = Entry(int(priority), next(self._seq), request, batch_key, replace_key,
                       asyncio.get_running_loop().create_future(), max_batch, time.perf_counter(), owner)
        self._pending.append(entry)
        if replace_key is not None:
            self._by_key[replace_key] = entry
        self._set_depth()
        self._wakeup.set()
        # Awaiting the future directly: if the caller is cancelled, so is the
        # future, and the loop skips the entry before it costs compute. No local
        # keeps the future while it is awaited: an exception it raises holds this
        # frame in its traceback, and future -> exception -> frame -> future would
        # be a cycle that keeps the request (seconds of audio) alive until the
        # cyclic collector's next full pass.
        future = entry.future
        del entry, old
        try:
            return await future
        finally:
            del future

    def promote(self, replace_key: Hashable, priority: Priority) -> bool:
        """Raise the priority of the pending request with ``replace_key``; False if none is pending
        (it already runs or ran, or was never submitted)."""
        entry = self._by_key.get(replace_key)
        if entry is None or entry.future.done():
            return False
        entry.priority = min(entry.priority, int(priority))
        return True

    def _purge_gone(self) -> None:
        """Drop entries whose caller is gone (cancelled while waiting): they must not fill the queue."""
        for entry in [e for e in self._pending if e.future.done()]:
            self._remove(entry)

    def _lane_depth(self, bulk: bool) -> int:
        """Requests of one lane still waiting (a cancelled caller's entry, not yet dropped, does not count)."""
        return sum(1 for e in self._pending if (e.priority >= Priority.BULK) == bulk and not e.future.done())

    # -- the owner task ----------------------------------------------------------
    def _remove(self, entry: Entry) -> None:
        try:
            self._pending.remove(entry)
        except ValueError:
            pass
        if entry.replace_key is not None and self._by_key.get(entry.replace_key) is entry:
            del self._by_key[entry.replace_key]

    def _take_batch(self, urgent_only: bool = False) -> tuple[list[Entry], float | None]:
        """The next batch (only an ``URGENT`` one if ``urgent_only``: just a thread kept for urgent work is free),
        or none and how long until a resting lane may run again (None: until woken)."""
        self._purge_gone()
        ordered = sorted((e for e in self._pending if not urgent_only or e.priority <= Priority.URGENT),
                         key=lambda e: (e.priority, e.seq))
        if not ordered:
            return [], None
        live = self._live_active()
        now = time.monotonic()
        rests: list[float] = []
        for head in ordered:
            cap = min(self.max_batch, head.max_batch or self.max_batch)
            if head.priority in self.duty and live:
                if any(r.priority == head.priority for r in self._running):
                    continue  # one capped batch at a time: its rest starts when it ends
                rest = self._ready_at.get(head.priority, 0.0) - now
                if rest > 0:  # this lane rests; the next waiting lane may use the time (file work in partials' rest)
                    rests.append(rest)
                    continue
                cap = 1  # a running batch cannot be interrupted: keep a live final's wait to one request
            batch = [e for e in ordered if e.batch_key == head.batch_key and e.priority == head.priority][:cap]
            for entry in batch:
                self._remove(entry)
            return batch, None
        return [], min(rests, default=None)

    def _run_isolated(self, requests: list[Req]) -> list[Any]:
        try:
            results = list(self._run_batch(requests))
            if len(results) != len(requests):
                raise RuntimeError(f"engine returned {len(results)} results for {len(requests)} requests")
            return results
        except Exception:
            if len(requests) == 1:
                raise
            log.warning("batch of %d failed on %s; retrying one by one", len(requests), self.name)
        out: list[Any] = []
        for request in requests:
            try:
                out.append(self._run_batch([request])[0])
            except Exception as exc:  # noqa: BLE001 - handed to that request's caller
                out.append(Failed(exc))
        return out

    async def _loop(self) -> None:
        assert self._wakeup is not None
        running: set[asyncio.Task] = set()
        try:
            while True:
                retry_s = None
                # (capacity from _running, which a batch leaves before it wakes the owner; `running` is for stop)
                while self.stalled_since is None:
                    general, urgent = self._threads.free(self._running)
                    if not general and not urgent:
                        break
                    batch, retry_s = self._take_batch(urgent_only=not general)
                    if not batch:
                        break
                    running_now = Running(batch[0].priority, frozenset(e.owner for e in batch),
                                          self._threads.place(batch[0].priority, urgent))
                    self._running.append(running_now)
                    task = asyncio.create_task(self._run(batch, running_now), name=f"batch-{self.name}")
                    running.add(task)
                    task.add_done_callback(running.discard)
                    batch = task = running_now = None  # nothing of this batch waits in this frame for the next one
                self._set_depth()
                self._wakeup.clear()  # no await since the batches were taken: no submit went unseen
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), retry_s)
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    async def _run(self, batch: list[Entry], running_now: Running) -> None:
        """One batch on a worker thread, watched; then its results delivered and the owner woken."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        stalled = False
        try:
            call = loop.run_in_executor(self._threads.executor(running_now.urgent_thread), self._run_isolated,
                                        [e.request for e in batch])
            if self.call_timeout_s is not None:
                done, _ = await asyncio.wait({call}, timeout=self.call_timeout_s)
                if not done:
                    stalled = True
                    self._stall(batch)
            try:
                results = await call
            finally:
                if stalled and not call.cancelled():
                    self._recover()
        except asyncio.CancelledError:
            for entry in batch:  # stopping mid-batch: its callers must not wait forever
                if not entry.future.done():
                    entry.future.set_exception(ServiceError(ErrorCode.OVERLOADED, "the service is shutting down"))
            raise
        except Exception as exc:
            log.exception("%s inference failed", self.name)
            results = [Failed(exc)] * len(batch)
        finally:
            self._running.remove(running_now)
        elapsed = time.perf_counter() - started
        share = self.duty.get(batch[0].priority)
        if share is not None:  # latency-critical work may use the rest of the time
            self._ready_at[batch[0].priority] = time.monotonic() + elapsed * (1 / share - 1)
        self.batches_run += 1
        self._record(batch, started, elapsed)
        self._deliver(batch, results)
        if self._wakeup is not None:
            self._wakeup.set()  # a worker is free

    def _record(self, batch: list[Entry], started: float, elapsed: float) -> None:
        """Metrics of a batch (in a method: a loop variable in ``_loop`` would keep a request alive)."""
        if self._metrics is None:
            return
        self._metrics.batch_size.labels(model=self.name).observe(len(batch))
        self._metrics.inference_seconds.labels(model=self.name).observe(elapsed)
        for entry in batch:
            labels = {"model": self.name, "priority": Priority(entry.priority).name.lower()}
            self._metrics.queue_wait_seconds.labels(**labels).observe(started - entry.submitted)
            self._metrics.compute_seconds.labels(**labels).observe(elapsed)

    def _deliver(self, batch: list[Entry], results: list[Any]) -> None:
        for entry, result in zip(batch, results):
            if entry.future.done():
                continue
            if isinstance(result, Failed):
                exc = result.error
                entry.future.set_exception(
                    exc if isinstance(exc, ServiceError) else ServiceError(
                        ErrorCode.INTERNAL, f"{self.name} inference failed: {type(exc).__name__}: {exc}"
                    )
                )
            else:
                entry.future.set_result(result)

    def _stall(self, batch: list[Entry]) -> None:
        """The running call passed ``call_timeout_s``: nobody waits on it any longer (see the module docstring)."""
        self._stalled_calls += 1
        self.stalled_since = self.stalled_since or time.monotonic()
        waiting = [e for e in self._pending if not e.future.done()]
        log.error("%s model call has not returned after %.1f s: failing its %d requests and %d waiting; "
                  "refusing new ones until it returns", self.name, self.call_timeout_s, len(batch), len(waiting))
        if self._metrics is not None:
            self._metrics.stalls.labels(model=self.name).inc()
        for entry in batch:
            if not entry.future.done():
                entry.future.set_exception(ServiceError(
                    ErrorCode.INTERNAL, f"the {self.name} model did not answer within {self.call_timeout_s:g} s"))
        for entry in waiting:  # accepted work that cannot be done here now: a failure, not a refusal
            entry.future.set_exception(ServiceError(
                ErrorCode.INTERNAL, f"the {self.name} model is not answering on this instance"))
        self._pending.clear()
        self._by_key.clear()
        self._set_depth()
        if self._on_stall is not None:
            self._on_stall(self.name, True)

    def _recover(self) -> None:
        self._stalled_calls -= 1
        if self._stalled_calls or self.stalled_since is None:
            return  # another call is still hung: still refusing
        log.warning("%s model call returned after stalling %.1f s; serving again", self.name,
                    time.monotonic() - self.stalled_since + (self.call_timeout_s or 0))
        self.stalled_since = None
        if self._on_stall is not None:
            self._on_stall(self.name, False)

    def _set_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.queue_depth.labels(model=self.name).set(len(self._pending))
