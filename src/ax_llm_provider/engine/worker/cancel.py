"""Cancellation for device requests: the scheduler's errors and the token a job consults between steps."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class SchedulerError(RuntimeError):
    """Base class of the device worker's errors."""


class QueueFullError(SchedulerError):
    """Too many requests are waiting (Ollama answers 503)."""


class RequestCancelled(SchedulerError):
    """The request was cancelled before it finished (Ollama answers 499)."""


class ConsumerStalledError(RequestCancelled):
    """The consumer stopped reading for longer than the stall timeout, so the device was given back."""


class RequestTimeoutError(SchedulerError):
    """The request's deadline (queue wait included) passed."""


class WorkerStoppedError(SchedulerError):
    """The device worker was shut down (or died) before the request could finish."""


class CancelToken:
    """What a job consults to learn that it should stop: cancellation by the consumer, or its deadline.

    Reading `cancelled` after the deadline cancels the token with a timeout, so a job that checks it in
    its own inner loops (chunked prefill) stops at the deadline without any timer thread.
    """

    def __init__(self, timeout: float | None = None, *, _cond: threading.Condition | None = None,
                 _label: str = "request", on_cancel: Callable[[], None] | None = None) -> None:
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self._cond = _cond if _cond is not None else threading.Condition(threading.RLock())
        self._label = _label
        self._error: tuple[type[SchedulerError], str] | None = None
        self._on_cancel = on_cancel  # the worker's wake-up, called with the condition held

    @property
    def cancelled(self) -> bool:
        if self._error is None and self.expired():
            self.cancel_with(RequestTimeoutError, self.timeout_message())
        return self._error is not None

    @property
    def reason(self) -> str | None:
        return None if self._error is None else self._error[1]

    def remaining(self) -> float | None:
        """Seconds left before the deadline (None when there is none, 0.0 once it passed)."""
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def expired(self) -> bool:
        return self.remaining() == 0.0

    def check(self) -> None:
        """Raise the cancellation error if the request was cancelled or ran out of time."""
        if self.cancelled:
            raise self.error()

    def error(self) -> SchedulerError:
        """A fresh exception describing the cancellation (fresh so two threads never share a traceback)."""
        if self._error is None:
            raise ValueError(f"{self._label} was not cancelled; check `cancelled` before asking for the error")
        kind, message = self._error
        return kind(message)

    @property
    def stopped(self) -> bool:
        """Cancelled already (without reading the clock, unlike `cancelled`)."""
        return self._error is not None

    def cancel_with(self, kind: type[SchedulerError], message: str) -> bool:
        """Cancel with this error (the first reason wins); False when it was cancelled already."""
        with self._cond:
            if self._error is not None:
                return False  # the first reason wins
            self._error = (kind, message)
            if self._on_cancel is not None:
                self._on_cancel()
            return True

    def timeout_message(self) -> str:
        return (f"{self._label} timed out after {self.timeout:g} s (queue wait included); "
                "raise the timeout, lower num_predict, or retry when the device is less busy")
