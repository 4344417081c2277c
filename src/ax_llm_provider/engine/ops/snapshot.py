"""`engine.health()` as a pure function of what the supervisor, the monitor and the worker hold now."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .health import DeviceReading, HealthConfig, HealthSnapshot


@dataclass(frozen=True)
class EngineState:
    """The inputs of one snapshot, read by the caller (Supervisor.health) in one go."""

    closed: bool
    fatal: bool
    recovering: bool
    loading: str | None
    hung: bool
    paused: bool
    device: str  # "card N", "simulated card N" or "cpu"
    models: list[str]
    backends: set[str]
    reading: DeviceReading | None  # the monitor's last read (None: none yet, or not on a card)
    queued: int
    running: str | None
    recoveries: dict[str, int]
    last_error: str | None
    watchdog: dict[str, Any]
    degraded: dict[str, Any] | None = None  # degraded mode's status (ops/degraded.py); None: not configured


def _state(s: EngineState, online: bool | None, warnings: list[str]) -> str:
    """The one-word state, most serious first."""
    checks = (
        (s.closed, "closed"), (bool(s.degraded and s.degraded["active"]), "degraded"), (s.fatal, "failed"),
        (s.recovering, "recovering"), (bool(s.loading), "loading"),
        (s.hung, "hung"), (online is False, "offline"), (s.paused, "paused"), (bool(warnings), "warn"),
        (not s.models, "idle"),
    )
    return next((name for hit, name in checks if hit), "ok")


def _warnings(reading: DeviceReading | None, config: HealthConfig) -> list[str]:
    warnings: list[str] = []
    temp = reading.temperature_c if reading else None
    if temp is not None and temp >= config.temp_warn_c:
        warnings.append(f"card at {temp:.0f} °C (warn {config.temp_warn_c:.0f}, pause {config.temp_pause_c:.0f})")
    if reading and reading.cmm_free_mb is not None and reading.cmm_free_mb < config.cmm_floor_mb:
        warnings.append(f"only {reading.cmm_free_mb:.0f} MB of CMM free (floor {config.cmm_floor_mb} MB)")
    if reading and reading.error:
        warnings.append(reading.error)
    return warnings


def health_snapshot(s: EngineState, config: HealthConfig, host: dict[str, Any]) -> HealthSnapshot:
    on_card = s.device != "cpu"
    reading = s.reading if on_card and s.models else None
    warnings = _warnings(reading, config)
    online = (reading.online if reading else None) if on_card else True
    used = (round(reading.cmm_total_mb - reading.cmm_free_mb, 1)
            if reading and reading.cmm_total_mb is not None and reading.cmm_free_mb is not None else None)
    return HealthSnapshot(
        state=_state(s, online, warnings), device=s.device, backend=",".join(sorted(s.backends)) or None,
        online=online, temperature_c=reading.temperature_c if reading else None,
        cmm_total_mb=reading.cmm_total_mb if reading else None, cmm_used_mb=used,
        cmm_free_mb=reading.cmm_free_mb if reading else None,
        npu_load_percent=reading.npu_load_percent if reading else None,
        device_cpu_load_percent=reading.cpu_load_percent if reading else None,
        paused=s.paused, warnings=warnings, models=s.models, loading=s.loading, queue=s.queued,
        running=s.running, recoveries=dict(s.recoveries), last_error=s.last_error,
        read_at=reading.at if reading else None, read_ms=reading.read_ms if reading else None,
        host=host, watchdog=s.watchdog, degraded=s.degraded,
    )
