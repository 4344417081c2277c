"""Connections that cannot be held open by slow clients, and quiet logs when file descriptors run out.

uvicorn closes an idle keep-alive connection after `timeout_keep_alive`, but (0.3x-0.5x, h11) starts
no timer while the request head is being read: a client that connects and sends nothing, or one
header byte a second (slowloris), keeps its socket for ever. `GuardedH11Protocol` gives every request
head a deadline from the moment the connection is idle; the body's deadline is RequestGuard's.

When the process runs out of file descriptors (EMFILE), asyncio's accept loop (CPython 3.11
selector_events `_accept_connection`) reports the failure once per backlog slot, with a traceback,
and schedules one retry per slot: a flood of connections then writes tens of megabytes of log a
second and the retries keep the loop busy, so the server never recovers. Three defences: the loop
accepts one connection per readable event (so a failure schedules one retry, and each accepted
connection is counted before the next accept); connections beyond `max_connections()` (the descriptor
limit minus those open and a reserve for the engine's own files) get a 503 and are closed at once;
and resource errors that still happen are logged once per interval, with a count.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

DEFAULT_HEAD_TIMEOUT_S = 10.0
DEFAULT_KEEP_ALIVE_S = 5
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def _open_descriptors() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 64  # no /proc: assume a typical Python process with its libraries loaded


def max_connections() -> int:
    """Connections allowed open: the soft RLIMIT_NOFILE minus the descriptors already open and a reserve
    (an eighth of the limit, 16 to 256) for what the engine opens later."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 65536
    return max(1, soft - _open_descriptors() - min(256, max(16, soft // 8)))


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as Go programs such as Ollama do); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.debug("could not raise RLIMIT_NOFILE to %s: %s", hard, exc)
    return soft


class _EveryInterval:
    """True at most once per interval; counts the calls in between."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s, self.suppressed, self._last = interval_s, 0, float("-inf")

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self.suppressed += 1
            return False
        self._last = now
        return True


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head (set `head_timeout_s` on a subclass)."""

    head_timeout_s: float = DEFAULT_HEAD_TIMEOUT_S
    max_connections: int = 1024
    _refusals = _EveryInterval(60.0)
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(_BUSY)
            transport.close()
            if self._refusals():
                log.warning("%d connections open (the limit under RLIMIT_NOFILE): refusing new ones with 503; "
                            "%d refusals in the last minute not logged", self.max_connections,
                            self._refusals.suppressed)
                self._refusals.suppressed = 0
            return
        self._arm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_deadline()  # the next request on this connection gets its own deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        self._cancel_head_deadline()
        if not self.transport.is_closing():
            self._head_deadline = self.loop.call_later(self.head_timeout_s, self._head_expired)

    def _cancel_head_deadline(self) -> None:
        handle = self._head_deadline
        if handle is not None:
            handle.cancel()
            self._head_deadline = None

    def _head_expired(self) -> None:
        self._head_deadline = None
        # IDLE on the client's side: no complete request head arrived in time (SEND_BODY has the body
        # deadline of RequestGuard; DONE is a request being answered, however long that takes).
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.debug("closing a connection whose request head did not arrive within %g s", self.head_timeout_s)
            self.transport.close()


def protocol_with(head_timeout_s: float, connections: int | None = None) -> type[GuardedH11Protocol]:
    """The protocol class for uvicorn.Config(http=...); `connections` defaults to max_connections()."""
    if head_timeout_s <= 0:
        raise ValueError("head_timeout_s must be positive")
    limit = connections if connections is not None else max_connections()
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"head_timeout_s": head_timeout_s,
                                                              "max_connections": limit})


class AcceptErrorLimiter:
    """A loop exception handler: resource errors of `accept()` are logged once per `interval_s`."""

    def __init__(self, interval_s: float = 60.0) -> None:
        self._due = _EveryInterval(interval_s)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if not (isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS):
            loop.default_exception_handler(context)
            return
        if self._due():
            log.error("cannot accept connections: %s (%s); new connections wait until descriptors are freed "
                      "(raise LimitNOFILE); %d similar errors in the last %g s not logged", exc.strerror,
                      context.get("message", "accept failed"), self._due.suppressed, self._due.interval_s)
            self._due.suppressed = 0


def quiet_accept_errors(interval_s: float = 60.0) -> AcceptErrorLimiter:
    """Install the limiter and one-at-a-time accepting on the running loop (call before create_server)."""
    loop = asyncio.get_running_loop()
    limiter = AcceptErrorLimiter(interval_s)
    loop.set_exception_handler(limiter)
    original = getattr(loop, "_accept_connection", None)
    if original is not None:  # asyncio's selector loop (uvloop accepts in C and has no such method)

        def accept_one(protocol_factory: Any, sock: Any, sslcontext: Any = None, server: Any = None,
                       backlog: int = 100, *rest: Any) -> None:
            original(protocol_factory, sock, sslcontext, server, 1, *rest)

        loop._accept_connection = accept_one  # type: ignore[attr-defined]
    return limiter
