"""The device supervisor: what stands between the Engine and the card for unattended operation.

It composes the parts of engine/ops/ and implements what they call back:

* `CardAccess` (device.py): the module the backends drive, the owner lock, reboot.
* `RequestGuard` (guard.py): wraps every job (fatal check, thermal gate, recovery, request log).
* `HealthMonitor` (health.py) calls the hooks here (`probe`, `on_hang*`, `on_offline`, `alive`); it runs
  as a thread only where there is a card to watch or a watchdog to feed, or when asked for.
* Loads with progress, the CMM floor and one retry; the recovery ladder's reset and reboot actions
  unload and reload the models through the `ModelSlots` the Engine lends (slots.py): the ones that were
  loaded, and the one whose load failed on the device (until a recovery has brought them all back).
* `_on_fatal`, the ladder's one callback when the card is declared lost (whichever rung or hang got there).
* What counts as progress for systemd's watchdog: a model file loaded, besides the device's answers the
  monitor sees; a load that fails is not progress.

It never sees the Engine itself: the slots, the worker and a `Closable` (for the exit finalizer) are
handed in.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ... import process
from ...model.errors import ModelTooLargeError
from ...model.loader import LoadedModel, check_model_dir, load_model, weight_file_bytes
from ...observability import metrics
from ...runtime import axcl_codes as codes
from ...runtime.errors import (
    DeviceError,
    DeviceMemoryError,
    DeviceOfflineError,
    DeviceTimeoutError,
    model_refused,
)
from ...status_channel import publish_status
from ..clock import SYSTEM_CLOCK, Clock
from ..responses import ChunkT
from ..worker.scheduler import CancelToken, DeviceWorker, RequestStream
from .device import CardAccess
from .guard import Job, RequestGuard, mark_load_failure
from .health import DeviceReading, HealthConfig, HealthMonitor, HealthSnapshot, host_figures
from .recovery import (
    DeviceActivity,
    DeviceFatalError,
    HangCancelled,
    RecoveryLadder,
    RecoveryPolicy,
    RetryingStack,
)
from .snapshot import EngineState, health_snapshot

if TYPE_CHECKING:
    from ..slots import ModelSlots

log = logging.getLogger(__name__)


class Supervisor:
    """Device access, loads, recovery actions and the monitor's hooks for one Engine."""

    def __init__(self, slots: ModelSlots, worker: DeviceWorker, owner: process.Closable, *, backend: str,
                 device: int, card: Any | None = None, health: HealthConfig | None = None,
                 recovery: RecoveryPolicy | None = None, device_lock: bool | None = None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        """owner: closed at interpreter exit (process.register) when a card is in use; clock: the time every
        part reads (engine/clock.py)."""
        self.slots, self.worker, self.owner, self.clock = slots, worker, owner, clock
        self.backend = backend
        self.config = health if health is not None else HealthConfig.from_env()
        self.policy = recovery if recovery is not None else RecoveryPolicy()
        self.activity = DeviceActivity(clock.monotonic)
        self.card = CardAccess(backend, device, card=card, device_lock=device_lock, activity=self.activity,
                               policy=self.policy, on_offline=self.on_offline, on_locked=self._publish_status,
                               clock=clock)
        self.ladder = RecoveryLadder(self.policy, self._reset_and_reload, self._reboot_and_reload,
                                     on_fatal=self._on_fatal, clock=clock.monotonic)
        self.loading: str | None = None
        self.on_card_lost: Callable[[DeviceFatalError], None] | None = None  # degraded mode's switch (ops/degraded.py)
        self._wanted: list[str] = []  # what the next recovery loads again (oldest first)
        self.closing = False  # set by close(): the status channel stops publishing
        self._progress_at = 0.0
        self._idle_recovery: RequestStream[Any] | None = None
        self._idle_recovery_queued = False
        self.monitor = HealthMonitor(self, self.config, clock=clock.monotonic)
        self.guard = RequestGuard(self.ladder, self.monitor, lambda: self.card.card_backend is not None)
        on_card = backend in ("axcl", "axengine") or (
            backend == "auto" and importlib.util.find_spec("axcl") is not None)
        # The CPU twin starts no thread and installs no handler unless asked (a health config or a watchdog).
        self.watching = on_card or backend == "simulated" or health is not None or bool(self.monitor.watchdog_s)
        if self.watching:
            self.monitor.start()
            process.register(owner)
        if on_card and device_lock is not False:
            process.install_default_sigterm()  # finalize the card on SIGTERM unless the app handles it

    @property
    def axcl(self) -> Any:
        """The watched module the backends drive (resolved on its first call)."""
        return self.card.axcl

    # ---- loads ---------------------------------------------------------------------------------------

    def _progress(self, name: str) -> Callable[[int, int], None]:
        step = [0]

        def progress(done: int, total: int) -> None:
            self._progress_at = self.clock.monotonic()
            self.loading = f"{name} {done}/{total}"
            tenth = done * 10 // max(total, 1)
            if tenth > step[0]:
                step[0] = tenth
                log.info("loading %s: %d/%d model files", name, done, total)

        return progress

    def check(self, path: Path) -> None:
        """The load's file checks alone, before anything is evicted for it, and on a card whether the model
        can fit at all: one larger than the whole CMM pool fails here, with the resident model still loaded."""
        check_model_dir(path, backend=self.backend)
        reading = self.probe()
        if reading is None or reading.cmm_total_mb is None:
            return  # no card reading now: the load's own CMM check runs after the eviction
        need_mb = weight_file_bytes(path) / (1 << 20)
        if need_mb > reading.cmm_total_mb:
            raise ModelTooLargeError(
                f"{path}: the model's weights need {need_mb:.0f} MB but the card's CMM pool is "
                f"{reading.cmm_total_mb:.0f} MB in all; the loaded model was kept. Use a smaller or more "
                "strongly quantized model (see `ax-llm pull --help` for the registry's bundles)")

    def load(self, path: Path, name: str) -> LoadedModel:
        """load_model with the lock, a critical section, progress and the load retry policy."""
        if self.backend == "axengine" and self.card.lock_wanted is not False:
            self.card.take_lock()
        attempt = 0
        with process.critical_section(f"loading {name}"), self.card.mutex:
            self.loading = name  # progress (the watchdog's) is each file loaded, not the attempt
            try:
                while True:
                    attempt += 1
                    try:
                        model = load_model(path, name=name, backend=self.backend, device=self.card.device,
                                           axcl=self.card.axcl, progress=self._progress(name),
                                           cmm_floor_mb=self.config.cmm_floor_mb)
                        break
                    except DeviceError as exc:
                        self.card.raise_if_owned(exc)
                        if attempt >= self.policy.load_attempts or not self._before_load_retry(exc, name):
                            mark_load_failure(exc)
                            if not model_refused(exc):
                                self._want(name)  # the ladder's reset or reboot loads it again
                            raise
            finally:
                self.loading = None
        self.card.opened(model.backend)
        model.stack = RetryingStack(model.stack, self.policy, on_retry=self.ladder.note_retry)
        if self.watching:
            process.register(self.owner)  # keep the engine's exit finalizer ahead of the stack's own
        return model

    def _before_load_retry(self, exc: DeviceError, name: str) -> bool:
        """Prepare a second load attempt; False when there is no point (the ladder takes over)."""
        if isinstance(exc, DeviceMemoryError):
            log.warning("loading %s: %s; CMM is released late after a crash: retrying in %g s", name, str(exc),
                        self.policy.cmm_retry_wait_s)
            time.sleep(self.policy.cmm_retry_wait_s)
            return True
        if isinstance(exc, DeviceOfflineError | DeviceTimeoutError):
            return False  # calling again will not help: the recovery ladder reboots the card
        log.warning("loading %s failed (%s): trying once more", name, str(exc))
        return True

    def reboot(self) -> None:
        self.card.reboot()

    # ---- the recovery ladder's actions (device thread) ------------------------------------------------

    def _want(self, name: str) -> None:
        if name in self._wanted:
            self._wanted.remove(name)
        self._wanted.append(name)
        del self._wanted[:-max(1, self.slots.max_loaded)]  # the newest ones, as many as may stay loaded

    def _close_models(self) -> list[str]:
        with self.card.mutex:
            names = self.slots.unload_all()
        for name in names:
            self._want(name)
        return names

    def _reload(self) -> None:
        """Load what the recovery must bring back: until that worked, the next rung tries again."""
        for name in list(self._wanted):
            self.slots.ensure_loaded(name)
        self._wanted.clear()
        self.monitor.device_answered()

    def _reset_and_reload(self) -> None:
        self._close_models()
        self._reload()

    def _reboot_and_reload(self) -> None:
        self._close_models()
        self.reboot()
        self._reload()

    def _on_fatal(self, error: DeviceFatalError) -> None:
        """The card is lost: the ladder calls this once, whichever rung or hang got there."""
        cause = type(error.cause).__name__ if error.cause is not None else "unknown"
        process.sd_notify(f"STATUS=failed: the NPU card could not be recovered (last error: {cause})")
        if self.on_card_lost is not None:
            self.on_card_lost(error)

    # ---- requests ------------------------------------------------------------------------------------

    def check_admission(self) -> None:
        self.guard.check_admission()

    def wrap(self, job: Job[ChunkT]) -> tuple[Job[ChunkT], str]:
        """The job wrapped by the request guard, and its request id."""
        return self.guard.guard(job)

    # ---- the health monitor's hooks (monitor thread) ---------------------------------------------------

    def probe(self) -> DeviceReading | None:
        card = self.card
        if card.card_backend is None or card.device_id is None or not len(self.slots):
            self.monitor.nothing_to_read()
            return None
        if not card.mutex.acquire(blocking=False):
            return None  # a load, unload or reboot is under way
        try:
            reading = card.read()
        finally:
            card.mutex.release()
        metrics().device(reading)
        return reading

    def on_hang(self, stuck_s: float) -> None:
        current = self.guard.current
        if current is None:
            return
        token, request_id = current
        token.cancel_with(HangCancelled, (
            f"request {request_id}: the NPU has not finished an execute for {stuck_s:.1f} s (execute timeout "
            f"{self.config.execute_timeout_s:g} s): the card looks hung. It is being reset and the model "
            "reloaded; send the request again in a moment"))

    def on_hang_reboot(self, stuck_s: float) -> None:
        if self.card.device_id is None or self.card.card_backend is None:
            return
        log.error("an execute has hung for %.0f s: rebooting the card from the monitor thread", stuck_s)
        try:
            self.card.reboot_now()
            self.ladder.counts["reboot"] += 1
        except DeviceError as exc:
            log.error("rebooting the hung card failed: %s", str(exc))

    def on_hang_fatal(self, stuck_s: float) -> None:
        error = DeviceTimeoutError(codes.signed(codes.ERR_ENGINE_TIMEOUT), "axcl.rt.engine_execute",
                                   f"no answer for {stuck_s:.0f} s")
        self.ladder.give_up(error, f"an execute has not returned for {stuck_s:.0f} s, even after a reboot")
        self.worker.shutdown(wait=False, cancel_running=True)  # queued requests fail now

    def on_offline(self, reading: DeviceReading) -> None:
        if self.ladder.active or self.loading or self.ladder.fatal or self._idle_recovery_queued:
            return
        self._idle_recovery_queued = True

        def recover_if_still_offline(cancel: CancelToken) -> Iterator[None]:
            self._idle_recovery_queued = False
            card = self.card
            with card.mutex:
                still = card.card_backend is not None and card.device_id is not None and len(self.slots)
                now = card.read() if still else None
            if now is not None and not now.online:
                error = DeviceOfflineError(codes.signed(codes.ERR_DEVICE_NO_CONNECT), "axclrtGetDeviceProperties",
                                           now.error or "")
                with process.critical_section("recovering the card"):
                    rung = self.ladder.recover(error, where="idle")
                metrics().recovery(rung.name.lower())
            yield None

        try:
            self._idle_recovery = self.worker.submit(recover_if_still_offline, timeout=None, stall_timeout=None,
                                                     request_id="recovery")
        except Exception as exc:  # noqa: BLE001 -- a stopped or full worker: the next request recovers
            self._idle_recovery_queued = False
            log.warning("could not queue the recovery: %s", str(exc))

    def alive(self) -> bool:
        return self.worker.alive and self.ladder.fatal is None

    def last_progress(self) -> float:
        return self._progress_at

    # ---- health and close ------------------------------------------------------------------------------

    def _publish_status(self, lock: process.DeviceLock) -> None:
        """Health and doctor in other processes read this file instead of opening the card we hold."""
        publish_status(self, lock)

    def health(self, *, closed: bool, degraded: dict[str, Any] | None = None) -> HealthSnapshot:
        entries = self.slots.entries()
        backends = {e.runner.model.backend for _, e in entries}
        monitor, stats = self.monitor, self.worker.stats()
        state = EngineState(
            closed=closed, fatal=self.ladder.fatal is not None, recovering=self.ladder.active, loading=self.loading,
            hung=monitor.hung, paused=monitor.paused, device=self.card.label(backends),
            models=[name for name, _ in entries], backends=backends, reading=monitor.reading, queued=stats.queued,
            running=stats.running, recoveries=self.ladder.counts, last_error=self.ladder.last_error,
            watchdog={"interval_s": monitor.watchdog_s, "pings": monitor.pings, "live": monitor.live()},
            degraded=degraded)
        return health_snapshot(state, self.config, host_figures())

    def close(self, timeout: float | None, cancel_running: bool) -> None:
        """Stop the monitor and the worker (a load in progress finishes first), unload, finalize, unlock."""
        self.closing = True
        if self.monitor.hung:  # an execute that does not return will not return for close() either
            timeout = 5.0 if timeout is None else min(timeout, 5.0)
        self.monitor.stop()
        stopped = self.worker.shutdown(wait=True, timeout=timeout, cancel_running=cancel_running)
        if stopped:
            names = self._close_models()
            self.slots.unload_embedders()
            if names or self.card.card_backend:
                log.info("engine closed: %s unloaded, device finalized", ", ".join(names) or "no model")
        else:
            log.error("the device worker did not stop within %s s (an execute that never returns?): the models "
                      "were not unloaded; if the card misbehaves after this, reboot it (`axcl-smi reboot -d 0`)",
                      timeout)
        self.card.release()


__all__ = ["Supervisor"]
