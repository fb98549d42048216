"""The model scheduler, without a model: ordering, merging, batching, bounds, cancellation, fault isolation.

The test engines say when a call starts (``Recorder.wait_calls``) and hold it at a gate the test opens, so a test
waits on what the scheduler did, never on time."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from conftest import loop_pass
from services.common.errors import ErrorCode, ServiceError
from services.common.scheduler import Priority, Scheduler, SchedulerOptions, Superseded


class Recorder:
    """A fake engine that records its batches and can be held at a gate; it counts the calls that started."""

    def __init__(self) -> None:
        self.batches: list[list] = []
        self.gate = threading.Event()
        self.gate.set()
        self.threads: set[str] = set()
        self.calls = 0
        self._called = threading.Condition()

    def __call__(self, requests: list) -> list:
        with self._called:
            self.calls += 1
            self._called.notify_all()
        self.gate.wait(30)
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(requests))
        out = []
        for r in requests:
            if r == "boom":
                raise RuntimeError("engine exploded")
            out.append(f"done:{r}")
        return out

    async def wait_calls(self, n: int = 1) -> None:
        """Until ``n`` calls have started on the model's threads."""
        def wait() -> bool:
            with self._called:
                return self._called.wait_for(lambda: self.calls >= n, 30)
        assert await asyncio.to_thread(wait), f"{self.calls} of {n} calls started"


