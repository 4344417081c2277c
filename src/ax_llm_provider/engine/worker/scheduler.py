"""The device worker: one thread owns the NPU and runs requests one at a time, FIFO.

The NPU runtime wants one thread per device context, and the card runs one model step at a time, so a
single daemon thread executes every piece of device work. A request is a generator factory
`work(token) -> Iterator[T]`; the worker iterates it and hands each item to the consumer through a small
bounded buffer. Cancellation is cooperative but prompt: between items the worker checks the request's
`CancelToken`, and when the consumer closes its `RequestStream` the worker closes the generator before
producing the next item, so the device is free again within one token. A consumer that stops reading
without closing is cut off after `stall_timeout` (the job waits on a full buffer until then), and a
request's `timeout` covers its queue wait too; neither needs a timer thread.

All state lives under one re-entrant lock shared by the queue condition and every request's condition,
which rules out lock-ordering deadlocks between consumers, cancellers and the worker.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from .cancel import (
    CancelToken,
    ConsumerStalledError,
    QueueFullError,
    RequestCancelled,
    RequestTimeoutError,
    SchedulerError,
    WorkerStoppedError,
)
from .streams import FINISHED, QUEUED, RUNNING, AsyncRequestStream, Request, RequestStream

__all__ = [
    "AsyncRequestStream", "CancelToken", "ConsumerStalledError", "DeviceWorker", "QueueFullError", "RequestCancelled",
    "RequestStream", "RequestTimeoutError", "SchedulerError", "WorkerStats", "WorkerStoppedError",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class WorkerStats:
    queued: int
    running: str | None
    completed: int
    cancelled: int
    timed_out: int
    stalled: int
    failed: int


def _call_once(fn: Callable[[], T]) -> Callable[[CancelToken], Iterator[T]]:
    def work(token: CancelToken) -> Iterator[T]:
        yield fn()
    return work


class DeviceWorker:
    """One daemon thread that owns the device and runs submitted jobs one at a time, in FIFO order."""

    def __init__(self, max_queue: int = 512, name: str = "ax-llm-device", *, buffer_size: int = 8) -> None:
        if max_queue < 0 or buffer_size < 1:
            raise ValueError(f"need max_queue >= 0 and buffer_size >= 1, got {max_queue} and {buffer_size}")
        self.max_queue, self.buffer_size = max_queue, buffer_size  # buffer: how far a job may run ahead
        self._lock = threading.RLock()
        self._work_ready = threading.Condition(self._lock)
        self._queue: deque[Request[Any]] = deque()
        self._running: Request[Any] | None = None
        self._stopping = False
        self._ids = itertools.count(1)
        self._counts = dict.fromkeys(("completed", "cancelled", "timed_out", "stalled", "failed"), 0)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # -- producer-facing API ------------------------------------------------------------------------

    def submit(self, work: Callable[[CancelToken], Iterator[T]], *, timeout: float | None = None,
               stall_timeout: float | None = 60.0, request_id: str | None = None) -> RequestStream[T]:
        """Queue `work`; the worker calls it with a CancelToken and streams its items to the result."""
        with self._lock:
            if self._stopping:
                raise WorkerStoppedError(f"device worker {self._thread.name} is stopped; "
                                         "create a new engine (or restart the service) to run more requests")
            if len(self._queue) >= self.max_queue:  # expired requests nobody has read yet free their slots
                for stale in [r for r in self._queue if r.token.expired()]:
                    self.cancel_request(stale, RequestTimeoutError, stale.token.timeout_message())
            if len(self._queue) >= self.max_queue:
                raise QueueFullError(f"server busy, please try again. maximum pending requests exceeded "
                                     f"({len(self._queue)} waiting, max_queue={self.max_queue})")
            req: Request[T] = Request(request_id or f"r{next(self._ids)}", work, self._lock,
                                        timeout, stall_timeout)
            self._queue.append(req)
            self._work_ready.notify()
            logger.debug("request %s queued (%d waiting)", req.id, len(self._queue))
        return RequestStream(self, req)

    def asubmit(self, work: Callable[[CancelToken], Iterator[T]], **kwargs: Any) -> AsyncRequestStream[T]:
        """`submit` for async callers; it never blocks, only the iteration waits."""
        return AsyncRequestStream(self.submit(work, **kwargs))

    def call(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run one piece of device work (load, unload, embed) through the queue and return its result.

        A timeout stops the wait; work already running on the device cannot be interrupted and finishes.
        """
        with self.submit(_call_once(fn), timeout=timeout, stall_timeout=None) as stream:
            return next(stream)

    async def acall(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        async with self.asubmit(_call_once(fn), timeout=timeout, stall_timeout=None) as stream:
            return await stream.__anext__()

    def shutdown(self, wait: bool = True, timeout: float | None = None, *, cancel_running: bool = False) -> bool:
        """Stop accepting work, fail queued requests, let the running one finish, join the thread.

        The running request gets `timeout` seconds to finish (all of them with cancel_running=False and
        timeout=None), then it is cancelled and the thread joined again for as long. Returns whether the
        thread has stopped.
        """
        with self._lock:
            self._stopping = True
            while self._queue:
                self._finish(self._queue.popleft(), WorkerStoppedError(
                    "device worker is shutting down; the request was not run. Retry after the engine restarts"))
            if cancel_running and self._running is not None:
                self.cancel_request(self._running, WorkerStoppedError, "device worker is shutting down")
            self._work_ready.notify_all()
        if not wait or threading.current_thread() is self._thread:
            return not self._thread.is_alive()
        self._thread.join(timeout)
        if self._thread.is_alive():
            with self._lock:
                running = self._running
                if running is not None:
                    self.cancel_request(running, WorkerStoppedError, "device worker is shutting down")
            self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("device worker %s did not stop within %s s", self._thread.name, timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> DeviceWorker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown(cancel_running=True)

    # -- observability ------------------------------------------------------------------------------

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    @property
    def running_request_id(self) -> str | None:
        return getattr(self._running, "id", None)

    def on_worker_thread(self) -> bool:
        """True when called from the device thread itself (a job must not wait on its own worker)."""
        return threading.current_thread() is self._thread

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    def stats(self) -> WorkerStats:
        with self._lock:
            return WorkerStats(queued=len(self._queue), running=self.running_request_id, **self._counts)

    # -- internals (the lock is re-entrant; every helper below may be called with it held) -----------

    def cancel_request(self, req: Request[Any], kind: type[SchedulerError], message: str) -> None:
        with self._lock:
            if req.state == FINISHED or not req.token.cancel_with(kind, message):
                return
            logger.debug("request %s cancelled (%s): %s", req.id, req.state, message)
            if req.state == QUEUED:  # never ran: drop it now so it does not occupy a queue slot
                self._queue.remove(req)
                self._finish(req, req.token.error())

    def _finish(self, req: Request[Any], error: BaseException | None) -> None:
        with self._lock:
            if req.token.stopped and not isinstance(error, SchedulerError):
                error = req.token.error()  # a cancelled job may fail in any way; report why it stopped
            req.state, req.error = FINISHED, error
            req.token.deadline = None  # a finished request cannot time out any more
            if self._running is req:
                self._running = None
            kind = ("completed" if error is None else "timed_out" if isinstance(error, RequestTimeoutError)
                    else "stalled" if isinstance(error, ConsumerStalledError)
                    else "cancelled" if isinstance(error, SchedulerError) else "failed")
            self._counts[kind] += 1
            req.notify()
        logger.log(logging.WARNING if kind in ("timed_out", "stalled") else logging.DEBUG,
                   "request %s %s%s", req.id, kind, "" if error is None else f": {error!r}")

    def _loop(self) -> None:
        try:
            while (req := self._take()) is not None:
                self._run(req)
        finally:
            # Normal exit or a BaseException from a job: nobody may wait forever on this thread.
            with self._lock:
                self._stopping = True
                for req in [*self._queue, *([self._running] if self._running else [])]:
                    self._finish(req, WorkerStoppedError(f"device worker {self._thread.name} stopped"))
                self._queue.clear()

    def _take(self) -> Request[Any] | None:
        with self._lock:
            while not self._queue and not self._stopping:
                self._work_ready.wait()
            if not self._queue:
                return None
            req = self._queue.popleft()
            req.state, req.last_take = RUNNING, time.monotonic()
            self._running = req
            return req

    def _run(self, req: Request[Any]) -> None:
        token, error = req.token, None
        if token.cancelled:  # expired between queueing and now
            self._finish(req, token.error())
            return
        logger.debug("request %s started", req.id)
        gen: Iterator[Any] | None = None
        try:
            gen = iter(req.work(token))
            while not token.cancelled:
                try:
                    item = next(gen)
                except StopIteration:
                    break
                if not self._deliver(req, item):
                    break
        except Exception as exc:  # noqa: BLE001 -- forwarded to the consumer, who re-raises it
            exc.add_note(f"(raised on the device thread while running request {req.id})")
            error = exc
        except BaseException as exc:  # forward so the consumer does not hang, then let the thread die
            self._finish(req, exc)
            raise
        finally:
            close = getattr(gen, "close", None)
            if close is not None:
                try:
                    close()  # runs the job's finally blocks here, on the device thread
                except Exception as exc:
                    logger.warning("request %s: closing its generator failed", req.id, exc_info=True)
                    error = error or exc
        self._finish(req, error)

    def _deliver(self, req: Request[Any], item: Any) -> bool:
        """Buffer one item, waiting while the buffer is full; False when the request must stop."""
        with self._lock:
            while len(req.buffer) >= self.buffer_size and not req.token.cancelled:
                wait = req.token.remaining()
                if req.stall_timeout is not None:
                    idle = time.monotonic() - req.last_take
                    if idle >= req.stall_timeout:
                        req.token.cancel_with(ConsumerStalledError, (
                            f"request {req.id} was cancelled because its consumer stopped reading for more "
                            f"than {req.stall_timeout:g} s; read the stream promptly or close it"))
                        break
                    wait = req.stall_timeout - idle if wait is None else min(wait, req.stall_timeout - idle)
                req.cond.wait(wait)
            if req.token.cancelled:
                return False
            req.buffer.append(item)
            req.notify()
            return True
