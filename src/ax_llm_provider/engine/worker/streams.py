"""The consumer side of a device request: a bounded hand-off between the worker thread and the reader.

`RequestStream` is what a synchronous caller iterates; `AsyncRequestStream` wraps it for event loops
without holding any loop-bound state, so one engine serves several event loops.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .cancel import CancelToken, RequestCancelled, RequestTimeoutError, SchedulerError

if TYPE_CHECKING:
    from .scheduler import DeviceWorker

logger = logging.getLogger("ax_llm_provider.engine.worker.scheduler")

T = TypeVar("T")


QUEUED, RUNNING, FINISHED = "queued", "running", "finished"


class Request(Generic[T]):
    """Shared state of one request between the worker and its consumer; guarded by the worker's lock."""

    def __init__(self, rid: str, work: Callable[[CancelToken], Iterator[T]], lock: threading.RLock,
                 timeout: float | None, stall_timeout: float | None) -> None:
        self.id, self.work, self.stall_timeout = rid, work, stall_timeout
        self.cond = threading.Condition(lock)
        self.token = CancelToken(timeout, _cond=self.cond, _label=f"request {rid}", on_cancel=self.notify)
        self.state = QUEUED
        self.buffer: deque[T] = deque()
        self.error: BaseException | None = None
        self.last_take = time.monotonic()  # consumer's last read, for the stall timeout
        self.wakers: list[Callable[[], None]] = []  # one-shot callbacks of async waiters

    def notify(self) -> None:
        """Wake blocked threads and async waiters; call with the lock held."""
        self.cond.notify_all()
        wakers, self.wakers = self.wakers, []
        for wake in wakers:
            wake()


class RequestStream(Generic[T]):
    """Consumer side of a request: iterate it for the job's items; close it to give the device back."""

    def __init__(self, worker: DeviceWorker, request: Request[T]) -> None:
        self._worker, self._req, self._closed = worker, request, False
        self.request_id, self.token = request.id, request.token

    def __iter__(self) -> RequestStream[T]:
        return self

    def __next__(self) -> T:
        while True:
            ready, item = self._poll(None)
            if ready:
                return item
            if self._worker.on_worker_thread():
                raise SchedulerError(f"request {self._req.id} was read from the device thread itself, which "
                                     "would deadlock; call the device function directly inside the job")
            with self._req.cond:
                if not self._req.buffer and self._req.state != FINISHED and self._req.token.stopped is False:
                    self._req.cond.wait(self._req.token.remaining())

    def _poll(self, waker: Callable[[], None] | None) -> tuple[bool, Any]:
        """Non-blocking step: (True, item), raise the terminal outcome, or (False, None) if nothing yet.

        A waker given here is registered atomically with the "nothing yet" answer, so it cannot miss
        the event it waits for.
        """
        req = self._req
        error: BaseException | None = None
        with req.cond:
            if self._closed:
                raise StopIteration
            if req.state != FINISHED and req.token.expired():
                self._worker.cancel_request(req, RequestTimeoutError, req.token.timeout_message())
            if req.token.stopped:
                error = req.error if req.error is not None else req.token.error()
            elif req.buffer:
                req.last_take = time.monotonic()
                item = req.buffer.popleft()
                req.notify()  # room in the buffer for the worker
                return True, item
            elif req.state == FINISHED:
                error = req.error
            else:
                if waker is not None:
                    req.wakers.append(waker)
                return False, None
            self._closed = True
        if error is None:
            raise StopIteration
        raise error  # the job's own exception object, with its worker-side traceback

    def cancel(self, reason: str = "cancelled by the caller") -> None:
        """Cancel the request; a reader blocked in `next()` gets `RequestCancelled(reason)`."""
        self._worker.cancel_request(self._req, RequestCancelled, f"request {self._req.id} {reason}")

    def close(self) -> None:
        """Stop reading: cancel the request if it has not finished; later `next()` ends the iteration."""
        with self._req.cond:
            if self._closed and self._req.state == FINISHED:
                return
            self._closed = True
            self.cancel("closed by the consumer")
            self._req.buffer.clear()

    def __enter__(self) -> RequestStream[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A dropped stream must not hold the device; never let an error escape a finalizer.
        try:
            self.close()
        except Exception:
            logger.debug("closing an abandoned request stream failed", exc_info=True)


class AsyncRequestStream(Generic[T]):
    """Async view of a RequestStream with no loop-bound state: each wait uses a future on the current loop.

    The worker wakes the future through `loop.call_soon_threadsafe`, so the same worker serves any number
    of event loops (Jupyter's and one a helper thread runs) and no executor thread is held while waiting.
    """

    def __init__(self, stream: RequestStream[T]) -> None:
        self.stream = stream
        self.request_id = stream.request_id

    def __aiter__(self) -> AsyncRequestStream[T]:
        return self

    async def __anext__(self) -> T:
        loop = asyncio.get_running_loop()
        while True:
            fut: asyncio.Future[None] = loop.create_future()

            def wake(fut: asyncio.Future[None] = fut) -> None:
                try:
                    loop.call_soon_threadsafe(_resolve, fut)
                except RuntimeError:
                    logger.debug("event loop closed before request %s woke it", self.request_id)

            try:
                ready, item = self.stream._poll(wake)
            except StopIteration:
                raise StopAsyncIteration from None
            if ready:
                return item
            # The timeout only makes the next poll notice the request's deadline.
            await asyncio.wait((fut,), timeout=self.stream.token.remaining())

    async def aclose(self) -> None:
        self.stream.close()

    async def __aenter__(self) -> AsyncRequestStream[T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stream.close()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
