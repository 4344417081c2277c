"""The engine's device supervisor: what stands between the Engine and the card for unattended operation.

* Device access: the `axcl` module the backends drive (the real one, or the engine's SimCard) wrapped in
  a `WatchedAxcl` (execute watch for hangs), resolved on first use after taking the single-owner lock.
* Loads: critical sections (SIGTERM waits), progress (health, watchdog), the CMM floor, a bounded retry
  (CMM released late after a crash; an offline card rebooted first), AXCL 0x80300186 mapped to the owner.
* Requests: `guard(job)` wraps every chat/generate job: fatal check, thermal gate, recovery ladder with a
  transparent re-run when nothing was streamed yet, request id and a structured "request done" log.
* The health monitor's hooks (engine/ops/health.py) and `close()`.
"""

from __future__ import annotations

import ctypes
import importlib.util
import itertools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ... import process as lifecycle
from ...model.loader import LoadedModel, load_model
from ...observability import metrics, request_fields, set_request_id
from ...runtime import axcl_codes as codes
from ...runtime.axcl_props import get_device_properties, reboot_device
from ...runtime.errors import DeviceError, DeviceMemoryError, DeviceOfflineError
from ..worker.scheduler import CancelToken, RequestStream, SchedulerError
from .health import (
    DeviceReading,
    HealthConfig,
    HealthMonitor,
)
from .recovery import (
    DeviceActivity,
    DeviceFatalError,
    HangCancelled,
    RecoveryLadder,
    RecoveryPolicy,
    RetryingStack,
    WatchedAxcl,
)
from .supervisor_hooks import MonitorHooks

if TYPE_CHECKING:
    from ..engine import Engine

log = logging.getLogger(__name__)
Chunk = dict[str, Any]
Job = Callable[[CancelToken], Iterator[Chunk]]
CARD_BACKENDS = ("axcl", "simulated")
_ids = itertools.count(1)


def new_request_id() -> str:
    return f"{uuid.uuid4().hex[:8]}-{next(_ids)}"


