"""The device worker: FIFO, bounds, timeouts, cancellation within one item, stalls, shutdown, async."""

from __future__ import annotations

import asyncio
import gc
import random
import threading
import time
import traceback
from collections.abc import Iterator

import pytest

from ax_llm_provider.engine.worker.scheduler import (
    AsyncRequestStream,
    CancelToken,
    ConsumerStalledError,
    DeviceWorker,
    QueueFullError,
    RequestCancelled,
    RequestTimeoutError,
    SchedulerError,
    WorkerStoppedError,
)

pytestmark = pytest.mark.timeout(30)

WORKER_NAME = "test-device"


@pytest.fixture
def worker() -> Iterator[DeviceWorker]:
    w = DeviceWorker(max_queue=64, name=WORKER_NAME, buffer_size=2)
    yield w
    assert w.shutdown(timeout=5, cancel_running=True), "worker thread did not stop"


class Gate:
    """A job that holds the device until released, to build a queue behind it."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, token: CancelToken) -> Iterator[str]:
        self.started.set()
        deadline = time.monotonic() + 10
        while not self.release.wait(0.01):  # polls only so a cancelled gate lets go quickly
            if token.cancelled or time.monotonic() > deadline:
                return
        yield "gate"


class Endless:
    """An infinite job that records how it ended."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.produced = 0
        self.after_cancel = 0  # items the worker asked for after the token was cancelled
        self.closed = threading.Event()
        self.closed_on: str | None = None

    def __call__(self, token: CancelToken) -> Iterator[int]:
        try:
            while True:
                if token.cancelled:
                    self.after_cancel += 1
                if self.delay:
                    time.sleep(self.delay)
                self.produced += 1
                yield self.produced
        finally:
            self.closed_on = threading.current_thread().name
            self.closed.set()


def items(*values: object):
    def work(token: CancelToken) -> Iterator[object]:
        yield from values
    return work


def test_fifo_order(worker: DeviceWorker) -> None:
    gate, order = Gate(), []
    held = worker.submit(gate)  # noqa: F841 (dropping the stream would cancel it)
    assert gate.started.wait(5)

    def job(i: int):
        def work(token: CancelToken) -> Iterator[int]:
            order.append(i)
            yield i
        return work

    streams = [worker.submit(job(i)) for i in range(6)]
    assert worker.queue_length == 6
    gate.release.set()
    assert [list(s) for s in streams] == [[i] for i in range(6)]
    assert order == list(range(6))
    assert worker.stats().completed == 7


def test_queue_full_at_the_bound() -> None:
    with DeviceWorker(max_queue=2, name=WORKER_NAME) as w:
        gate = Gate()
        held = w.submit(gate)  # noqa: F841 (dropping the stream would cancel it)
        assert gate.started.wait(5)  # running, so not waiting
        waiting = [w.submit(items(1)), w.submit(items(2))]
        with pytest.raises(QueueFullError, match=r"server busy, please try again\. maximum pending requests "
                                                 r"exceeded \(2 waiting, max_queue=2\)"):
            w.submit(items(3))
        waiting[0].close()  # a cancelled queued request frees its slot at once
        extra = w.submit(items(4))
        gate.release.set()
        assert list(waiting[1]) == [2] and list(extra) == [4]


def test_timeout_while_queued_never_runs(worker: DeviceWorker) -> None:
    gate, ran = Gate(), threading.Event()
    held = worker.submit(gate)  # noqa: F841 (dropping the stream would cancel it)
    assert gate.started.wait(5)

    def work(token: CancelToken) -> Iterator[int]:
        ran.set()
        yield 1

    stream = worker.submit(work, timeout=0.2)
    began = time.monotonic()
    with pytest.raises(RequestTimeoutError, match=r"timed out after 0\.2 s \(queue wait included\)"):
        next(stream)
    assert 0.15 <= time.monotonic() - began < 2
    assert worker.queue_length == 0
    gate.release.set()
    assert worker.call(lambda: "after") == "after"
    assert not ran.is_set()
    assert worker.stats().timed_out == 1


