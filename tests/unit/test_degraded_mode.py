"""Degraded mode's switching state machine and prober, driven by a fake clock (no thread, no sleep)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from ax_llm_provider.engine.ops import degraded as degraded_module
from ax_llm_provider.engine.ops.degraded import CardProber, DegradedMode, FallbackConfig
from ax_llm_provider.engine.ops.health import HealthConfig
from ax_llm_provider.engine.ops.snapshot import EngineState, health_snapshot
from ax_llm_provider.engine.responses import mark_degraded


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Probe:
    """Fails with `errors` in turn, then succeeds; counts calls."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)


def mode_with(clock: Clock, interval: float = 10.0) -> DegradedMode:
    return DegradedMode(FallbackConfig("smollm2:135m", probe_interval_s=interval), clock=clock, wall=lambda: 5e8)


def test_the_switches_are_explicit_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    mode = mode_with(Clock())
    caplog.set_level(logging.WARNING, logger="ax_llm_provider.engine.ops.degraded")
    assert not mode.active and mode.status()["active"] is False
    assert mode.enter("card lost") and mode.active
    assert not mode.enter("card lost again")  # already degraded: no second switch, no second line
    assert mode.status() == {"active": True, "fallback_model": "smollm2:135m", "reason": "card lost", "since": 5e8,
                             "probe_interval_s": 10.0, "probes": 0, "last_probe_error": None,
                             "switches": {"to_fallback": 1, "to_card": 0}}
    assert mode.metadata() == {"fallback_model": "smollm2:135m", "reason": "card lost", "since": 5e8}
    assert mode.leave() and not mode.active and not mode.leave()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "degraded mode: the NPU card is lost (card lost)" in warnings[0].getMessage()
    assert "degraded mode ended" in warnings[1].getMessage()
    assert mode.status()["switches"] == {"to_fallback": 1, "to_card": 1}


def test_probes_run_on_schedule_and_a_success_switches_back() -> None:
    clock = Clock()
    mode = mode_with(clock)
    probe = Probe(OSError("still offline"), RuntimeError("load failed"))
    assert not mode.try_card(probe) and probe.calls == 0  # not degraded: nothing to probe
    mode.enter("lost")
    clock.now += 9.9
    assert not mode.try_card(probe) and probe.calls == 0  # not due yet
    clock.now += 0.1
    assert not mode.try_card(probe) and probe.calls == 1 and mode.active
    assert mode.status()["last_probe_error"] == "OSError: still offline" and mode.status()["probes"] == 1
    clock.now += 5
    assert not mode.try_card(probe) and probe.calls == 1  # the next try is one interval after the failure
    clock.now += 5
    assert not mode.try_card(probe) and probe.calls == 2 and mode.active
    clock.now += 10
    assert mode.try_card(probe) and probe.calls == 3 and not mode.active
    clock.now += 100
    assert not mode.try_card(probe) and probe.calls == 3  # back on the card: no more probes


