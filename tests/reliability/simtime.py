"""Simulated time for the day soak: a Clock whose time jumps over idle gaps, a card that heats and cools
with it, and a card that can drop off the bus and come back.

Real time still passes at its own rate (so execute timeouts and thermal waits behave as they do on the
device), and `advance()` jumps over the minutes between two visitors; keep_alive timers fire when the
jump passes them. A wait inside the engine (the reboot's polls) advances simulated time instead of
sleeping, so a card that needs 40 s to answer again costs no wall time.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ax_llm_provider.engine.clock import Clock
from ax_llm_provider.runtime.simcard import SimCard
from ax_llm_provider.runtime.simcard.faults import Counters


@dataclass
class _Timer:
    at: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class SimTime:
    """Monotonic seconds = the real monotonic clock plus every jump so far."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offset = 0.0
        self._epoch = time.time() - time.monotonic()
        self._timers: list[_Timer] = []
        self.start = self.monotonic()

    def monotonic(self) -> float:
        return time.monotonic() + self._offset

    def wall(self) -> float:
        return self._epoch + self.monotonic()

    def elapsed(self) -> float:
        return self.monotonic() - self.start

    def timer(self, delay: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(self.monotonic() + delay, callback)
        with self._lock:
            self._timers.append(timer)
        return timer

    def advance(self, seconds: float) -> list[threading.Thread]:
        """Jump ahead; due timers run each on its own thread (as threading.Timer's do), returned for joining."""
        with self._lock:
            self._offset += seconds
            now = self.monotonic()
            due = [t for t in self._timers if t.at <= now]
            self._timers = [t for t in self._timers if t.at > now and not t.cancelled]
        threads = [threading.Thread(target=t.callback, name="sim-timer", daemon=True) for t in due if not t.cancelled]
        for thread in threads:
            thread.start()
        return threads

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)
        time.sleep(0)  # let the threads just started run

    def clock(self) -> Clock:
        return Clock(monotonic=self.monotonic, wall=self.wall, sleep=self.sleep, timer=self.timer)


@dataclass
class Thermal:
    """Junction temperature: relaxes towards its target with time constant `tau_s`, each execute adds heat.

    The target is the idle temperature, or `stall_c` while the fan is stalled (a hot afternoon, a blocked
    vent): the card climbs past the pause threshold, then cools once the stall ends."""

    time: SimTime
    idle_c: float = 41.0
    stall_c: float = 95.0
    tau_s: float = 120.0
    heat_per_execute_c: float = 0.002
    stalls: list[tuple[float, float]] = field(default_factory=list)  # (start, end) in seconds since time.start
    temperature_c: float = 41.0
    max_c: float = 41.0
    _at: float | None = None
    _executes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def stalled(self, elapsed: float) -> bool:
        return any(start <= elapsed < end for start, end in self.stalls)

    def __call__(self, counters: Counters) -> int:  # the SimCard's Faults.temperature_mc hook
        with self._lock:
            now = self.time.monotonic()
            dt = 0.0 if self._at is None else max(0.0, now - self._at)
            target = self.stall_c if self.stalled(now - self.time.start) else self.idle_c
            heat = (counters.executes - self._executes) * self.heat_per_execute_c
            self.temperature_c = target + (self.temperature_c - target) * math.exp(-dt / self.tau_s) + heat
            self._at, self._executes = now, counters.executes
            self.max_c = max(self.max_c, self.temperature_c)
            return int(self.temperature_c * 1000)


class LosableCard(SimCard):
    """A simulated card that can drop off the bus for a while: every call fails as offline, a firmware
    reboot does not bring it back early, and it answers again (its state gone) `seconds` later."""

    def __init__(self, time: SimTime, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.time = time
        self.back_at: float | None = None
        self.losses = 0

    def lose(self, seconds: float) -> None:
        self.losses += 1
        self.back_at = self.time.monotonic() + seconds
        self.faults.go_offline()
        self.time.timer(seconds, self.come_back)

    def come_back(self) -> None:
        self.back_at = None
        super().reboot()

    def reboot(self) -> None:
        if self.back_at is not None and self.time.monotonic() < self.back_at:
            return  # still gone: the reboot request reaches nothing
        self.faults.limit_cmm(None)  # a reboot frees what leaked processes held
        super().reboot()