def test_expired_queued_requests_do_not_hold_queue_slots() -> None:
    with DeviceWorker(max_queue=1, name=WORKER_NAME) as w:
        gate = Gate()
        held = w.submit(gate)  # noqa: F841 (dropping the stream would cancel it)
        assert gate.started.wait(5)
        stale = w.submit(items(1), timeout=0.05)
        time.sleep(0.1)  # nobody reads `stale`; its deadline passes in the queue
        fresh = w.submit(items(2))
        gate.release.set()
        with pytest.raises(RequestTimeoutError):
            next(stale)
        assert list(fresh) == [2]


def test_timeout_while_running_closes_the_job(worker: DeviceWorker) -> None:
    job = Endless(delay=0.01)
    stream = worker.submit(job, timeout=0.3)
    got = []
    with pytest.raises(RequestTimeoutError):
        for item in stream:
            got.append(item)
    assert got == list(range(1, len(got) + 1)) and got
    assert job.closed.wait(2) and job.closed_on == WORKER_NAME
    assert worker.stats().timed_out == 1


def test_timeout_during_one_long_step_does_not_wait_for_it(worker: DeviceWorker) -> None:
    release = threading.Event()

    def long_step(token: CancelToken) -> Iterator[int]:
        release.wait(5)
        yield 1

    stream = worker.submit(long_step, timeout=0.2)
    began = time.monotonic()
    with pytest.raises(RequestTimeoutError):
        next(stream)
    assert time.monotonic() - began < 1.5
    release.set()
    assert worker.call(lambda: 7) == 7


def test_cancel_while_queued_never_runs(worker: DeviceWorker) -> None:
    gate, ran = Gate(), threading.Event()
    held = worker.submit(gate)  # noqa: F841 (dropping the stream would cancel it)
    assert gate.started.wait(5)

    def work(token: CancelToken) -> Iterator[int]:
        ran.set()
        yield 1

    closed, cancelled = worker.submit(work), worker.submit(work)
    closed.close()
    cancelled.cancel()
    assert worker.queue_length == 0
    with pytest.raises(StopIteration):
        next(closed)
    with pytest.raises(RequestCancelled, match="cancelled by the caller"):
        next(cancelled)
    gate.release.set()
    worker.call(lambda: None)
    assert not ran.is_set()
    assert worker.stats().cancelled == 2


@pytest.mark.parametrize("how", ["close", "cancel", "gc", "with"])
def test_cancel_while_running_closes_generator_within_one_item(worker: DeviceWorker, how: str) -> None:
    job = Endless()
    stream = worker.submit(job)
    assert [next(stream) for _ in range(3)] == [1, 2, 3]
    if how == "close":
        stream.close()
    elif how == "cancel":
        stream.cancel()
        with pytest.raises(RequestCancelled):
            next(stream)
    elif how == "gc":
        del stream
        gc.collect()
    else:
        with stream:
            pass
    assert job.closed.wait(2), "the job's generator was not closed"
    assert job.closed_on == WORKER_NAME  # its finally ran on the device thread
    assert job.after_cancel <= 1
    assert job.produced <= 3 + worker.buffer_size + 1
    assert worker.call(lambda: "free") == "free"


def test_cancel_wakes_a_worker_blocked_on_a_full_buffer(worker: DeviceWorker) -> None:
    job = Endless()
    stream = worker.submit(job, stall_timeout=60)
    next(stream)
    time.sleep(0.05)  # the worker fills the buffer and blocks
    began = time.monotonic()
    stream.close()
    assert job.closed.wait(2) and time.monotonic() - began < 1


def test_waiting_consumer_does_not_spin(worker: DeviceWorker) -> None:
    gate = Gate()
    stream = worker.submit(gate)
    threading.Timer(0.5, gate.release.set).start()
    cpu = time.process_time()
    assert list(stream) == ["gate"]
    assert time.process_time() - cpu < 0.25


def test_stall_timeout_frees_the_device(worker: DeviceWorker) -> None:
    job = Endless()
    stream = worker.submit(job, stall_timeout=0.3)
    next(stream)
    assert job.closed.wait(3), "a consumer that stopped reading held the device"
    assert worker.call(lambda: "next request runs") == "next request runs"
    with pytest.raises(ConsumerStalledError, match="stopped reading for more than 0.3 s"):
        next(stream)
    assert worker.stats().stalled == 1


