"""The calibration's decision: bind only with identical logits and a real gain; typed record round trip."""

from __future__ import annotations

import numpy as np
import pytest

from ax_llm_provider.calibration.record import CalibrationRecord, GroupCost, Runtime
from ax_llm_provider.calibration.run import CalibrationError, ModeRun, choose, compare


def run(mode: str, logits: list[list[float]], ms: float, device: float | None = None, error: str | None = None
        ) -> ModeRun:
    r = ModeRun(mode)  # type: ignore[arg-type]
    r.logits = [np.array(x, np.float32) for x in logits]
    r.decode_ms = [ms, ms]
    r.device_ms = [device, device] if device is not None else []
    r.error = error
    return r


LOGITS = [[0.0, 1.0, 0.5], [2.0, 0.0, 1.0]]


def test_identical_and_faster_bind_is_chosen() -> None:
    copy, bind = run("copy", LOGITS, 10.0), run("bind", LOGITS, 9.0)
    comparison = compare(copy, bind)
    assert comparison["identical"] and comparison["argmax_agree"] == "2/2"
    assert choose(copy, bind, comparison)[0] == "bind"


def test_bind_that_changes_the_logits_is_refused_however_fast() -> None:
    corrupted = [LOGITS[0], [2.0, 0.0, 1.0625]]
    copy, bind = run("copy", LOGITS, 10.0), run("bind", corrupted, 1.0)
    comparison = compare(copy, bind)
    assert not comparison["identical"] and comparison["first_differing_step"] == 1
    mode, reason = choose(copy, bind, comparison)
    assert mode == "copy" and "changed the logits" in reason


def test_a_small_gain_keeps_the_vendor_path() -> None:
    copy, bind = run("copy", LOGITS, 10.0), run("bind", LOGITS, 9.9)
    assert choose(copy, bind, compare(copy, bind))[0] == "copy"


def test_the_simulated_card_is_judged_on_its_device_clock() -> None:
    copy, bind = run("copy", LOGITS, 9.0, device=20.0), run("bind", LOGITS, 10.0, device=15.0)  # wall says copy
    mode, reason = choose(copy, bind, compare(copy, bind))
    assert mode == "bind" and "simulated device time" in reason


def test_failed_modes() -> None:
    copy, bind = run("copy", [], 0, error="DeviceError: x"), run("bind", LOGITS, 9.0)
    assert choose(copy, bind, compare(copy, bind))[0] == "bind"
    assert choose(run("copy", LOGITS, 9.0), run("bind", [], 0, error="e"), {})[0] == "copy"
    with pytest.raises(CalibrationError, match="neither"):
        choose(run("copy", [], 0, error="a"), run("bind", [], 0, error="b"), {})


def test_record_round_trip_and_typed_costs() -> None:
    record = CalibrationRecord(model="m", model_dir="/m", runtime=Runtime(kind="axcl", version="3.10.2"),
                               kv_write="copy", kv_write_reason="r", head_ms=8.0,
                               group_costs=[GroupCost(group=1, kind="prefill", tokens=128, history=0, call_ms=660.0,
                                                      ms_per_token=5.16, samples=3),
                                            GroupCost(group=0, kind="decode", tokens=1, history=2559, call_ms=80.0,
                                                      ms_per_token=80.0, samples=3)])
    again = CalibrationRecord.model_validate_json(record.model_dump_json(by_alias=True))
    assert again == record and again.cost(1) is not None and again.cost(1).tokens == 128  # type: ignore[union-attr]
    assert '"schema": 1' in record.model_dump_json(by_alias=True).replace(":1", ": 1")
    with pytest.raises(ValueError):
        GroupCost(group=0, kind="decode", tokens=0, history=1, call_ms=1, ms_per_token=1, samples=1)