def test_the_prober_switches_back_calls_on_back_and_feeds_the_watchdog_only_while_serving(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    mode = mode_with(clock, interval=30.0)
    pings: list[str] = []
    monkeypatch.setattr(degraded_module, "watchdog_interval", lambda: 9.0)

    def notify(*lines: str) -> bool:
        pings.append(lines[0])
        return True

    monkeypatch.setattr(degraded_module, "sd_notify", notify)
    serving = [True]
    back: list[bool] = []
    probe = Probe(OSError("offline"))
    prober = CardProber(mode, probe, lambda: serving[0], on_back=lambda: back.append(True))
    assert prober.poll_s == 1.0  # min(probe interval, 1 s, watchdog / 3)
    mode.enter("lost")
    assert prober.tick() and pings == ["WATCHDOG=1"]
    clock.now += 2
    assert prober.tick() and len(pings) == 1  # at most one ping per watchdog / 3
    clock.now += 1
    assert prober.tick() and len(pings) == 2
    serving[0] = False  # the fallback's worker died: systemd must see it
    clock.now += 3
    assert prober.tick() and len(pings) == 2
    clock.now += 30
    assert prober.tick() and probe.calls == 1 and mode.active  # the first probe failed
    assert not back
    clock.now += 30
    assert not prober.tick() and probe.calls == 2 and not mode.active and back == [True]


def test_the_fallback_is_configured_by_option_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AX_LLM_FALLBACK_MODEL", raising=False)
    monkeypatch.delenv("AX_LLM_FALLBACK_PROBE_S", raising=False)
    assert FallbackConfig.resolve(None) is None  # off by default
    monkeypatch.setenv("AX_LLM_FALLBACK_MODEL", " smollm2:135m ")
    assert FallbackConfig.resolve(None) == FallbackConfig("smollm2:135m", 30.0)
    assert FallbackConfig.resolve("") is None  # the option wins over the environment
    monkeypatch.setenv("AX_LLM_FALLBACK_PROBE_S", "5")
    assert FallbackConfig.resolve("tiny") == FallbackConfig("tiny", 5.0)
    for bad in ("0", "-1", "nan", "soon"):
        monkeypatch.setenv("AX_LLM_FALLBACK_PROBE_S", bad)
        with pytest.raises(ValueError, match="AX_LLM_FALLBACK_PROBE_S"):
            FallbackConfig.resolve("tiny")


def state(fatal: bool, degraded: dict[str, Any] | None) -> EngineState:
    return EngineState(closed=False, fatal=fatal, recovering=False, loading=None, hung=False, paused=False,
                       device="simulated card 0", models=[], backends=set(), reading=None, queued=0, running=None,
                       recoveries={}, last_error=None, watchdog={}, degraded=degraded)


def test_health_says_degraded_while_the_fallback_serves() -> None:
    mode = mode_with(Clock())
    config, host = HealthConfig(), dict[str, Any]()
    assert health_snapshot(state(True, None), config, host).state == "failed"  # not configured: lost is lost
    assert health_snapshot(state(True, mode.status()), config, host).state == "failed"  # configured, not active
    mode.enter("lost")
    snapshot = health_snapshot(state(True, mode.status()), config, host)
    assert snapshot.state == "degraded" and snapshot.to_dict()["degraded"]["fallback_model"] == "smollm2:135m"
    assert health_snapshot(state(False, None), config, host).to_dict()["degraded"] is None


def test_a_final_chunk_from_the_fallback_carries_ax_degraded() -> None:
    chunk: dict[str, Any] = {"model": "m", "done": True, "ax": {"backend": "onnx"}}
    marked = mark_degraded(chunk, {"fallback_model": "f", "reason": "r", "since": 1.0})
    assert marked["ax"] == {"backend": "onnx", "degraded": {"fallback_model": "f", "reason": "r", "since": 1.0}}
    assert "degraded" not in chunk["ax"]  # the engine's own chunk is not changed in place
    assert mark_degraded({"done": True}, {"fallback_model": "f"})["ax"] == {"degraded": {"fallback_model": "f"}}


def test_a_long_probe_does_not_starve_the_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    mode = mode_with(clock, interval=30.0)
    pings: list[float] = []
    monkeypatch.setattr(degraded_module, "watchdog_interval", lambda: 9.0)

    def notify(*lines: str) -> bool:
        pings.append(clock.now)
        return True

    monkeypatch.setattr(degraded_module, "sd_notify", notify)
    probing, release = threading.Event(), threading.Event()

    def slow_probe() -> None:  # a reload on the card that takes minutes
        probing.set()
        release.wait(30)

    prober = CardProber(mode, slow_probe, lambda: True, poll_s=0.001)
    mode.enter("lost")
    prober.start()
    try:
        clock.now += 30  # the probe is due
        assert probing.wait(30)
        seen = len(pings)
        clock.now += 3  # a third of the watchdog interval later, the probe still running
        assert until(lambda: len(pings) > seen)
        release.set()
        assert until(lambda: not mode.active)  # the slow probe worked: back on the card
    finally:
        release.set()
        prober.stop()


def until(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.001)
    return predicate()
