"""Device health: a monitor thread that reads the card, watches for a hung execute, applies the thermal
policy and feeds systemd's watchdog; `HealthSnapshot` is what `engine.health()` returns.

Why a thread of its own, not the device worker (docs/health.md): `axclrtGetDeviceProperties` (the only
source of temperature, CMM and load in the V3.x runtime; pyaxcl has no wrapper, so ctypes) activates the
device on the *calling* thread, runs several shell commands on the card with 1 s timeouts each and resets
the device again. That is far too slow to sit between two engine calls on the worker, and it binds and
unbinds only the caller's context, so a separate thread leaves the worker's context alone. A hung worker
could not report its own hang either. The read is skipped while the engine loads, unloads or recovers
(the runtime is being torn down then), and the card is read only while a model holds it open.
`axclrtRegisterDeviceStatusCallback` is absent from the V3.10.2 runtime, so "offline" is found by polling:
a read that fails with an offline code twice in a row.

Policies (thresholds are ours: AXERA publishes no throttle temperature; idle is 37-41 °C):
* temperature >= warn: a warning (once per crossing); >= pause: new requests wait (at most
  `thermal_wait_s` from their submission, then DeviceOverheatedError) until it is <= resume; a running
  generation finishes (num_predict bounds it).
* free CMM below the floor: a warning; a load that would overflow is refused by the axcl backend's
  budget check with the numbers (runtime/axcl_backend.py `_require_cmm`).
* an execute running longer than `execute_timeout_s`: the request in flight fails with DeviceTimeoutError
  at once; after `hang_reboot_s` the card is rebooted from this thread (the only way to unblock the
  runtime); after `hang_fatal_s` the engine is declared lost (DeviceFatalError).
* WATCHDOG=1 goes to systemd only while the device answers (a read, an execute or a load step within
  `stale_s`), nothing hangs and the engine is not lost: a wedged process is restarted by systemd.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ...process import sd_notify, watchdog_interval
from ...runtime.errors import DeviceError, DeviceOfflineError
from ..errors import EngineBusyError
from ..worker.scheduler import CancelToken
from .recovery import DeviceActivity

log = logging.getLogger(__name__)


class DeviceOverheatedError(EngineBusyError):
    """The card is above the pause temperature and did not cool down in time for this request."""


def _env_float(name: str, default: float | None) -> float | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("none", "off"):
        return None
    return float(raw)


@dataclass(frozen=True)
class HealthConfig:
    period_s: float = 5.0  # device read period; 0 turns device reads off (the hang watch stays)
    temp_warn_c: float = 75.0
    temp_pause_c: float = 85.0
    temp_resume_c: float = 75.0
    thermal_wait_s: float = 5.0
    cmm_floor_mb: int = 128  # CMM that must stay free after a load (and below which health warns)
    execute_timeout_s: float = 10.0  # one engine_execute; normal ones take milliseconds
    hang_reboot_s: float | None = 60.0
    hang_fatal_s: float | None = 180.0
    stale_s: float = 60.0
    offline_reads: int = 2  # consecutive offline reads that mean offline
    watchdog: bool = True

    def __post_init__(self) -> None:
        if not self.temp_resume_c < self.temp_pause_c or self.temp_warn_c > self.temp_pause_c:
            raise ValueError(f"need warn <= pause and resume < pause, got {self.temp_warn_c}, "
                             f"{self.temp_pause_c} and {self.temp_resume_c}")
        if self.execute_timeout_s <= 0 or self.period_s < 0 or self.offline_reads < 1:
            raise ValueError(f"invalid health config {self}")

    @classmethod
    def from_env(cls, **overrides: Any) -> HealthConfig:
        """AX_LLM_HEALTH_PERIOD, AX_LLM_TEMP_WARN/PAUSE/RESUME, AX_LLM_THERMAL_WAIT, AX_LLM_CMM_FLOOR_MB,
        AX_LLM_EXECUTE_TIMEOUT, AX_LLM_HANG_REBOOT, AX_LLM_HANG_FATAL ("off" disables those two)."""
        d = cls()
        values: dict[str, Any] = {
            "period_s": _env_float("AX_LLM_HEALTH_PERIOD", d.period_s),
            "temp_warn_c": _env_float("AX_LLM_TEMP_WARN", d.temp_warn_c),
            "temp_pause_c": _env_float("AX_LLM_TEMP_PAUSE", d.temp_pause_c),
            "temp_resume_c": _env_float("AX_LLM_TEMP_RESUME", d.temp_resume_c),
            "thermal_wait_s": _env_float("AX_LLM_THERMAL_WAIT", d.thermal_wait_s),
            "cmm_floor_mb": int(_env_float("AX_LLM_CMM_FLOOR_MB", d.cmm_floor_mb) or 0),
            "execute_timeout_s": _env_float("AX_LLM_EXECUTE_TIMEOUT", d.execute_timeout_s),
            "hang_reboot_s": _env_float("AX_LLM_HANG_REBOOT", d.hang_reboot_s),
            "hang_fatal_s": _env_float("AX_LLM_HANG_FATAL", d.hang_fatal_s),
        }
        return cls(**{**values, **overrides})


@dataclass(frozen=True)
class DeviceReading:
    """One read of the card (all None for the CPU)."""

    online: bool
    temperature_c: float | None = None
    cmm_total_mb: float | None = None
    cmm_free_mb: float | None = None
    npu_load_percent: float | None = None
    cpu_load_percent: float | None = None
    sw_version: str | None = None
    error: str | None = None
    read_ms: float = 0.0
    at: float = field(default_factory=time.time)


class HealthHooks(Protocol):
    """What the monitor asks of the engine (engine/ops/supervisor.py implements it)."""

    activity: DeviceActivity

    def probe(self) -> DeviceReading | None: ...  # None: nothing to read now (CPU, no model open, busy)

    def on_hang(self, stuck_s: float) -> None: ...

    def on_hang_reboot(self, stuck_s: float) -> None: ...

    def on_hang_fatal(self, stuck_s: float) -> None: ...

    def on_offline(self, reading: DeviceReading) -> None: ...

    def alive(self) -> bool: ...  # the worker runs and the engine is not lost

    def last_progress(self) -> float: ...  # monotonic time of the last load step


def host_figures() -> dict[str, Any]:
    """The Pi's own health: RSS of this process, available memory, load, SoC temperature."""
    out: dict[str, Any] = {"rss_mb": None, "mem_available_mb": None, "load_1m": None, "cpu_temp_c": None}
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        out["rss_mb"] = round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                out["mem_available_mb"] = round(int(line.split()[1]) / 1024, 1)
                break
        out["load_1m"] = round(os.getloadavg()[0], 2)
    except (OSError, ValueError, IndexError):
        pass
    with contextlib.suppress(OSError, ValueError):
        out["cpu_temp_c"] = int(Path("/sys/class/thermal/thermal_zone0/temp").read_text()) / 1000
    return out