class Supervisor(MonitorHooks):
    """Device access, loads and the request guard; the monitor's hooks and health() live in MonitorHooks."""

    def __init__(self, engine: Engine, *, card: Any | None = None, health: HealthConfig | None = None,
                 recovery: RecoveryPolicy | None = None, device_lock: bool | None = None) -> None:
        self.engine = engine
        self.config = health if health is not None else HealthConfig.from_env()
        self.policy = recovery if recovery is not None else RecoveryPolicy()
        self.activity = DeviceActivity()
        self.card = card  # the axcl module or SimCard to drive (None: import axcl / a new SimCard)
        self._lock_wanted = device_lock
        self.lock: lifecycle.DeviceLock | None = None
        self.axcl = WatchedAxcl(self._resolve_axcl, self.activity)
        self.ladder = RecoveryLadder(self.policy, self._reset_and_reload, self._reboot_and_reload)
        self._mutex = threading.RLock()  # load/unload/reboot hold it; the monitor's read skips while held
        self.device_id: int | None = None
        self.card_backend: str | None = None  # "axcl" or "simulated" once a stack was opened on a card
        self.loading: str | None = None
        self._progress_at = 0.0
        self._current: CancelToken | None = None
        self._current_id: str | None = None
        self._lib: Any = None
        self._idle_recovery: RequestStream[Any] | None = None
        self._idle_recovery_queued = False
        self._status_callback: Any = None  # the ctypes callback object, kept alive while registered
        self.monitor = HealthMonitor(self, self.config)
        self.monitor.start()
        lifecycle.register(engine)
        on_card = engine.backend in ("axcl", "axengine") or (
            engine.backend == "auto" and importlib.util.find_spec("axcl") is not None)
        if on_card and device_lock is not False:
            lifecycle.install_default_sigterm()  # finalize the card on SIGTERM unless the app handles it

    # ---- device access -------------------------------------------------------------------------------

    def _take_lock(self) -> None:
        if self.lock is None:
            self.lock = lifecycle.DeviceLock(f"card{self.engine.device}")
        self.lock.acquire()

    def _resolve_axcl(self) -> Any:
        """The module behind `self.axcl`: taken on the first device call of a card backend."""
        backend = self.engine.backend
        if backend == "simulated":
            if self.card is None:
                from ...runtime.simcard import DEFAULT_PRESET, SimCard

                self.card = SimCard(os.environ.get("AX_LLM_SIM_PRESET", DEFAULT_PRESET))
            if self._lock_wanted:
                self._take_lock()
            return self.card
        if self._lock_wanted is not False:
            self._take_lock()
        if self.card is not None:
            return self.card
        from ...runtime.axcl_device import import_axcl

        return import_axcl()

    def lib_rt(self) -> Any:
        """libaxcl_rt.so through ctypes (or the SimCard's stand-in): device properties and reboot."""
        if self._lib is None:
            module = self.axcl.module
            lib = getattr(module, "lib_rt", None)
            if lib is None:
                from ...runtime.axcl_props import load_lib

                lib = load_lib()
            self._lib = lib
        return self._lib

    def _watch_status(self) -> None:
        """Offline notification from the runtime where it has `axclrtRegisterDeviceStatusCallback` (absent
        from V3.10.2: then the monitor's polling is the only source)."""
        if self._status_callback is not None:
            return
        register = getattr(self.lib_rt(), "axclrtRegisterDeviceStatusCallback", None)
        if register is None:
            log.debug("axclrtRegisterDeviceStatusCallback is not in this runtime: offline is found by polling")
            self._status_callback = False
            return

        def on_status(device: int, status: int, userdata: Any) -> None:
            if status == 1:  # AXCL_DEVICE_STATUS_OFFLINE
                log.error("the runtime reports card %d offline", device)
                self.on_offline(DeviceReading(online=False, error=f"runtime status callback: device {device} offline"))

        self._status_callback = ctypes.CFUNCTYPE(None, ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p)(on_status)
        ret = register(self._status_callback, None)
        if ret != 0:
            log.warning("axclrtRegisterDeviceStatusCallback -> %d: offline is found by polling", ret)

    def _learn_device_id(self) -> int | None:
        devices, ret = self.axcl.rt.get_device_list()
        index = self.engine.device
        if ret == 0 and 0 <= index < len(devices):
            self.device_id = int(devices[index])
        elif self.device_id is None:  # a card that does not answer still has its bus id (the SimCard's list)
            known = getattr(self.axcl.module, "device_ids", None)
            if known and 0 <= index < len(known):
                self.device_id = int(known[index])
        return self.device_id

    # ---- loads ---------------------------------------------------------------------------------------

    def _progress(self, name: str) -> Callable[[int, int], None]:
        step = [0]

        def progress(done: int, total: int) -> None:
            self._progress_at = time.monotonic()
            self.loading = f"{name} {done}/{total}"
            tenth = done * 10 // max(total, 1)
            if tenth > step[0]:
                step[0] = tenth
                log.info("loading %s: %d/%d model files", name, done, total)

        return progress

    def load(self, path: Path, name: str) -> LoadedModel:
        """load_model with the lock, a critical section, progress and the load retry policy."""
        if self.engine.backend == "axengine" and self._lock_wanted is not False:
            self._take_lock()
        attempt = 0
        with lifecycle.critical_section(f"loading {name}"), self._mutex:
            self.loading = name
            self._progress_at = time.monotonic()
            try:
                while True:
                    attempt += 1
                    try:
                        model = load_model(path, name=name, backend=self.engine.backend, device=self.engine.device,
                                           axcl=self.axcl, progress=self._progress(name),
                                           cmm_floor_mb=self.config.cmm_floor_mb)
                        break
                    except DeviceError as exc:
                        self._raise_if_owned(exc)
                        if attempt >= self.policy.load_attempts or not self._before_load_retry(exc, name):
                            exc._ax_load_failure = True  # type: ignore[attr-defined]  # the ladder leaves it alone
                            raise
            finally:
                self.loading = None
        if model.backend in CARD_BACKENDS:
            self.card_backend = model.backend
            self._learn_device_id()
            self._watch_status()
        model.stack = RetryingStack(model.stack, self.policy, on_retry=self.ladder.note_retry)
        lifecycle.register(self.engine)  # keep the engine's exit finalizer ahead of the stack's own
        return model

    def _before_load_retry(self, exc: DeviceError, name: str) -> bool:
        """Prepare a second load attempt; False when there is no point."""
        if isinstance(exc, DeviceMemoryError):
            log.warning("loading %s: %s; CMM is released late after a crash: retrying in %g s", name, str(exc),
                        self.policy.cmm_retry_wait_s)
            time.sleep(self.policy.cmm_retry_wait_s)
            return True
        if isinstance(exc, DeviceOfflineError):
            if not self.policy.reboot or self.engine.backend not in (*CARD_BACKENDS, "auto"):
                return False
            log.error("loading %s: the card does not answer (%s): rebooting it first", name, str(exc))
            self.reboot()
            return True
        log.warning("loading %s failed (%s): trying once more", name, str(exc))
        return True

    def _raise_if_owned(self, exc: DeviceError) -> None:
        if codes.unsigned(exc.code) != codes.ERR_DEVICE_PORT_ALLOCATE:
            return
        owners = lifecycle.device_users()
        recorded = self.lock.owner() if self.lock is not None else None
        if recorded is not None and recorded.pid != os.getpid():
            owners.insert(0, recorded)
        card = f"card {self.engine.device}"
        raise lifecycle.DeviceInUseError(lifecycle.in_use_message(card, owners, code="Set AXCL device failed "
                                                                  "{0x80300186}"), owners[0] if owners else None) from exc

    # ---- the recovery ladder's actions (device thread) ------------------------------------------------

    def _close_models(self) -> list[str]:
        with self._mutex:
            names = list(self.engine._models)
            for name in names:
                self.engine._unload(name)
        return names

    def _reload(self, names: list[str]) -> None:
        for name in names:
            self.engine._ensure_loaded(name)
        self.monitor.device_answered()

    def _reset_and_reload(self) -> None:
        self._reload(self._close_models())

    def _reboot_and_reload(self) -> None:
        names = self._close_models()
        self.reboot()
        self._reload(names)

    def reboot(self) -> None:
        """Firmware reboot of the card (axclrtRebootDevice) and wait until it answers; raises DeviceError."""
        if self.engine.backend not in (*CARD_BACKENDS, "auto"):
            raise DeviceOfflineError(codes.WRAPPER_GUARD, "axclrtRebootDevice",
                                     f"the {self.engine.backend} backend has no firmware reboot here")
        with lifecycle.critical_section("rebooting the card"), self._mutex:
            axcl = self.axcl
            inited = axcl.init(None) == 0
            try:
                device_id = self.device_id if self.device_id is not None else self._learn_device_id()
                if device_id is None:
                    raise DeviceOfflineError(codes.signed(codes.ERR_DEVICE_INVALID_ID), "axclrtRebootDevice",
                                             "the card's device id is unknown (it never answered)")
                log.warning("rebooting the NPU card (device id %d)", device_id)
                lifecycle.sd_notify("STATUS=rebooting the NPU card")
                reboot_device(self.lib_rt(), device_id)
                self._wait_for_card(device_id)
            finally:
                if inited:
                    axcl.finalize()
        log.warning("the NPU card answers again after its reboot")

    def _wait_for_card(self, device_id: int) -> None:
        deadline = time.monotonic() + self.policy.reboot_wait_s
        while True:
            try:
                get_device_properties(self.lib_rt(), device_id)
                self.activity.answered()
                return
            except DeviceError:
                if time.monotonic() >= deadline:
                    raise
            time.sleep(self.policy.reboot_poll_s)

    # ---- requests ------------------------------------------------------------------------------------

    def check_admission(self) -> None:
        fatal = self.ladder.fatal
        if fatal is not None:
            raise DeviceFatalError(str(fatal), fatal.cause)

    def guard(self, job: Job) -> tuple[Job, str]:
        """Wrap a chat/generate job (see the module docstring); returns it with its request id."""
        self.check_admission()
        request_id = new_request_id()
        submitted = time.monotonic()

        def guarded(cancel: CancelToken) -> Iterator[Chunk]:
            set_request_id(request_id)
            self._current, self._current_id = cancel, request_id
            try:
                yield from self._run(job, cancel, request_id, submitted)
            except GeneratorExit:  # the worker stopped the job: consumer gone, deadline, shutdown
                log.info("request ended: %s", cancel.reason or "stopped by the worker",
                         extra={"request_id": request_id, "error": "cancelled"})
                raise
            except Exception as exc:
                # strings only: a record holding the exception would keep its frames (and the model) alive
                cancelled = isinstance(exc, SchedulerError) and not isinstance(exc, HangCancelled)
                log.log(logging.INFO if cancelled else logging.WARNING, "request %s: %s: %s",
                        "ended" if cancelled else "failed", type(exc).__name__, str(exc),
                        extra={"request_id": request_id, "error": type(exc).__name__})
                metrics().request_failed("request", exc)
                raise
            finally:
                self._current = self._current_id = None
                set_request_id(None)

        return guarded, request_id

    def _run(self, job: Job, cancel: CancelToken, request_id: str, submitted: float) -> Iterator[Chunk]:
        self.monitor.wait_until_cool(cancel, submitted)
        self.check_admission()
        started = time.monotonic()
        retries = 0
        while True:
            emitted = 0
            try:
                for chunk in job(cancel):
                    emitted += 1
                    if chunk.get("done"):
                        self._log_done(chunk, request_id, (started - submitted) * 1e3)
                    yield chunk
                self.ladder.note_success()
                self.monitor.device_answered()
                return
            except DeviceError as exc:
                if getattr(exc, "_ax_load_failure", False):
                    raise
                with lifecycle.critical_section("recovering the card"):
                    rung = self.ladder.recover(exc)
                metrics().recovery(rung.name.lower())
                if emitted:
                    exc.add_note(f"the card was recovered ({rung.name.lower()}), but this request had already "
                                 f"streamed {emitted} chunk(s), so it was not re-run: send it again")
                    raise
                cancel.check()  # cut off meanwhile (a hang, its deadline): report that
                retries += 1
                if retries > self.policy.request_retries:
                    exc.add_note(f"the request failed {retries} times, each followed by a recovery")
                    raise
                log.warning("request %s: running it again after the recovery (nothing was streamed yet)",
                            request_id)

    def _log_done(self, chunk: Chunk, request_id: str, queued_ms: float) -> None:
        endpoint = "chat" if "message" in chunk else "generate"
        fields = request_fields(chunk, endpoint, request_id, queued_ms)
        reading = self.monitor.reading if self.card_backend else None
        fields["device_temp_c"] = reading.temperature_c if reading else None
        fields["device_cmm_free_mb"] = reading.cmm_free_mb if reading else None
        log.info("request done: %s %s, %d prompt + %d generated tokens in %.0f ms", endpoint, fields["model"],
                 fields["prompt_eval_count"] or 0, fields["eval_count"] or 0, fields["total_ms"], extra=fields)
        metrics().request_done(fields)

    def close(self, timeout: float | None, cancel_running: bool) -> None:
        """Stop the monitor and the worker (a load in progress finishes first), unload, finalize, unlock."""
        if self.monitor.hung:  # an execute that does not return will not return for close() either
            timeout = 5.0 if timeout is None else min(timeout, 5.0)
        self.monitor.stop()
        worker = self.engine._worker
        stopped = worker.shutdown(wait=True, timeout=timeout, cancel_running=cancel_running)
        if stopped:
            from ..embedder import unload_embedders

            names = self._close_models()
            unload_embedders(self.engine)
            if names or self.card_backend:
                log.info("engine closed: %s unloaded, device finalized", ", ".join(names) or "no model")
        else:
            log.error("the device worker did not stop within %s s (an execute that never returns?): the models "
                      "were not unloaded; if the card misbehaves after this, reboot it (`axcl-smi reboot -d 0`)",
                      timeout)
        if self.lock is not None:
            self.lock.release()


__all__ = ["Supervisor", "new_request_id"]