def test_a_slow_but_reading_consumer_is_not_a_stall(worker: DeviceWorker) -> None:
    # each gap (0.1 s) is far below the stall timeout, the whole read (1.2 s) is above it; the margin is wide
    # so that a loaded machine's scheduling delay cannot turn one gap into a stall
    stream = worker.submit(items(*range(12)), stall_timeout=1.0)
    got = []
    for item in stream:
        got.append(item)
        time.sleep(0.1)
    assert got == list(range(12))


def test_job_exception_propagates_with_its_type_and_traceback(worker: DeviceWorker) -> None:
    def failing_job(token: CancelToken) -> Iterator[int]:
        yield 1
        raise KeyError("boom")

    stream = worker.submit(failing_job)
    assert next(stream) == 1
    with pytest.raises(KeyError, match="boom") as info:
        next(stream)
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert "failing_job" in frames
    assert any("device thread" in note for note in info.value.__notes__)
    with pytest.raises(StopIteration):
        next(stream)
    with pytest.raises(ZeroDivisionError):
        worker.call(lambda: 1 / 0)
    assert worker.stats().failed == 2
    assert worker.call(lambda: "still alive") == "still alive"


def test_job_can_check_its_token_and_deadline(worker: DeviceWorker) -> None:
    def checking(token: CancelToken) -> Iterator[int]:
        while True:
            token.check()  # a job's inner loop (chunked prefill) stops at the deadline by itself
            time.sleep(0.01)
        yield 0

    with pytest.raises(RequestTimeoutError):
        next(worker.submit(checking, timeout=0.2))
    token = CancelToken()
    assert not token.cancelled and token.reason is None
    token.check()


def test_call_runs_on_the_device_thread_and_refuses_nesting(worker: DeviceWorker) -> None:
    assert worker.call(lambda: threading.current_thread().name) == WORKER_NAME

    def nested(token: CancelToken) -> Iterator[object]:
        yield worker.call(lambda: 1)

    with pytest.raises(SchedulerError, match="would deadlock"):
        list(worker.submit(nested))
    assert worker.call(lambda: 2) == 2


def test_shutdown_fails_queued_and_finishes_running() -> None:
    w = DeviceWorker(name=WORKER_NAME)
    gate = Gate()
    running = w.submit(gate)
    assert gate.started.wait(5)
    queued = w.submit(items(1))
    threading.Timer(0.2, gate.release.set).start()
    assert w.shutdown(wait=True, timeout=5)
    assert list(running) == ["gate"]
    with pytest.raises(WorkerStoppedError, match="shutting down; the request was not run"):
        next(queued)
    with pytest.raises(WorkerStoppedError, match="stopped"):
        w.submit(items(2))
    assert not w.alive


def test_shutdown_cancels_a_running_job_after_the_grace_period() -> None:
    w = DeviceWorker(name=WORKER_NAME)
    job = Endless(delay=0.01)
    stream = w.submit(job, stall_timeout=None)
    next(stream)
    began = time.monotonic()
    assert w.shutdown(timeout=0.3)
    assert 0.25 <= time.monotonic() - began < 3
    assert job.closed.is_set()
    with pytest.raises(WorkerStoppedError):
        list(stream)


