"""Fault injection on the simulated card, one fault class at a time, N randomized runs each.

Every run: inject the fault at a random point, send a random request (chat, generate or a stream), and
check that it either succeeds or ends with the documented error for that class, within its timeout;
then the next request must succeed (after the recovery), and the card must hold exactly the buffers of
one loaded model. After the runs: no Python thread, OS thread, file descriptor or simulated device
allocation is left behind once the engine is closed.

| fault class    | documented error      | recovery                                   |
|----------------|-----------------------|--------------------------------------------|
| execute error  | DeviceError (Busy)    | step retry, then reset + reload            |
| offline        | DeviceOfflineError    | firmware reboot + reload                   |
| hung execute   | DeviceTimeoutError    | the request is cut at execute_timeout; reset + reload when the |
|                |                       | runtime returns                            |
| CMM exhaustion | DeviceMemoryError     | refused at load (with the numbers); nothing left on the card |
| over-temperature | DeviceOverheatedError | new work waits for the card to cool, at most thermal_wait_s |
"""

from __future__ import annotations

import dataclasses
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.engine.ops.health import DeviceOverheatedError, HealthConfig
from ax_llm_provider.engine.ops.recovery import RecoveryPolicy
from ax_llm_provider.model.store import ModelStore
from ax_llm_provider.runtime import axcl_codes as codes
from ax_llm_provider.runtime.errors import (
    DeviceError,
    DeviceMemoryError,
    DeviceOfflineError,
    DeviceTimeoutError,
)
from ax_llm_provider.runtime.simcard import SimCard
from ax_llm_provider.runtime.simcard.memory import Fail

from .conftest import FAULT_RUNS, WORDS, assert_no_leaks, report, resources

HEALTH = HealthConfig(period_s=0.03, execute_timeout_s=5.0, thermal_wait_s=0.8, temp_warn_c=75, temp_pause_c=85,
                      temp_resume_c=75, cmm_floor_mb=0, hang_reboot_s=None, hang_fatal_s=None)
# Only the hang class watches executes tightly: elsewhere a thread stalled by a loaded CI machine would be
# (rightly) reported as a hang, which is not that class's documented error.
HANG_HEALTH = dataclasses.replace(HEALTH, execute_timeout_s=0.3)
POLICY = RecoveryPolicy(step_wait_s=0.001, step_wait_max_s=0.005, cmm_retry_wait_s=0.02, reboot_wait_s=2,
                        reboot_poll_s=0.05, max_recoveries=100_000)
TIMEOUT = {"execute_error": 6.0, "offline": 6.0, "hang": 5.0, "cmm": 6.0, "overheat": 5.0}
SLACK = 1.0  # scheduling noise on a loaded 2-core CI machine

Cleanup = Callable[[], None]
Inject = Callable[[SimCard, Engine, str, random.Random, dict[str, Any]],
                  tuple[tuple[type[BaseException], ...], Cleanup]]


def request(engine: Engine, model: str, rng: random.Random) -> tuple[str, Callable[[], None]]:
    kind = rng.choice(["chat", "generate", "stream"])
    options = {"num_predict": rng.randint(4, 24), "temperature": rng.choice([0.0, 0.7, 0.99]),
               "seed": rng.randrange(99)}
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 30)))
    if kind == "generate":
        return kind, lambda: list(engine.generate({"model": model, "prompt": text, "options": options}))
    body = {"model": model, "messages": [{"role": "user", "content": text}], "options": options}
    if kind == "chat":
        return kind, lambda: list(engine.chat(body))

    def consume() -> None:
        for _chunk in engine.chat({**body, "stream": True}):
            pass

    return kind, consume


def attempt(engine: Engine, model: str, rng: random.Random, allowed: tuple[type[BaseException], ...],
            timeout: float) -> tuple[str, float]:
    _, send = request(engine, model, rng)
    started = time.monotonic()
    try:
        send()
        outcome = "ok"
    except Exception as exc:
        if type(exc) not in allowed:
            raise AssertionError(f"undocumented error {type(exc).__name__}: {exc}") from exc
        outcome = type(exc).__name__
        if "CMM budget check" in str(exc):  # a refused load says what it needed and what was left
            assert re.search(r"need \d+ MB plus a \d+ MB floor, \d+ MB of CMM remain", str(exc)), exc
    elapsed = time.monotonic() - started
    assert elapsed <= timeout + SLACK, f"{outcome} after {elapsed:.2f} s, timeout {timeout} s"
    return outcome, elapsed


def until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


# ---- the fault classes -----------------------------------------------------------------------------------


def execute_error(card: SimCard, engine: Engine, model: str, rng: random.Random,
                  steady: dict[str, Any]) -> tuple[tuple[type[BaseException], ...], Cleanup]:
    code = rng.choice([codes.ERR_ENGINE_EXECUTE_FAIL, codes.ERR_ENGINE_UNEXPECT_RESPONSE])  # declared codes only
    card.faults.fail_execute(code=code, after=rng.randrange(0, 60), times=rng.choice([1, 2, 3, 5, 8]))

    def cleanup() -> None:
        card.faults.execute = None

    return (DeviceError,), cleanup