class Slow(Recorder):
    """A Recorder whose every call takes ``seconds`` (a model call of known length)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def __call__(self, requests: list) -> list:
        time.sleep(self.seconds)  # the model's compute: what the duty cap measures is how long a call took
        return super().__call__(requests)


async def _started(engine, on_stall=None, live_active=lambda: False, **options) -> Scheduler:
    s = Scheduler("test", engine, SchedulerOptions(**options), on_stall=on_stall, live_active=live_active)
    await s.start()
    return s


async def _block(engine: Recorder, s: Scheduler) -> asyncio.Task:
    """Occupy the worker (held at the engine's gate) so that later submissions queue up."""
    engine.gate.clear()
    task = asyncio.create_task(s.submit("blocker"))
    await engine.wait_calls(1)
    return task


async def _settle() -> None:
    """Let the tasks just created run up to their wait for a result: ``submit`` queues its request (or is refused)
    before it first suspends, and one pass of the event loop runs each ready task's first step."""
    await loop_pass()


def _refused_at_once(submit) -> ServiceError:
    """The error ``submit`` raises in its first step, before it ever suspends: refused without waiting for
    anything (a running call, a free slot, a timer)."""
    try:
        with pytest.raises(ServiceError) as refused:
            submit.send(None)
    finally:
        submit.close()
    return refused.value


def test_runs_off_the_event_loop_and_returns_results():
    async def go():
        engine = Recorder()
        s = await _started(engine)
        result = await s.submit("a")
        await s.stop()
        return result, engine.threads
    result, threads = asyncio.run(go())
    assert result == "done:a"
    assert threads and all(t.startswith("model-test") for t in threads)


def test_priority_then_fifo_and_batching_by_key():
    async def go():
        engine = Recorder()
        s = await _started(engine, max_batch=3)
        blocker = await _block(engine, s)
        low = [asyncio.create_task(s.submit(f"p{i}", priority=Priority.BACKGROUND, batch_key="p")) for i in range(2)]
        urgent = [asyncio.create_task(s.submit(f"f{i}", priority=Priority.URGENT, batch_key="f")) for i in range(4)]
        other = asyncio.create_task(s.submit("g", priority=Priority.URGENT, batch_key="g"))
        await _settle()
        assert s.depth == 7
        engine.gate.set()
        await asyncio.gather(blocker, *low, *urgent, other)
        await s.stop()
        return engine.batches
    batches = asyncio.run(go())
    assert batches[0] == ["blocker"]
    assert batches[1:] == [["f0", "f1", "f2"], ["f3"], ["g"], ["p0", "p1"]]


def test_replace_key_supersedes_the_stale_request():
    async def go():
        engine = Recorder()
        s = await _started(engine)
        blocker = await _block(engine, s)
        old = asyncio.create_task(s.submit("old", replace_key="session-1"))
        await _settle()
        new = asyncio.create_task(s.submit("new", replace_key="session-1"))
        await _settle()
        engine.gate.set()
        results = await asyncio.gather(blocker, old, new, return_exceptions=True)
        await s.stop()
        return results, engine.batches
    results, batches = asyncio.run(go())
    assert isinstance(results[1], Superseded) and results[2] == "done:new"
    assert ["old"] not in batches and all("old" not in b for b in batches)


def test_cancelled_callers_cost_nothing():
    async def go():
        engine = Recorder()
        s = await _started(engine)
        blocker = await _block(engine, s)
        gone = asyncio.create_task(s.submit("gone"))
        await _settle()
        gone.cancel()
        kept = asyncio.create_task(s.submit("kept"))
        await _settle()
        engine.gate.set()
        await asyncio.gather(blocker, kept)
        await s.stop()
        return engine.batches
    batches = asyncio.run(go())
    assert all("gone" not in b for b in batches) and ["kept"] in batches


def test_a_cancelled_caller_stops_counting_as_waiting_at_once():
    """``live_depth`` tells a stream whether a request it submits now would wait behind others' (speculative
    finals read it). A partial cancelled at a pause's start must stop counting right away, not when the loop
    next drops it; and entries of cancelled callers must not pile up while a long batch runs."""
    async def go():
        engine = Recorder()
        s = await _started(engine, max_pending=4)
        blocker = await _block(engine, s)
        waiting = asyncio.create_task(s.submit("partial", priority=Priority.BACKGROUND))
        await _settle()
        depth_before = s.live_depth
        waiting.cancel()
        depth_after = s.live_depth  # synchronously: the entry is still in the list, its future is cancelled
        for i in range(20):  # submit-and-cancel many more than max_pending while the batch still runs
            gone = asyncio.create_task(s.submit(f"gone{i}"))
            await _settle()
            gone.cancel()
            await _settle()
        listed = len(s._pending)
        kept = asyncio.create_task(s.submit("kept"))
        await _settle()
        engine.gate.set()
        await asyncio.gather(blocker, kept)
        await s.stop()
        return depth_before, depth_after, listed, engine.batches
    depth_before, depth_after, listed, batches = asyncio.run(go())
    assert (depth_before, depth_after) == (1, 0)
    assert listed <= 4  # purged on submit: bounded by max_pending whatever the churn
    assert ["kept"] in batches and all(b[0] in ("blocker", "kept") for b in batches)


def test_waiting_for_others_leaves_out_the_callers_own_requests():
    """A stream sheds its intermediate turn checks while other streams' checks wait; its own waiting checks (a stream
    sent faster than real time has several out) do not count, and nobody's cancelled ones do."""
    async def go():
        engine = Recorder()
        s = await _started(engine)
        blocker = await _block(engine, s)
        own = [asyncio.create_task(s.submit(f"a{i}", owner="a")) for i in range(2)]
        await _settle()
        counts = [s.waiting_for_others("a"), s.waiting_for_others("b"), s.waiting_for_others(None)]
        other = asyncio.create_task(s.submit("b0", owner="b"))
        await _settle()
        counts.append(s.waiting_for_others("a"))
        other.cancel()
        counts.append(s.waiting_for_others("a"))
        engine.gate.set()
        await asyncio.gather(blocker, *own)
        await s.stop()
        return counts
    assert asyncio.run(go()) == [0, 2, 2, 1, 0]


def test_bounded_queue_refuses_at_once():
    async def go():
        engine = Recorder()
        s = await _started(engine, max_pending=2)
        blocker = await _block(engine, s)
        waiting = [asyncio.create_task(s.submit(f"w{i}")) for i in range(2)]
        await _settle()
        refused = _refused_at_once(s.submit("one too many"))
        engine.gate.set()
        await asyncio.gather(blocker, *waiting)
        await s.stop()
        return refused
    err = asyncio.run(go())
    assert err.code is ErrorCode.OVERLOADED


def test_a_failing_request_fails_alone_and_the_loop_goes_on():
    async def go():
        engine = Recorder()
        s = await _started(engine, max_batch=8)
        blocker = await _block(engine, s)
        tasks = [asyncio.create_task(s.submit(r)) for r in ("a", "boom", "b")]
        await _settle()
        engine.gate.set()
        results = await asyncio.gather(blocker, *tasks, return_exceptions=True)
        after = await s.submit("c")
        await s.stop()
        return results, after
    results, after = asyncio.run(go())
    assert results[1] == "done:a" and results[3] == "done:b"
    assert isinstance(results[2], ServiceError) and results[2].code is ErrorCode.INTERNAL
    assert "engine exploded" in results[2].message
    assert after == "done:c"


def test_stop_fails_pending_requests_cleanly():
    async def go():
        engine = Recorder()
        s = await _started(engine)
        engine.gate.clear()
        first = asyncio.create_task(s.submit("x"))
        second = asyncio.create_task(s.submit("y"))
        await engine.wait_calls(1)  # x runs, y waits
        engine.gate.set()
        await s.stop()
        return await asyncio.gather(first, second, return_exceptions=True)
    results = asyncio.run(go())
    # the in-flight and the queued request both get an answer: a result or a clean 'overloaded'
    assert len(results) == 2
    for r in results:
        assert r in ("done:x", "done:y") or (isinstance(r, ServiceError) and r.code is ErrorCode.OVERLOADED)
    assert isinstance(results[1], ServiceError)


def test_promote_moves_a_waiting_request_ahead_and_caps_batches():
    async def go():
        engine = Recorder()
        s = await _started(engine, max_batch=8)
        blocker = await _block(engine, s)
        normal = asyncio.create_task(s.submit("urgent-later", priority=Priority.NORMAL, replace_key="spec"))
        small = [asyncio.create_task(s.submit(f"p{i}", priority=Priority.BACKGROUND, batch_key="p", max_batch=2))
                 for i in range(3)]
        other = asyncio.create_task(s.submit("n", priority=Priority.NORMAL, batch_key="n"))
        await _settle()
        promoted = s.promote("spec", Priority.URGENT)
        missing = s.promote("nothing", Priority.URGENT)
        engine.gate.set()
        await asyncio.gather(blocker, normal, *small, other)
        after = s.promote("spec", Priority.URGENT)  # already ran
        await s.stop()
        return promoted, missing, after, engine.batches
    promoted, missing, after, batches = asyncio.run(go())
    assert promoted and not missing and not after
    assert batches[1] == ["urgent-later"] and batches[2] == ["n"]
    assert batches[3:] == [["p0", "p1"], ["p2"]]


def test_a_hung_call_is_cut_off_then_the_scheduler_recovers():
    stalls: list[tuple[str, bool]] = []

    async def go():
        recovered = asyncio.Event()

        def on_stall(name: str, stalled: bool) -> None:
            stalls.append((name, stalled))
            if not stalled:
                recovered.set()

        engine = Recorder()
        s = await _started(engine, call_timeout_s=0.3, on_stall=on_stall)
        engine.gate.clear()  # the model hangs on the next call (until the test opens the gate)
        hung = asyncio.create_task(s.submit("hung"))
        await engine.wait_calls(1)
        waiting = asyncio.create_task(s.submit("waiting"))
        with pytest.raises(ServiceError) as hung_err:
            await hung
        cut_while_hanging = not engine.gate.is_set() and engine.batches == []  # cut off, the call still inside
        with pytest.raises(ServiceError) as waiting_err:
            await waiting
        assert s.stalled_since is not None and stalls == [("test", True)]
        new_err = _refused_at_once(s.submit("new"))
        engine.gate.set()  # the call returns at last
        await asyncio.wait_for(recovered.wait(), 30)
        after = await s.submit("after")
        await s.stop()
        return hung_err.value, cut_while_hanging, waiting_err.value, new_err, after, engine.batches

    hung, cut_while_hanging, waiting, new, after, batches = asyncio.run(go())
    assert hung.code is ErrorCode.INTERNAL and "did not answer within 0.3 s" in hung.message
    assert cut_while_hanging
    assert waiting.code is ErrorCode.INTERNAL and new.code is ErrorCode.OVERLOADED
    assert "not answering" in new.message
    assert stalls == [("test", True), ("test", False)]
    assert after == "done:after"
    assert batches == [["hung"], ["after"]]  # nothing refused ever reached the model


def test_call_timeout_must_be_positive():
    with pytest.raises(ValueError):
        SchedulerOptions(call_timeout_s=0)


def test_stop_does_not_wait_for_a_hung_call():
    async def go():
        engine = Recorder()
        s = await _started(engine, call_timeout_s=0.1)
        engine.gate.clear()
        hung = asyncio.create_task(s.submit("hung"))
        with pytest.raises(ServiceError):
            await hung
        await asyncio.wait_for(s.stop(), 10)
        returned_while_hanging = engine.batches == []  # the call is still held at the gate
        engine.gate.set()
        return returned_while_hanging
    assert asyncio.run(go())


def test_the_bulk_lane_runs_after_live_work_and_never_takes_its_room():
    """File work (BULK) has its own bound: a full bulk lane refuses more file work, never a live request;
    and whatever waits, live requests go first."""
    async def go():
        engine = Recorder()
        s = await _started(engine, max_batch=4, max_pending=2, max_bulk_pending=3)
        blocker = await _block(engine, s)
        files = [asyncio.create_task(s.submit(f"file{i}", priority=Priority.BULK, batch_key="f")) for i in range(3)]
        await _settle()
        refused = _refused_at_once(s.submit("file3", priority=Priority.BULK, batch_key="f"))  # the bulk lane is full
        live = [asyncio.create_task(s.submit(f"final{i}", priority=Priority.URGENT, batch_key="l")) for i in range(2)]
        await _settle()
        assert s.live_depth == 2  # ... but both live requests were taken
        engine.gate.set()
        results = await asyncio.gather(blocker, *live, *files)
        await s.stop()
        return refused, results, engine.batches
    refused, results, batches = asyncio.run(go())
    assert refused.code is ErrorCode.OVERLOADED and "file lane" in refused.message
    assert results[1:3] == ["done:final0", "done:final1"]
    assert batches[1] == ["final0", "final1"] and batches[2] == ["file0", "file1", "file2"]  # no live stream open


def test_while_live_streams_are_open_bulk_work_runs_one_at_a_time_in_its_share():
    """With live_active() true, a bulk batch holds one request (a running batch cannot be interrupted, so a
    live final waits at most one file segment), and after a bulk call of d seconds the next waits
    d x (1/share - 1): live work has the rest of the model's time. The engine notes when each call ran (its own
    clock: the scheduler's rest is computed from what the call took, which includes it)."""

    async def go():
        engine = Spans(0.1)
        s = await _started(engine, max_batch=4, duty={Priority.BULK: 0.25}, live_active=lambda: True)
        results = await asyncio.gather(*(s.submit(f"file{i}", priority=Priority.BULK) for i in range(3)))
        await s.stop()
        return results, engine.batches, engine.spans
    results, batches, spans = asyncio.run(go())
    assert batches == [["file0"], ["file1"], ["file2"]] and results == ["done:file0", "done:file1", "done:file2"]
    for (start, end), (next_start, _) in zip(spans, spans[1:]):
        # a bulk call of d seconds is followed by 3 d left to live work (share 0.25), however long each call took
        assert next_start - end >= 3 * (end - start) * 0.99, spans


def test_file_work_progresses_in_the_rest_of_capped_live_work():
    """Partials that are always pending (live streams) must not starve file work: while the partial lane rests
    under its duty cap, a waiting bulk request runs; live finals still go before both."""

    async def go():
        engine = Slow(0.05)
        s = await _started(engine, max_batch=4, duty={Priority.BACKGROUND: 0.5, Priority.BULK: 0.5},
                           live_active=lambda: True)

        async def partials(session: str):
            for i in range(6):  # two streams: while one's partial runs, the other's waits
                await s.submit(f"partial{session}{i}", priority=Priority.BACKGROUND, replace_key=session)

        feeder = asyncio.gather(partials("a"), partials("b"))
        await engine.wait_calls(1)  # the partials are under way
        files = asyncio.gather(*(s.submit(f"file{i}", priority=Priority.BULK) for i in range(2)))
        final = await s.submit("final", priority=Priority.URGENT)
        await asyncio.wait_for(files, 5)
        partials_done_before_files = sum(1 for b in engine.batches if b[0].startswith("partial"))
        await feeder
        await s.stop()
        return final, engine.batches, partials_done_before_files
    final, batches, before = asyncio.run(go())
    order = [b[0] for b in batches]
    assert final == "done:final" and order.index("final") < order.index("file0")
    assert before < 12  # the files were done while partials still came
    assert all(len(b) == 1 for b in batches)  # capped lanes run one request at a time while streams are open


class Spans(Slow):
    """A Slow engine that notes the (start, end) of each call on its own monotonic clock."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.spans: list[tuple[float, float]] = []

    def __call__(self, requests: list) -> list:
        start = time.monotonic()
        try:
            return super().__call__(requests)
        finally:
            self.spans.append((start, time.monotonic()))


class Overlap(Slow):
    """A Slow engine that records how many of its calls ran at the same time, at most."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.lock = threading.Lock()
        self.now = self.most = 0

    def __call__(self, requests: list) -> list:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            return super().__call__(requests)
        finally:
            with self.lock:
                self.now -= 1


class Meet(Recorder):
    """An engine whose calls return only once ``parties`` of them are inside at the same time (else they fail)."""

    def __init__(self, parties: int) -> None:
        super().__init__()
        self.barrier = threading.Barrier(parties)

    def __call__(self, requests: list) -> list:
        self.barrier.wait(30)  # BrokenBarrierError: the calls did not run side by side
        return super().__call__(requests)


def test_workers_run_batches_side_by_side_but_a_capped_lane_one_at_a_time():
    """``workers=2``: a request does not wait for a running one when a worker is free (a short piece beside a long
    one); a capped priority still runs one batch at a time while streams are open, whatever the free workers."""

    async def go():
        engine = Meet(2)
        s = await _started(engine, max_batch=1, workers=2)
        side_by_side = await asyncio.gather(*(s.submit(f"piece{i}") for i in range(2)))
        await s.stop()
        engine = Overlap(0.05)
        s = await _started(engine, max_batch=4, workers=2, duty={Priority.BACKGROUND: 1.0}, live_active=lambda: True)
        await asyncio.gather(*(s.submit(f"partial{i}", priority=Priority.BACKGROUND, batch_key=i) for i in range(4)))
        capped = engine.most
        await s.stop()
        return side_by_side, capped
    side_by_side, capped = asyncio.run(go())
    assert side_by_side == ["done:piece0", "done:piece1"]  # both calls were inside the engine at once
    assert capped == 1


class Niceness(Recorder):
    """A Recorder that records each call's request and its thread's nice value (Linux: per thread); calls of
    ``later`` requests are held at the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, int]] = []

    def __call__(self, requests: list) -> list:
        self.seen.append((requests[0], os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        if requests[0].startswith("later"):
            return super().__call__(requests)
        return [f"done:{r}" for r in requests]


def test_an_urgent_worker_starts_urgent_work_at_once_beside_busy_workers_at_a_lower_os_priority():
    """``urgent_workers``: threads kept for ``URGENT`` work (a reply's first piece), so it starts while every
    worker is busy with later work, and those workers run at ``worker_nice`` so the CPU goes to it first. Work of
    other priorities never takes an urgent worker."""

    async def go():
        engine = Niceness()
        engine.gate.clear()  # the later calls hold both general workers until the urgent one has run
        s = await _started(engine, max_batch=1, workers=2, urgent_workers=1, worker_nice=7)
        later = [asyncio.create_task(s.submit(f"later{i}")) for i in range(3)]
        await engine.wait_calls(2)
        first = await asyncio.wait_for(s.submit("first", priority=Priority.URGENT), 30)
        started_by_then = [request for request, _ in engine.seen]
        engine.gate.set()
        await asyncio.gather(*later)
        await s.stop()
        return first, started_by_then, engine.seen
    first, started_by_then, seen = asyncio.run(go())
    # at once: it ran while both workers were held, and the third later call waited for one of them
    assert first == "done:first" and sorted(started_by_then) == ["first", "later0", "later1"]
    nice = dict(seen)
    assert nice["first"] == os.getpriority(os.PRIO_PROCESS, 0)  # the process's own: the urgent worker's
    # worker_nice is absolute: a test run already niced above 7 keeps its own where raising priority is not allowed
    assert all(nice[f"later{i}"] in (7, max(7, nice["first"])) for i in range(3))
