"""Engine(clock=...): keep_alive, the thermal pause and the recovery window read the clock they are given.

The day soak (tests/reliability/test_day_soak.py) runs simulated hours through this seam; these check
each reader on its own, with a clock that only moves when told to.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ax_llm_provider.engine.clock import Clock
from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.engine.ops.health import HealthConfig
from ax_llm_provider.engine.ops.recovery import RecoveryLadder, RecoveryPolicy
from ax_llm_provider.model.store import ModelStore
from ax_llm_provider.runtime.errors import DeviceError
from ax_llm_provider.runtime.simcard import SimCard

HEALTH = HealthConfig(period_s=0.02, thermal_wait_s=0.5, temp_warn_c=70, temp_pause_c=85, temp_resume_c=75,
                      cmm_floor_mb=0)


class ManualClock:
    """Time that moves only by `advance`; timers run (on the caller's thread) when it passes them."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: list[list[Any]] = []

    def timer(self, delay: float, callback: Callable[[], None]) -> Any:
        entry: list[Any] = [self.now + delay, callback, False]
        self.timers.append(entry)

        class Handle:
            def cancel(self) -> None:
                entry[2] = True

        return Handle()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for entry in [t for t in self.timers if t[0] <= self.now and not t[2]]:
            self.timers.remove(entry)
            entry[1]()

    def clock(self) -> Clock:
        return Clock(monotonic=lambda: self.now, wall=lambda: self.now, sleep=self.advance, timer=self.timer)


def until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def chat(engine: Engine, model: str, **body: Any) -> dict[str, Any]:
    return list(engine.chat({"model": model, "messages": [{"role": "user", "content": "hello"}],
                             "options": {"num_predict": 2, "temperature": 0}, **body}))[-1]


def test_keep_alive_expires_on_the_given_clock(tmp_path: Path, tiny_twin: Callable[..., Path]) -> None:
    manual = ManualClock()
    model = str(tiny_twin("llama"))
    with Engine(ModelStore(tmp_path), backend="onnx", auto_pull=False, clock=manual.clock()) as engine:
        chat(engine, model, keep_alive="10m")
        [(name, entry)] = engine.slots.entries()
        assert entry.expires_at == manual.now + 600
        manual.advance(599)
        assert engine.slots.names() == [name]
        manual.advance(2)  # ten simulated minutes: unloaded, without waiting ten real ones
        assert engine.slots.names() == []


def test_recovery_window_is_measured_on_the_given_clock() -> None:
    manual = ManualClock()
    ladder = RecoveryLadder(RecoveryPolicy(max_recoveries=2, window_s=600), lambda: None, lambda: None,
                            clock=lambda: manual.now)
    for _ in range(2):
        ladder.recover(DeviceError(-1, "axcl.rt.engine_execute", "injected"))
        ladder.note_success()
        manual.advance(400)  # two recoveries 400 s apart, then a third: the first has left the window
    ladder.recover(DeviceError(-1, "axcl.rt.engine_execute", "injected"))
    assert ladder.fatal is None and ladder.counts["reset"] == 3


def test_a_thermal_pause_ends_when_no_model_is_left_to_read(tmp_path: Path, tiny_twin: Callable[..., Path]) -> None:
    """Paused while hot, then the model is unloaded (keep_alive, a failed reload): nothing reads the card any
    more, so the pause must not outlive it, or every later request fails as overheated for ever."""
    temperature = [41.0]
    card = SimCard()
    card.faults.temperature_mc = lambda counters: int(temperature[0] * 1000)
    model = str(tiny_twin("llama"))
    with Engine(ModelStore(tmp_path), backend="simulated", card=card, auto_pull=False, keep_alive=-1,
                health=HEALTH) as engine:
        chat(engine, model)
        temperature[0] = 95.0
        assert until(lambda: engine.health().paused)
        engine.unload(model)
        temperature[0] = 41.0
        assert until(lambda: not engine.health().paused)
        assert chat(engine, model)["done"]
        temperature[0] = 95.0  # hot again after the reload: the reads pause new work again
        assert until(lambda: engine.health().paused)