def offline(card: SimCard, engine: Engine, model: str, rng: random.Random,
            steady: dict[str, Any]) -> tuple[tuple[type[BaseException], ...], Cleanup]:
    """The heartbeat dies after a random number of executes: every call fails until a firmware reboot."""
    target = card.counters.executes + rng.randrange(0, 60)
    original = card.inject_execute_faults
    fired = []

    def inject() -> None:
        if card.counters.executes >= target and not fired:
            fired.append(target)
            card.faults.go_offline()
            raise Fail(codes.ERR_DEVICE_NO_CONNECT, "injected: heartbeat dead")
        original()

    card.inject_execute_faults = inject  # type: ignore[method-assign]

    def cleanup() -> None:
        del card.inject_execute_faults

    return (DeviceOfflineError,), cleanup


def hang(card: SimCard, engine: Engine, model: str, rng: random.Random,
         steady: dict[str, Any]) -> tuple[tuple[type[BaseException], ...], Cleanup]:
    """An execute blocks past the execute timeout; the runtime gives up on its own 0.6-1.5 s later."""
    card.faults.hang_execute(after=rng.randrange(0, 40), timeout_s=rng.uniform(0.6, 1.5))

    def cleanup() -> None:
        card.faults.hang = None

    return (DeviceTimeoutError,), cleanup


def cmm(card: SimCard, engine: Engine, model: str, rng: random.Random,
        steady: dict[str, Any]) -> tuple[tuple[type[BaseException], ...], Cleanup]:
    """The next load meets a CMM pool of random size (often too small); sometimes without the budget check."""
    engine.unload(model)
    assert card.memory.used == 0 and not card.models
    need = steady["cmm"]
    card.faults.limit_cmm(rng.choice([need // 4, need // 2, need - 1, need + (1 << 20), 4 * need]))
    blind = rng.random() < 0.3
    if blind:  # no CMM status: the load runs until malloc or engine_load fails
        card.sys.mem_query_status = lambda: ({}, -1)  # type: ignore[method-assign]

    def cleanup() -> None:
        card.faults.limit_cmm(None)
        if blind:
            del card.sys.mem_query_status

    return (DeviceMemoryError,), cleanup


def overheat(card: SimCard, engine: Engine, model: str, rng: random.Random,
             steady: dict[str, Any]) -> tuple[tuple[type[BaseException], ...], Cleanup]:
    """The card heats past the pause threshold (before or during the request) and cools after a random time."""
    temp = steady["temperature"]
    card.faults.temperature_mc = lambda counters: int(temp[0] * 1000)
    hot = rng.uniform(86, 100)

    def heat() -> None:
        temp[0] = hot

    def cool() -> None:
        temp[0] = rng.uniform(40, 74)

    timers = []
    if rng.random() < 0.5:
        heat()
        assert until(lambda: engine.health().paused, 3)
    else:
        timers.append(threading.Timer(rng.uniform(0, 0.1), heat))
    timers.append(threading.Timer(rng.uniform(0.1, 1.6), cool))
    for timer in timers:
        timer.start()

    def cleanup() -> None:
        for timer in timers:
            timer.cancel()
            if timer.is_alive():
                timer.join()
        cool()
        assert until(lambda: not engine.health().paused, 3)

    return (DeviceOverheatedError,), cleanup


FAULTS: dict[str, Inject] = {"execute_error": execute_error, "offline": offline, "hang": hang, "cmm": cmm,
                             "overheat": overheat}


def card_state(card: SimCard) -> tuple[int, int, int]:
    return card.memory.used, len(card.models), len(card.ios)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_class(fault: str, reliability_twin: str, tmp_path: Path, warm: None) -> None:
    rng = random.Random(f"fault-{fault}")
    model, timeout = reliability_twin, TIMEOUT[fault]
    before = resources()
    card = SimCard()
    engine = Engine(ModelStore(tmp_path), backend="simulated", card=card, auto_pull=False, keep_alive=-1,
                    request_timeout=timeout, health=HANG_HEALTH if fault == "hang" else HEALTH,
                    recovery=POLICY)
    outcomes: Counter[str] = Counter()
    worst = {"faulted_s": 0.0, "next_s": 0.0}
    try:
        attempt(engine, model, rng, (), timeout)
        steady = {"state": card_state(card), "cmm": card.cmm_used(), "temperature": [41.0]}
        for run in range(FAULT_RUNS):
            allowed, cleanup = FAULTS[fault](card, engine, model, rng, steady)
            try:
                outcome, elapsed = attempt(engine, model, rng, allowed, timeout)
            finally:
                cleanup()
            if fault == "cmm" and outcome != "ok":
                assert card.memory.used == 0 and not card.models, "a failed load left buffers on the card"
            outcomes[outcome] += 1
            worst["faulted_s"] = max(worst["faulted_s"], elapsed)
            outcome, elapsed = attempt(engine, model, rng, (), timeout)  # the next request succeeds
            worst["next_s"] = max(worst["next_s"], elapsed)
            assert card_state(card) == steady["state"], f"run {run}: device buffers changed"
        health = engine.health()
        assert health.state in ("ok", "warn"), health.to_dict()
    finally:
        engine.close(timeout=30)
    assert card.memory.used == 0 and not card.models and not card.ios and not card.inited
    counts = assert_no_leaks(before)
    report(f"faults[{fault}]", runs=FAULT_RUNS, outcomes=dict(outcomes), recoveries=health.recoveries,
           max_faulted_request_s=round(worst["faulted_s"], 2), max_next_request_s=round(worst["next_s"], 2),
           timeout_s=timeout, leaks="none", **counts)