@dataclass
class HealthSnapshot:
    """engine.health(): one consistent picture. `state` is the summary an operator looks at first."""

    state: str  # ok, warn, paused, loading, recovering, hung, offline, degraded, failed, idle, closed
    device: str  # "cpu", "card 0", "simulated card 0"
    backend: str | None
    online: bool | None
    temperature_c: float | None
    cmm_total_mb: float | None
    cmm_used_mb: float | None
    cmm_free_mb: float | None
    npu_load_percent: float | None
    device_cpu_load_percent: float | None
    paused: bool
    warnings: list[str]
    models: list[str]
    loading: str | None
    queue: int
    running: str | None
    recoveries: dict[str, int]
    last_error: str | None
    read_at: float | None
    read_ms: float | None
    host: dict[str, Any]
    watchdog: dict[str, Any]
    degraded: dict[str, Any] | None = None  # degraded mode (engine/ops/degraded.py); None: not configured

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def ok(self) -> bool:
        return self.state in ("ok", "warn", "idle", "loading")


class HealthMonitor:
    """The monitor thread (see the module docstring). `stop()` joins it."""

    def __init__(self, hooks: HealthHooks, config: HealthConfig, name: str = "ax-llm-health", *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """clock: the monotonic clock the policies read (tests pass a fake one and call `tick`)."""
        self.hooks, self.config, self.clock = hooks, config, clock
        self.reading: DeviceReading | None = None
        self.paused = False
        self._cool = threading.Event()
        self._cool.set()
        self._warned = False
        self._offline_reads = 0
        self._hang_since: float | None = None  # busy_since of the execute already reported as hung
        self._hang_steps: set[str] = set()
        self._last_ping = 0.0
        self.pings = 0
        self.watchdog_s = watchdog_interval() if config.watchdog else None
        self._stop = threading.Event()
        self._tick = max(0.01, min(0.25, config.execute_timeout_s / 4,
                                   config.period_s if config.period_s > 0 else 0.25,
                                   self.watchdog_s / 4 if self.watchdog_s else 0.25))
        self._next_read: float | None = None  # None: read at the next tick
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> HealthMonitor:
        self._next_read = self.clock() + min(self._tick, self.config.period_s or self._tick)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        self._cool.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def device_answered(self) -> None:
        """The device just worked (a request, a recovery): forget an offline reading until the next read."""
        self.hooks.activity.answered()
        self._offline_reads = 0
        if self.reading is not None and not self.reading.online:
            self.reading = None

    def nothing_to_read(self) -> None:
        """No model holds the card open, so it is not read: a pause taken earlier could never end (every request
        would fail as overheated for ever). It ends here; the first read after the next load applies it again."""
        if self.paused:
            self.paused = False
            self._cool.set()
            log.warning("the thermal pause ends: no model is open on the card, so its temperature is not read; "
                        "the first read after the next load pauses again if it is still hot")

    @property
    def hung(self) -> bool:
        # Live, not as of the last tick: once the flagged execute returned, the card is no longer hung.
        return self._hang_since is not None and self.hooks.activity.busy_since == self._hang_since

    # -- the loop ---------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.wait(self._tick):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 -- the monitor must outlive any bug in one tick
                log.exception("health monitor tick failed")

    def tick(self) -> None:
        """One pass: the hang watch, a device read when one is due, the watchdog (the thread calls this)."""
        now = self.clock()
        self._watch_execute(now)
        if self.config.period_s > 0 and (self._next_read is None or now >= self._next_read):
            self._next_read = now + self.config.period_s
            self.read_now()
        self._feed_watchdog(self.clock())

    def read_now(self) -> DeviceReading | None:
        """Read the card once and apply the policies (the loop calls this every period)."""
        reading = self.hooks.probe()
        if reading is None:
            self._offline_reads = 0
            return None
        self.reading = reading
        if not reading.online:
            self._offline_reads += 1
            if self._offline_reads == self.config.offline_reads:
                log.error("the card does not answer: %s", reading.error)
                self.hooks.on_offline(reading)
            return reading
        self._offline_reads = 0
        if reading.error is None:
            self.hooks.activity.answered()
        self._thermal(reading.temperature_c)
        return reading

    def _thermal(self, temp: float | None) -> None:
        c = self.config
        if temp is None:
            return
        if temp >= c.temp_pause_c and not self.paused:
            self.paused = True
            self._cool.clear()
            log.error("card at %.1f °C >= %.0f °C: pausing new requests until it cools to %.0f °C",
                      temp, c.temp_pause_c, c.temp_resume_c)
            sd_notify(f"STATUS=paused: card at {temp:.0f} C")
        elif self.paused and temp <= c.temp_resume_c:
            self.paused = False
            self._cool.set()
            log.warning("card cooled to %.1f °C: serving requests again", temp)
            sd_notify(f"STATUS=serving (card at {temp:.0f} C)")
        if temp >= c.temp_warn_c and not self._warned:
            self._warned = True
            log.warning("card at %.1f °C (warning threshold %.0f °C): check its cooling", temp, c.temp_warn_c)
        elif temp < c.temp_warn_c - 2:
            self._warned = False

    def _watch_execute(self, now: float) -> None:
        activity = self.hooks.activity
        since = activity.busy_since
        if since is None:
            if self._hang_since is not None:
                log.warning("the hung execute returned")
            self._hang_since = None
            self._hang_steps.clear()
            return
        stuck = now - since
        c = self.config
        if stuck < c.execute_timeout_s:
            return
        if self._hang_since != since:
            self._hang_since, self._hang_steps = since, set()
        if "cancel" not in self._hang_steps:
            self._hang_steps.add("cancel")
            log.error("an NPU execute has run for %.1f s (timeout %.1f s): the card looks hung", stuck,
                      c.execute_timeout_s)
            self.hooks.on_hang(stuck)
        if c.hang_reboot_s is not None and stuck >= c.hang_reboot_s and "reboot" not in self._hang_steps:
            self._hang_steps.add("reboot")
            self.hooks.on_hang_reboot(stuck)
        if c.hang_fatal_s is not None and stuck >= c.hang_fatal_s and "fatal" not in self._hang_steps:
            self._hang_steps.add("fatal")
            self.hooks.on_hang_fatal(stuck)

    def live(self, now: float | None = None) -> bool:
        """What the watchdog reports: the device answers, nothing hangs, the engine is not lost."""
        now = self.clock() if now is None else now
        if self.hung or not self.hooks.alive():
            return False
        if self.reading is not None and not self.reading.online:
            return False
        if self.config.period_s <= 0 or self.reading is None:
            return True  # no device reads (CPU, reads off, nothing open): liveness is "nothing hangs"
        last = max(self.hooks.activity.last_answer, self.hooks.last_progress())
        return now - last <= max(self.config.stale_s, 3 * self.config.period_s)

    def _feed_watchdog(self, now: float) -> None:
        if not self.watchdog_s or now - self._last_ping < self.watchdog_s / 3:
            return
        if self.live(now):
            if sd_notify("WATCHDOG=1"):
                self.pings += 1
            self._last_ping = now

    # -- the thermal gate (device thread) ----------------------------------------------------------------

    def wait_until_cool(self, cancel: CancelToken, submitted_at: float,
                        on_wait: Callable[[], None] | None = None) -> None:
        """Block new work while paused: at most thermal_wait_s from submission, and never past the deadline."""
        if not self.paused:
            return
        c = self.config
        deadline = submitted_at + c.thermal_wait_s
        if on_wait is not None:
            on_wait()
        while self.paused and not self._stop.is_set():
            cancel.check()
            left = deadline - self.clock()
            if left <= 0:
                temp = self.reading.temperature_c if self.reading else None
                shown = f"{temp:.0f} °C" if temp is not None else "too hot"
                raise DeviceOverheatedError(
                    f"the NPU card is at {shown}, above the pause threshold {c.temp_pause_c:.0f} °C: new "
                    f"requests wait until it cools to {c.temp_resume_c:.0f} °C, and this one waited "
                    f"{c.thermal_wait_s:g} s. Improve the card's cooling (heatsink, fan, airflow) or retry later")
            remaining = cancel.remaining()
            self._cool.wait(min(left, 0.1, remaining if remaining is not None else 0.1))


def reading_from_properties(props: Any, started: float) -> DeviceReading:
    """A DeviceReading from runtime/axcl_props.DeviceProperties."""
    return DeviceReading(
        online=True, temperature_c=props.temperature_c, cmm_total_mb=round(props.total_cmm_kb / 1024, 1),
        cmm_free_mb=round(props.free_cmm_kb / 1024, 1), npu_load_percent=props.npu_load_percent,
        cpu_load_percent=props.cpu_load_percent, sw_version=props.sw_version,
        read_ms=round((time.perf_counter() - started) * 1e3, 2))


def offline_reading(exc: DeviceError, started: float) -> DeviceReading:
    return DeviceReading(online=not isinstance(exc, DeviceOfflineError), error=str(exc),
                         read_ms=round((time.perf_counter() - started) * 1e3, 2))


__all__ = ["DeviceOverheatedError", "DeviceReading", "HealthConfig", "HealthMonitor", "HealthSnapshot",
           "host_figures", "offline_reading", "reading_from_properties"]
