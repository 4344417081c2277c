"""The health monitor's hooks and the health snapshot, as part of the Supervisor (see supervisor.py).

Everything here runs on the monitor thread (hooks) or on any caller's thread (health), reading the
state the Supervisor keeps: the device id, the recovery ladder, the current request's cancel token.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ... import process as lifecycle
from ...observability import metrics
from ...runtime import axcl_codes as codes
from ...runtime.axcl_props import get_device_properties, reboot_device
from ...runtime.errors import DeviceError, DeviceOfflineError, DeviceTimeoutError
from ..worker.scheduler import CancelToken, RequestStream
from .health import DeviceReading, HealthSnapshot, host_figures, offline_reading, reading_from_properties
from .recovery import HangCancelled

if TYPE_CHECKING:
    from ..engine import Engine
    from .health import HealthConfig, HealthMonitor
    from .recovery import RecoveryLadder

log = logging.getLogger("ax_llm_provider.engine.ops.supervisor")


class MonitorHooks:
    """Mixed into Supervisor: what HealthMonitor calls, and `health()`. The state is the Supervisor's."""

    engine: Engine
    config: HealthConfig
    ladder: RecoveryLadder
    monitor: HealthMonitor
    device_id: int | None
    card_backend: str | None
    loading: str | None
    _current: CancelToken | None
    _current_id: str | None
    _mutex: threading.RLock
    _progress_at: float
    _idle_recovery: RequestStream[Any] | None
    _idle_recovery_queued: bool

    def lib_rt(self) -> Any:
        raise NotImplementedError  # provided by Supervisor

    def _read_card(self) -> DeviceReading:
        started = time.perf_counter()
        assert self.device_id is not None
        try:
            props = get_device_properties(self.lib_rt(), self.device_id)
        except DeviceError as exc:
            return offline_reading(exc, started)
        return reading_from_properties(props, started)

    def probe(self) -> DeviceReading | None:
        if self.card_backend is None or self.device_id is None or not self.engine._models:
            return None
        if not self._mutex.acquire(blocking=False):
            return None  # a load, unload or reboot is under way
        try:
            reading = self._read_card()
        finally:
            self._mutex.release()
        metrics().device(reading)
        return reading

    def on_hang(self, stuck_s: float) -> None:
        token, request_id = self._current, self._current_id
        if token is None:
            return
        token._cancel(HangCancelled, (
            f"request {request_id}: the NPU has not finished an execute for {stuck_s:.1f} s (execute timeout "
            f"{self.config.execute_timeout_s:g} s): the card looks hung. It is being reset and the model "
            "reloaded; send the request again in a moment"))

    def on_hang_reboot(self, stuck_s: float) -> None:
        if self.device_id is None or self.card_backend is None:
            return
        log.error("an execute has hung for %.0f s: rebooting the card from the monitor thread", stuck_s)
        try:
            reboot_device(self.lib_rt(), self.device_id)
            self.ladder.counts["reboot"] += 1
        except DeviceError as exc:
            log.error("rebooting the hung card failed: %s", str(exc))

    def on_hang_fatal(self, stuck_s: float) -> None:
        error = DeviceTimeoutError(codes.signed(codes.ERR_ENGINE_TIMEOUT), "axcl.rt.engine_execute",
                                   f"no answer for {stuck_s:.0f} s")
        self.ladder.give_up(error, f"an execute has not returned for {stuck_s:.0f} s, even after a reboot")
        lifecycle.sd_notify("STATUS=failed: the NPU card hangs")
        self.engine._worker.shutdown(wait=False, cancel_running=True)  # queued requests fail now

    def on_offline(self, reading: DeviceReading) -> None:
        if self.ladder.active or self.loading or self.ladder.fatal or self._idle_recovery_queued:
            return
        self._idle_recovery_queued = True

        def recover_if_still_offline(cancel: CancelToken) -> Iterator[None]:
            self._idle_recovery_queued = False
            with self._mutex:
                still = self.card_backend is not None and self.device_id is not None and self.engine._models
                now = self._read_card() if still else None
            if now is not None and not now.online:
                error = DeviceOfflineError(codes.signed(codes.ERR_DEVICE_NO_CONNECT), "axclrtGetDeviceProperties",
                                           now.error or "")
                with lifecycle.critical_section("recovering the card"):
                    rung = self.ladder.recover(error, where="idle")
                metrics().recovery(rung.name.lower())
            yield None

        try:
            self._idle_recovery = self.engine._worker.submit(recover_if_still_offline, timeout=None,
                                                             stall_timeout=None, request_id="recovery")
        except Exception as exc:  # noqa: BLE001 -- a stopped or full worker: the next request recovers
            self._idle_recovery_queued = False
            log.warning("could not queue the recovery: %s", str(exc))

    def alive(self) -> bool:
        return self.engine._worker.alive and self.ladder.fatal is None

    def last_progress(self) -> float:
        return self._progress_at

    def device_label(self) -> str:
        backend = self.card_backend or self.engine.backend
        index = self.engine.device
        if backend == "simulated":
            return f"simulated card {index}"
        if backend in ("axcl", "axengine") or (backend == "auto" and self.card_backend):
            return f"card {index}"
        with self.engine._lock:
            entries = list(self.engine._models.values())
        if backend == "onnx" or any(e.runner.model.backend == "onnx" for e in entries):
            return "cpu"
        return f"card {index}" if backend == "auto" and entries else "cpu"

    def health(self) -> HealthSnapshot:
        engine, monitor, config = self.engine, self.monitor, self.config
        with engine._lock:
            models = list(engine._models)
            backends = {e.runner.model.backend for e in engine._models.values()}
        device = self.device_label()
        on_card = device != "cpu"
        reading = monitor.reading if on_card and models else None
        warnings: list[str] = []
        temp = reading.temperature_c if reading else None
        if temp is not None and temp >= config.temp_warn_c:
            warnings.append(f"card at {temp:.0f} °C (warn {config.temp_warn_c:.0f}, pause {config.temp_pause_c:.0f})")
        if reading and reading.cmm_free_mb is not None and reading.cmm_free_mb < config.cmm_floor_mb:
            warnings.append(f"only {reading.cmm_free_mb:.0f} MB of CMM free (floor {config.cmm_floor_mb} MB)")
        if reading and reading.error:
            warnings.append(reading.error)
        online = (reading.online if reading else None) if on_card else True
        state = ("closed" if engine._closed else "failed" if self.ladder.fatal else "recovering" if self.ladder.active
                 else "loading" if self.loading else "hung" if monitor.hung else "offline" if online is False
                 else "paused" if monitor.paused else "warn" if warnings else "idle" if not models else "ok")
        used = (round(reading.cmm_total_mb - reading.cmm_free_mb, 1)
                if reading and reading.cmm_total_mb is not None and reading.cmm_free_mb is not None else None)
        stats = engine._worker.stats()
        return HealthSnapshot(
            state=state, device=device, backend=",".join(sorted(backends)) or None, online=online,
            temperature_c=temp, cmm_total_mb=reading.cmm_total_mb if reading else None, cmm_used_mb=used,
            cmm_free_mb=reading.cmm_free_mb if reading else None,
            npu_load_percent=reading.npu_load_percent if reading else None,
            device_cpu_load_percent=reading.cpu_load_percent if reading else None,
            paused=monitor.paused, warnings=warnings, models=models, loading=self.loading, queue=stats.queued,
            running=stats.running, recoveries=dict(self.ladder.counts), last_error=self.ladder.last_error,
            read_at=reading.at if reading else None, read_ms=reading.read_ms if reading else None,
            host=host_figures(),
            watchdog={"interval_s": monitor.watchdog_s, "pings": monitor.pings, "live": monitor.live()},
        )
