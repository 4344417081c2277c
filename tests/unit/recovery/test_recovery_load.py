"""Load failures climb the recovery ladder (issue 15, item 2), and a failed load is not watchdog progress.

A card that cannot load a model any more (after an execute fault, or from the start) must end in FATAL,
reported by health, instead of failing every request at load for ever; a model the card refuses for
itself (a file the runtime rejects, not enough CMM) is the caller's error and leaves the ladder alone.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.engine.ops.health import HealthConfig
from ax_llm_provider.engine.ops.recovery import DeviceFatalError
from ax_llm_provider.model.store import ModelStore
from ax_llm_provider.runtime import axcl_codes as codes
from ax_llm_provider.runtime.errors import DeviceError, DeviceMemoryError, model_refused
from ax_llm_provider.runtime.simcard import SimCard

from .conftest import POLICY


def chat(engine: Engine, twin: str) -> str:
    chunks = list(engine.chat({"model": twin, "messages": [{"role": "user", "content": "tell me a story"}],
                               "options": {"num_predict": 6, "temperature": 0}}))
    return "".join(c["message"]["content"] for c in chunks)


def test_an_execute_fault_then_failing_reloads_reach_fatal(engine: Engine, card: SimCard, twin: str) -> None:
    chat(engine, twin)
    card.faults.fail_execute(after=0, times=POLICY.step_attempts)  # beats the step retry: reset + reload
    card.faults.fail_load(after=0, times=-1)  # and the card cannot load anything any more
    with pytest.raises(DeviceFatalError, match="could not be recovered") as info:
        chat(engine, twin)
    assert isinstance(info.value.cause, DeviceError)
    health = engine.health()
    assert health.state == "failed" and not health.watchdog["live"]
    assert health.recoveries["fatal"] == 1 and card.counters.calls["axclrtRebootDevice"] == 1  # reset, reboot, fatal
    loads = card.faults.load.fired
    with pytest.raises(DeviceFatalError):
        chat(engine, twin)  # refused at admission: no more load attempts on a lost card
    assert card.faults.load.fired == loads


def test_a_card_that_cannot_load_from_the_start_is_fatal(engine: Engine, card: SimCard, twin: str) -> None:
    card.faults.fail_load(after=0, times=-1)
    with pytest.raises(DeviceFatalError):
        engine.load(twin)  # the service's preload
    assert engine.health().state == "failed"


def test_a_load_that_fails_on_the_device_is_recovered_and_the_request_served(engine: Engine, card: SimCard,
                                                                             twin: str) -> None:
    card.faults.fail_load(after=0, times=POLICY.load_attempts)  # the load and its own retry fail
    assert chat(engine, twin)  # reset + reload of the model that failed, then the request runs
    health = engine.health()
    assert health.recoveries["reset"] == 1 and health.state == "ok" and health.models == [twin]


def test_the_model_reloaded_is_the_one_that_was_loaded_after_a_reset_that_failed(engine: Engine, card: SimCard,
                                                                                twin: str) -> None:
    expected = chat(engine, twin)
    card.faults.fail_execute(after=0, times=POLICY.step_attempts)
    card.faults.fail_load(after=0, times=POLICY.load_attempts)  # the reset's reload fails, the reboot's works
    assert chat(engine, twin) == expected
    health = engine.health()
    assert health.recoveries["reboot"] == 1 and health.models == [twin]  # the reboot loaded it again


@pytest.mark.parametrize("error", [
    DeviceError(codes.signed(codes.ERR_ENGINE_ILLEGAL_PARAM), "axcl.rt.engine_load_from_file"),
    DeviceError(codes.WRAPPER_GUARD, "axcl.rt.engine_load_from_file"),
    DeviceMemoryError(codes.signed(codes.ERR_MEMORY_NO_MEMORY), "CMM budget check"),
])
def test_what_the_model_itself_causes_is_refused(error: DeviceError) -> None:
    assert model_refused(error)


@pytest.mark.parametrize("error", [
    DeviceError(codes.signed(codes.ERR_ENGINE_EXECUTE_FAIL), "axcl.rt.engine_load_from_file"),
    DeviceError(codes.signed(codes.ERR_DEVICE_NO_CONNECT), "axcl.rt.engine_load_from_file"),
])
def test_what_the_device_causes_is_not_refused(error: DeviceError) -> None:
    assert not model_refused(error)


def test_a_model_the_card_refuses_is_the_callers_error(engine: Engine, card: SimCard, twin: str) -> None:
    card.faults.fail_load(code=codes.ERR_ENGINE_ILLEGAL_PARAM, after=0, times=-1)
    with pytest.raises(DeviceError, match="ILLEGAL_PARAM"):
        chat(engine, twin)
    assert card.faults.load.fired == POLICY.load_attempts  # the load's own retry, no ladder, no re-run
    health = engine.health()
    assert health.state != "failed" and health.recoveries["reset"] == health.recoveries["reboot"] == 0
    card.faults.load = None
    assert chat(engine, twin)


def test_a_failed_load_attempt_does_not_feed_the_watchdog(tmp_path: Path, card: SimCard, twin: str) -> None:
    health = HealthConfig(period_s=0.02, stale_s=0.3, execute_timeout_s=5.0, hang_reboot_s=None, hang_fatal_s=None)
    with Engine(ModelStore(tmp_path), backend="simulated", card=card, auto_pull=False, keep_alive=-1,
                request_timeout=10, health=health, recovery=POLICY) as engine:
        chat(engine, twin)
        # the monitor reads the card only while a model is open and the card is free: wait for its first read, or
        # on a loaded machine the unload below can come first and leave no reading (liveness is then "no hang")
        deadline = time.monotonic() + 10
        while engine.health().read_at is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.health().read_at is not None
        # reads that fail without the card being offline: no answer from the device feeds liveness
        card.lib_rt.axclrtGetDeviceProperties = (  # type: ignore[method-assign]
            lambda device_id, props: codes.signed(codes.ERR_DEVICE_NULL_POINTER))
        engine.unload(twin)
        deadline = time.monotonic() + 10
        while engine.health().watchdog["live"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not engine.health().watchdog["live"]  # nothing has answered for longer than stale_s
        card.faults.fail_load(code=codes.ERR_ENGINE_ILLEGAL_PARAM, after=0, times=-1)
        with pytest.raises(DeviceError):
            chat(engine, twin)
        assert not engine.health().watchdog["live"]  # the load attempts were no progress
