"""The engine's sources of time in one object, so a soak can run a day of simulated time in minutes.

Production uses `SYSTEM_CLOCK` (the time module and threading.Timer). A test passes its own `Clock`
to `Engine(clock=...)`: keep_alive timers, the health monitor's read period and hang watch, the thermal
wait, the recovery ladder's window and the reboot wait then all read the same simulated time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class Cancellable(Protocol):
    def cancel(self) -> None: ...


def start_timer(delay: float, callback: Callable[[], None]) -> Cancellable:
    """Run `callback` on its own daemon thread after `delay` seconds, as threading.Timer does."""
    timer = threading.Timer(delay, callback)
    timer.daemon = True
    timer.start()
    return timer


@dataclass(frozen=True)
class Clock:
    monotonic: Callable[[], float] = time.monotonic  # deadlines, periods, windows
    wall: Callable[[], float] = time.time  # what is shown (a model's expires_at)
    sleep: Callable[[float], None] = time.sleep  # waits between polls of a rebooting card
    timer: Callable[[float, Callable[[], None]], Cancellable] = start_timer  # keep_alive expiry


SYSTEM_CLOCK = Clock()

__all__ = ["SYSTEM_CLOCK", "Cancellable", "Clock", "start_timer"]
