"""The recovery ladder: step retries, reset+reload, firmware reboot, fatal; hangs become fast timeouts."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.engine.errors import EngineError
from ax_llm_provider.engine.ops.health import HealthConfig
from ax_llm_provider.engine.ops.recovery import (
    DeviceFatalError,
    RecoveryLadder,
    RecoveryPolicy,
    RetryingStack,
    Rung,
)
from ax_llm_provider.model.store import ModelStore
from ax_llm_provider.runtime import axcl_codes as codes
from ax_llm_provider.runtime.errors import (
    DeviceError,
    DeviceMemoryError,
    DeviceOfflineError,
    DeviceTimeoutError,
)
from ax_llm_provider.runtime.simcard import SimCard

from .conftest import POLICY

HEALTH = HealthConfig(period_s=0.05, execute_timeout_s=0.3, hang_reboot_s=None, hang_fatal_s=None)


def exec_fail() -> DeviceError:
    return DeviceError(codes.signed(codes.ERR_ENGINE_EXECUTE_FAIL), "axcl.rt.engine_execute")


def offline() -> DeviceOfflineError:
    return DeviceOfflineError(codes.signed(codes.ERR_DEVICE_NO_CONNECT), "axcl.rt.engine_execute")


# ---- rung 1 ----------------------------------------------------------------------------------------------


class FlakyStack:
    spec = object()

    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = failures
        self.calls = 0

    def decode(self, embed: np.ndarray, pos: int) -> np.ndarray:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return np.zeros(3, np.float32)

    def close(self) -> None:
        pass


def test_step_retry_absorbs_transient_execute_failures() -> None:
    seen: list[BaseException] = []
    stack = FlakyStack([exec_fail(), exec_fail()])
    retrying = RetryingStack(stack, POLICY, on_retry=seen.append)  # type: ignore[arg-type]
    assert retrying.decode(np.zeros(3), 0).shape == (3,)
    assert stack.calls == 3 and len(seen) == 1


def test_step_retry_is_bounded_and_skips_errors_that_do_not_heal() -> None:
    stack = FlakyStack([exec_fail()] * 5)
    with pytest.raises(DeviceError):
        RetryingStack(stack, POLICY).decode(np.zeros(3), 0)  # type: ignore[arg-type]
    assert stack.calls == POLICY.step_attempts
    for error in (offline(), DeviceTimeoutError(codes.signed(codes.ERR_ENGINE_TIMEOUT), "x"),
                  DeviceMemoryError(codes.signed(codes.ERR_MEMORY_NO_MEMORY), "x")):
        stack = FlakyStack([error])
        with pytest.raises(type(error)):
            RetryingStack(stack, POLICY).decode(np.zeros(3), 0)  # type: ignore[arg-type]
        assert stack.calls == 1


# ---- rungs 2-4 -------------------------------------------------------------------------------------------


class Actions:
    def __init__(self, reset_fails: int = 0, reboot_fails: int = 0) -> None:
        self.log: list[str] = []
        self.reset_fails, self.reboot_fails = reset_fails, reboot_fails

    def reset(self) -> None:
        self.log.append("reset")
        if self.reset_fails:
            self.reset_fails -= 1
            raise offline()

    def reboot(self) -> None:
        self.log.append("reboot")
        if self.reboot_fails:
            self.reboot_fails -= 1
            raise offline()


def ladder_of(actions: Actions, **policy: Any) -> RecoveryLadder:
    return RecoveryLadder(RecoveryPolicy(**policy), actions.reset, actions.reboot)


def test_where_the_ladder_starts() -> None:
    actions = Actions()
    ladder = ladder_of(actions)
    assert ladder.recover(exec_fail()) == Rung.RESET
    ladder.note_success()
    assert ladder.recover(offline()) == Rung.REBOOT  # a dead heartbeat needs the firmware reboot
    ladder.note_success()
    assert actions.log == ["reset", "reboot"] and ladder.counts["reset"] == 1 and ladder.counts["reboot"] == 1


def test_a_recovery_not_followed_by_a_success_escalates() -> None:
    actions = Actions()
    ladder = ladder_of(actions)
    assert ladder.recover(exec_fail()) == Rung.RESET
    assert ladder.recover(exec_fail()) == Rung.REBOOT
    with pytest.raises(DeviceFatalError, match="could not be recovered"):
        ladder.recover(exec_fail())
    with pytest.raises(DeviceFatalError):  # once lost, always lost (the process must restart)
        ladder.recover(exec_fail())


def test_a_failing_rung_escalates_within_one_recovery() -> None:
    actions = Actions(reset_fails=1)
    assert ladder_of(actions).recover(exec_fail()) == Rung.REBOOT
    assert actions.log == ["reset", "reboot"]
    actions = Actions(reset_fails=1, reboot_fails=1)
    with pytest.raises(DeviceFatalError, match="firmware reboot did not help") as info:
        ladder_of(actions).recover(exec_fail())
    assert isinstance(info.value.cause, DeviceOfflineError) and info.value.status_code == 503
    with pytest.raises(DeviceFatalError, match="firmware reboot disabled"):
        ladder_of(Actions(reset_fails=1), reboot=False).recover(exec_fail())


def test_too_many_recoveries_in_the_window_are_fatal() -> None:
    ladder = ladder_of(Actions(), max_recoveries=3, window_s=60)
    for _ in range(3):
        ladder.recover(exec_fail())
        ladder.note_success()
    with pytest.raises(DeviceFatalError, match="3 recoveries within 60 s"):
        ladder.recover(exec_fail())


# ---- on the engine ---------------------------------------------------------------------------------------




def chat(engine: Engine, twin: str, n: int = 6) -> str:
    chunks = list(engine.chat({"model": twin, "messages": [{"role": "user", "content": "tell me a story"}],
                               "options": {"num_predict": n, "temperature": 0}}))
    return "".join(c["message"]["content"] for c in chunks)


def stream(engine: Engine, twin: str, n: int = 40) -> Iterator[dict[str, Any]]:
    return engine.chat({"model": twin, "messages": [{"role": "user", "content": "tell me a story"}],
                        "options": {"num_predict": n, "temperature": 0}, "stream": True})


def test_failure_before_any_token_is_retried_transparently(engine: Engine, card: SimCard, twin: str) -> None:
    expected = chat(engine, twin)
    card.faults.fail_execute(after=0, times=POLICY.step_attempts)  # beats rung 1 in the prefill
    assert chat(engine, twin) == expected  # reset + reload + re-run: the caller sees nothing
    assert engine.health().recoveries["reset"] == 1 and engine.health().recoveries["retry"] == 1
    assert engine.health().state == "ok"


def test_failure_after_tokens_ends_the_request_with_its_typed_error(engine: Engine, card: SimCard, twin: str) -> None:
    chat(engine, twin)
    it = stream(engine, twin)
    next(it)
    card.faults.fail_execute(after=0, times=POLICY.step_attempts)
    with pytest.raises(DeviceError) as info:
        list(it)
    assert type(info.value) is DeviceError and "not re-run: send it again" in "".join(info.value.__notes__)
    assert chat(engine, twin)  # served after the recovery
    assert engine.health().recoveries["reset"] == 1


def test_offline_mid_generation_reboots_the_card(engine: Engine, card: SimCard, twin: str) -> None:
    chat(engine, twin)
    it = stream(engine, twin)
    next(it)
    card.faults.go_offline()
    with pytest.raises(DeviceOfflineError, match="not reachable"):
        list(it)
    assert not card.faults.offline and card.counters.calls["axclrtRebootDevice"] == 1
    assert chat(engine, twin)
    assert engine.health().recoveries["reboot"] == 1
    deadline = time.monotonic() + 5
    while engine.health().online is not True and time.monotonic() < deadline:  # the next read of the card
        time.sleep(0.02)
    assert engine.health().online is True


def test_a_card_that_stays_dead_is_fatal_and_fails_fast(engine: Engine, card: SimCard, twin: str) -> None:
    chat(engine, twin)
    card.lib_rt.axclrtRebootDevice = lambda device_id: 0  # type: ignore[method-assign]  # the reboot does not help
    card.faults.go_offline()
    started = time.monotonic()
    with pytest.raises(DeviceFatalError, match="could not be recovered"):
        chat(engine, twin)
    assert time.monotonic() - started < 8
    started = time.monotonic()
    with pytest.raises(DeviceFatalError):
        chat(engine, twin)  # refused at submission
    assert time.monotonic() - started < 0.5
    assert engine.health().state == "failed" and not engine.health().watchdog["live"]


def test_offline_at_the_first_load_reboots_then_loads(engine: Engine, card: SimCard, twin: str) -> None:
    card.faults.go_offline()
    assert chat(engine, twin)
    assert card.counters.calls["axclrtRebootDevice"] == 1


def test_a_hung_execute_is_a_fast_timeout_and_the_next_request_succeeds(tmp_path: Path, card: SimCard,
                                                                         twin: str) -> None:
    with Engine(ModelStore(tmp_path), backend="simulated", card=card, auto_pull=False, request_timeout=10,
                health=HEALTH, recovery=POLICY) as engine:
        hung_execute_round(engine, card, twin)


def hung_execute_round(engine: Engine, card: SimCard, twin: str) -> None:
    expected = chat(engine, twin)
    card.faults.hang_execute(after=3, timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(DeviceTimeoutError, match="has not finished an execute") as info:
        chat(engine, twin)
    elapsed = time.monotonic() - started
    assert HEALTH.execute_timeout_s <= elapsed < 0.9, elapsed  # before the runtime itself gives up (1 s)
    assert codes.unsigned(info.value.code) == codes.ERR_ENGINE_TIMEOUT
    assert chat(engine, twin) == expected  # queued behind the hang, served after reset + reload
    assert engine.health().recoveries["reset"] == 1


def test_a_long_hang_reboots_the_card_from_the_monitor(tmp_path: Path, card: SimCard, twin: str) -> None:
    health = HealthConfig(period_s=0.05, execute_timeout_s=0.2, hang_reboot_s=0.5, hang_fatal_s=None)
    with Engine(ModelStore(tmp_path), backend="simulated", card=card, auto_pull=False, request_timeout=10,
                health=health, recovery=POLICY) as engine:
        chat(engine, twin)
        card.faults.hang_execute(after=1, timeout_s=1.5)
        with pytest.raises(DeviceTimeoutError):
            chat(engine, twin)
        assert chat(engine, twin)
        assert card.counters.calls["axclrtRebootDevice"] >= 1


def test_a_hang_that_never_ends_is_fatal_and_queued_requests_fail(tmp_path: Path, card: SimCard, twin: str) -> None:
    health = HealthConfig(period_s=0.05, execute_timeout_s=0.2, hang_reboot_s=None, hang_fatal_s=0.6)
    engine = Engine(ModelStore(tmp_path), backend="simulated", card=card, auto_pull=False, health=health,
                    recovery=POLICY)  # no request timeout at all: the monitor still ends every request
    try:
        chat(engine, twin)
        hang = card.faults.hang_execute(after=1, timeout_s=30)
        errors: list[BaseException] = []

        def queued() -> None:
            try:
                chat(engine, twin)
            except (EngineError, DeviceError) as exc:
                errors.append(exc)

        with pytest.raises(DeviceTimeoutError):
            chat(engine, twin)
        waiter = threading.Thread(target=queued)
        waiter.start()
        waiter.join(10)
        assert not waiter.is_alive() and len(errors) == 1
        assert engine.health().state == "failed"
        with pytest.raises(DeviceFatalError):
            chat(engine, twin)
    finally:
        hang.released.set()  # let the stuck thread go so close() can join it
        engine.close()


def test_the_monitor_recovers_a_card_that_died_while_idle(engine: Engine, card: SimCard, twin: str) -> None:
    chat(engine, twin)
    card.faults.go_offline()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and engine.health().recoveries["reboot"] == 0:
        time.sleep(0.05)
    assert engine.health().recoveries["reboot"] == 1 and not card.faults.offline
    assert chat(engine, twin)
    assert engine.health().state == "ok"


def test_a_runtime_status_callback_triggers_the_recovery(tmp_path: Path, card: SimCard, twin: str) -> None:
    registered: list[Any] = []
    card.lib_rt.axclrtRegisterDeviceStatusCallback = lambda cb, userdata: registered.append(cb) or 0  # type: ignore[attr-defined]
    reads_off = HealthConfig(period_s=0, execute_timeout_s=5.0, hang_reboot_s=None, hang_fatal_s=None)
    with Engine(ModelStore(tmp_path), backend="simulated", card=card, auto_pull=False, health=reads_off,
                recovery=POLICY) as engine:
        chat(engine, twin)
        assert len(registered) == 1  # a runtime that has the callback gets it registered once
        card.faults.go_offline()
        registered[0](1, 1, None)  # AXCL_DEVICE_STATUS_OFFLINE from the runtime's thread
        deadline = time.monotonic() + 10
        while engine.health().recoveries["reboot"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.health().recoveries["reboot"] == 1 and not card.faults.offline
        assert chat(engine, twin)