def test_concurrent_streams_never_interleave() -> None:
    threads_n, per_thread = 8, 25
    w = DeviceWorker(name=WORKER_NAME, buffer_size=3)
    active, max_active, guard = [0], [0], threading.Lock()
    finally_threads: set[str] = set()
    problems: list[str] = []
    outcomes = {"full": 0, "early": 0, "cancelled": 0, "failed": 0}

    def job(rid: str, n: int, fail: bool):
        def work(token: CancelToken) -> Iterator[tuple[str, int]]:
            with guard:
                active[0] += 1
                max_active[0] = max(max_active[0], active[0])
            try:
                for seq in range(n):
                    yield rid, seq
                if fail:
                    raise ValueError(rid)
            finally:
                with guard:
                    active[0] -= 1
                    finally_threads.add(threading.current_thread().name)
        return work

    def client(t: int) -> None:
        rng = random.Random(t)
        for i in range(per_thread):
            rid, n, mode = f"{t}-{i}", rng.randrange(0, 12), rng.choice(["full", "early", "cancel", "fail"])
            stream = w.submit(job(rid, n, mode == "fail"), timeout=20)
            got = []
            try:
                for item in stream:
                    got.append(item)
                    if mode == "early" and len(got) >= n // 2:
                        stream.close()
                    if mode == "cancel" and len(got) == 1:
                        threading.Thread(target=stream.cancel).start()
                outcome = "early" if mode == "early" else "full"
            except RequestCancelled:
                outcome = "cancelled"
            except ValueError as exc:
                outcome = "failed"
                if str(exc) != rid:
                    problems.append(f"{rid} got the error of {exc}")
            if got != [(rid, s) for s in range(len(got))]:
                problems.append(f"{rid} got {got}")
            if outcome == "full" and mode == "full" and len(got) != n:
                problems.append(f"{rid} got {len(got)} of {n} items")
            with guard:
                outcomes[outcome] += 1

    threads = [threading.Thread(target=client, args=(t,)) for t in range(threads_n)]
    began = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join(20)
    assert not any(th.is_alive() for th in threads), "deadlock: a client thread never finished"
    assert w.shutdown(timeout=5)
    assert time.monotonic() - began < 20
    assert not problems, problems[:5]
    assert max_active[0] == 1, "two jobs ran on the device at once"
    assert finally_threads <= {WORKER_NAME}
    assert sum(outcomes.values()) == threads_n * per_thread
    stats = w.stats()
    assert stats.queued == 0 and stats.running is None
    assert stats.completed + stats.cancelled + stats.failed + stats.timed_out == threads_n * per_thread


def test_async_from_two_event_loops_concurrently(worker: DeviceWorker) -> None:
    def slow(tag: str):
        def work(token: CancelToken) -> Iterator[tuple[str, int]]:
            for i in range(5):
                time.sleep(0.02)
                yield tag, i
        return work

    async def consume(tag: str) -> tuple[list[tuple[str, int]], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        tick_task = asyncio.create_task(ticker())
        got = [item async for item in worker.asubmit(slow(tag))]
        tick_task.cancel()
        return got, ticks

    other: dict[str, tuple[list[tuple[str, int]], int]] = {}

    def other_loop() -> None:
        other["result"] = asyncio.run(consume("helper"))

    helper = threading.Thread(target=other_loop)
    helper.start()
    main_items, main_ticks = asyncio.run(consume("main"))
    helper.join(10)
    assert not helper.is_alive()
    helper_items, helper_ticks = other["result"]
    assert main_items == [("main", i) for i in range(5)]
    assert helper_items == [("helper", i) for i in range(5)]
    assert main_ticks > 3 and helper_ticks > 3, "waiting blocked an event loop"
    assert asyncio.run(worker.acall(lambda: 41)) == 41  # a third loop, same worker


def test_async_aclose_cancels_and_timeouts_arrive(worker: DeviceWorker) -> None:
    job = Endless()

    async def main() -> None:
        stream = worker.asubmit(job)
        assert isinstance(stream, AsyncRequestStream)
        assert await stream.__anext__() == 1
        await stream.aclose()
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()
        gate = Gate()
        held = worker.submit(gate)  # noqa: F841 (dropping the stream would cancel it)
        late = worker.asubmit(items(1), timeout=0.2)
        with pytest.raises(RequestTimeoutError):
            await late.__anext__()
        gate.release.set()

    asyncio.run(main())
    assert job.closed.wait(2) and job.closed_on == WORKER_NAME


def test_async_task_cancellation_loses_no_item(worker: DeviceWorker) -> None:
    gate = Gate()

    async def main() -> list[str]:
        stream = worker.asubmit(gate)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(stream.__anext__(), 0.1)
        gate.release.set()
        return [item async for item in stream]

    assert asyncio.run(main()) == ["gate"]
