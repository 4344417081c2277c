"""Signals, critical sections and the exit finalizer: how a process that owns a card stops.

A SIGKILL or exit during an engine load can wedge the card. `install()` turns SIGTERM/SIGINT into a clean
`SystemExit(0)` raised in the main thread, so the program unwinds and the atexit finalizer closes every
engine (engine.close: cancel the generation, unload, free, finalize). While a `critical_section()` is open
(a model load, a recovery), the signal is deferred and re-raised when the last section closes.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import threading
import weakref
from collections.abc import Iterator
from typing import Any, Protocol

from .systemd_notify import sd_notify

log = logging.getLogger(__name__)


class Closable(Protocol):
    """What is finalized at exit (an Engine): cancel its generation, unload, free the device."""

    def close(self, timeout: float | None = ..., *, cancel_running: bool = ...) -> None: ...



class ShutdownRequested(SystemExit):
    """Raised in the main thread by the SIGTERM/SIGINT handler: unwinds the program, then atexit finalizes."""

    def __init__(self, signum: int, exit_code: int = 0) -> None:
        super().__init__(exit_code)
        self.signum = signum


class _State:
    lock = threading.Lock()
    critical: list[str] = []  # what is in progress (loads, recoveries)
    pending: list[int] = []  # deferred signals
    shutting_down = False
    exit_code = 0
    engines: weakref.WeakSet[Any] = weakref.WeakSet()
    stop_timeout = float(os.environ.get("AX_LLM_STOP_TIMEOUT", "240"))


@contextlib.contextmanager
def critical_section(what: str) -> Iterator[None]:
    """A stretch (a model load, a recovery) that SIGTERM/SIGINT must not interrupt: they wait for its end."""
    with _State.lock:
        _State.critical.append(what)
    try:
        yield
    finally:
        with _State.lock:
            _State.critical.remove(what)
            redeliver = _State.pending[:] if not _State.critical else []
            if redeliver:
                _State.pending.clear()
        for signum in redeliver[:1]:
            log.warning("%s finished: acting on the deferred %s now", what, signal.Signals(signum).name)
            os.kill(os.getpid(), signum)  # the handler runs again, in the main thread


def in_critical_section() -> list[str]:
    with _State.lock:
        return list(_State.critical)


def _handler(signum: int, frame: object) -> None:
    name = signal.Signals(signum).name
    with _State.lock:
        busy = list(_State.critical)
        if busy:
            if signum not in _State.pending:
                _State.pending.append(signum)
            deferred = True
        else:
            deferred = False
            again = _State.shutting_down
            _State.shutting_down = True
    if deferred:
        log.warning("%s received during %s: deferring it until that finishes (never exit mid-load)",
                    name, busy[0])
        sd_notify(f"STATUS=stopping after {busy[0]}")
        return
    if again:
        log.warning("%s received again while shutting down; still finalizing the device", name)
        return
    log.warning("%s received: finalizing the device and exiting", name)
    sd_notify("STOPPING=1")
    raise ShutdownRequested(signum, _State.exit_code)


def register(engine: Closable) -> None:
    """Close `engine` at interpreter exit (weakly referenced: a collected engine is skipped).

    Called again after every model load: atexit runs its handlers last-registered-first, and the axcl
    backend's own `weakref.finalize` (which frees a stack at exit) registers itself when the first stack
    opens. Re-registering keeps `finalize_all` ahead of it, so the engine stops its worker (cancelling a
    generation) before any stack is freed under it.
    """
    _State.engines.add(engine)
    _register_atexit_first()


def _register_atexit_first() -> None:
    with _State.lock:
        atexit.unregister(finalize_all)
        atexit.register(finalize_all)


def close_timeout() -> float:
    """How long one engine's close may take at exit: half of $AX_LLM_STOP_TIMEOUT (240 s by default), so two
    stay within the unit's TimeoutStopSec."""
    return _State.stop_timeout / 2


def finalize_all() -> None:
    """Close every registered engine: cancel generations, wait for a load in progress, unload, finalize."""
    for engine in list(_State.engines):
        try:
            engine.close(timeout=close_timeout(), cancel_running=True)
        except Exception as exc:  # noqa: BLE001 -- at exit, report and go on with the next engine
            log.warning("closing an engine at exit failed: %s", exc)


def install(engine: Closable | None = None, *, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT),
            exit_code: int = 0) -> None:
    """Service setup: SIGTERM/SIGINT raise ShutdownRequested(exit_code) in the main thread (deferred during
    a critical section), and every registered engine is closed at exit. Call from the main thread."""
    if engine is not None:
        _State.engines.add(engine)
    _register_atexit_first()
    _State.exit_code = exit_code
    for signum in signals:
        signal.signal(signum, _handler)


def install_default_sigterm() -> bool:
    """Finalize on SIGTERM when nobody else handles it (an engine that owns a real card calls this)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False
    signal.signal(signal.SIGTERM, _handler)
    return True


def reset_for_tests() -> None:
    """Forget pending signals and the shutting-down flag (tests that run handlers in-process)."""
    with _State.lock:
        _State.pending.clear()
        _State.shutting_down = False


__all__ = [
    "Closable", "ShutdownRequested", "close_timeout", "critical_section", "finalize_all", "in_critical_section",
    "install", "install_default_sigterm", "register", "reset_for_tests",
]
