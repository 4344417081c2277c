"""`ax-llm serve` as a service: the lifecycle deploy/installation_app.py has (docs/deployment.md).

* **Signals.** While `signals()` is open (the CLI opens it before the preload), SIGTERM/SIGINT only record
  the stop and send STOPPING=1: a preload in progress finishes (a load is never interrupted: that can wedge
  the card) and the server is then not started; a running server stops accepting, gives the requests in
  flight its grace period, cancels what is left, and the engine is closed (generation cancelled, models
  unloaded, card finalized) before `serve` returns 0. A second signal cuts the grace short. uvicorn on its
  own re-raises the signal after its shutdown, which killed the process with status 143 before the engine
  was closed; here it is not re-raised.
* **READY=1** once the listener is bound (after the preload, so systemd's TimeoutStartSec covers the load).
* **The card lost.** A thread polls `cannot_serve(engine)`; when the engine can no longer answer (its
  recovery ladder gave up: DeviceFatalError, health "failed"), the reason is logged as critical and sent as
  STATUS=, the server stops the same way and the exit status is 3 (EXIT_CARD_LOST), which the unit's
  RestartForceExitStatus= restarts. An engine that keeps answering without its card (a CPU fallback) reports
  another state, and the server keeps running.
* **WATCHDOG=1** is not sent here: the engine's health monitor sends it while the device makes progress
  (engine/ops/health.py), the one source of it in the process.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

from ..shutdown import close_timeout
from ..systemd_notify import EXIT_CARD_LOST, notify_ready, sd_notify

if TYPE_CHECKING:
    from ..engine.engine import Engine

log = logging.getLogger(__name__)

EXIT_STOPPED = 0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def cannot_serve(engine: Engine) -> str | None:
    """Why `engine` can no longer answer any request, or None while it can.

    The one test `ax-llm serve` exits on: the health state "failed" (the recovery ladder gave up). A mode
    that keeps answering from another device reports a different state, so it is not an exit.
    """
    health = engine.health()
    if health.state != "failed":
        return None
    return health.last_error or "the NPU card could not be recovered"


class ServiceLifecycle:
    """Signals, readiness, the lost-card watch and the engine's close for one foreground server."""

    def __init__(self, engine: Engine, *, poll_s: float = 0.5,
                 cannot_serve: Callable[[Engine], str | None] = cannot_serve) -> None:
        self.engine = engine
        self.poll_s = poll_s
        self.cannot_serve = cannot_serve
        self.exit_status = EXIT_STOPPED
        self.stop_requested = False
        self._server: Any = None  # the uvicorn.Server while it runs
        self._capturing = False
        self._done = threading.Event()
        self._watcher: threading.Thread | None = None

    # ---- signals -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """SIGTERM/SIGINT record a stop instead of ending the process (main thread only; re-entrant)."""
        if self._capturing or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {signum: signal.signal(signum, self._on_signal) for signum in STOP_SIGNALS}
        self._capturing = True
        try:
            yield
        finally:
            self._capturing = False
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        server = self._server
        if self.stop_requested:
            if server is not None and not server.force_exit:
                log.warning("%s received again: cancelling the requests still running", name)
                server.force_exit = True
            else:
                log.warning("%s received again: still stopping (the engine is being closed)", name)
            return
        log.warning("%s received: stopping (requests in flight get the grace period), then closing the engine",
                    name)
        self.stop(f"stopping after {name}")

    def stop(self, status: str) -> None:
        """Stop the server (or do not start it): STOPPING=1 and STATUS=status to systemd."""
        self.stop_requested = True
        sd_notify("STOPPING=1", f"STATUS={status}")
        if self._server is not None:
            self._server.should_exit = True

    # ---- the server's life ----------------------------------------------------------------------------------

    def attach(self, server: Any) -> None:
        """The uvicorn.Server about to run (a stop requested before this stops it at its first tick)."""
        self._server = server
        if self.stop_requested:
            server.should_exit = True

    def listening(self, url: str) -> None:
        """The listener is bound: READY=1, and the lost-card watch starts."""
        models = ", ".join(self.engine.health().models) or "no model loaded yet"
        notify_ready(f"serving {url} ({models})")
        log.info("ready: serving %s (%s)", url, models)
        self._watcher = threading.Thread(target=self._watch, name="ax-llm-serve-watch", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._done.wait(self.poll_s):
            try:
                reason = self.cannot_serve(self.engine)
            except Exception:  # noqa: BLE001 -- a failed reading is not a lost card; the next poll tries again
                log.exception("reading the engine's health failed")
                continue
            if reason is not None:
                self.card_lost(reason)
                return

    def card_lost(self, reason: str) -> None:
        log.critical("the engine cannot serve any more (%s): stopping with exit status %d so systemd restarts "
                     "the service", reason, EXIT_CARD_LOST)
        self.exit_status = EXIT_CARD_LOST
        self.stop(f"failed: {reason}"[:500])

    def finish(self) -> int:
        """After the server stopped: end the watch, close the engine, return the exit status."""
        self._done.set()
        if self._watcher is not None:
            self._watcher.join(5)
        self._server = None
        log.info("closing the engine (cancel what still runs, unload, finalize the device)")
        try:
            self.engine.close(timeout=close_timeout(), cancel_running=True)
        except Exception as exc:  # noqa: BLE001 -- the exit status must still reach systemd
            log.error("closing the engine failed: %s: %s", type(exc).__name__, exc)
        log.info("ax-llm serve stopped (exit status %d)", self.exit_status)
        return self.exit_status


__all__ = ["EXIT_CARD_LOST", "EXIT_STOPPED", "ServiceLifecycle", "cannot_serve"]
