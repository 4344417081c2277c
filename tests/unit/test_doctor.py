"""ax-llm doctor without a card: device checks skip, model problems fail, the smoke test runs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from ax_llm_provider.doctor import DoctorReport, main_json, run_doctor


def statuses(report: DoctorReport) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


def test_without_card_device_checks_are_skipped_not_failed() -> None:
    report = run_doctor()
    s = statuses(report)
    assert s["python"] == "ok" and s["card"] == "skip" and report.ok
    assert "device checks skipped" in report.to_text()


def test_missing_model_fails_with_the_pull_hint(tmp_path: Path) -> None:
    report = run_doctor("nope:1", store_dir=str(tmp_path))
    assert not report.ok and statuses(report)["model"] == "fail"
    assert "ax-llm pull nope:1" in report.to_text()
    assert json.loads(main_json(report))["ok"] is False


@pytest.mark.parametrize("simulated", [False, True])
def test_smoke_generation_on_a_twin(tiny_twin: Callable[..., Path], simulated: bool) -> None:
    twin = tiny_twin("llama", decode_capacity=127, prefill_chunk=16, prefill_histories=(0, 16, 32, 64))
    report = run_doctor(str(twin), simulated=simulated, tokens=4)
    assert report.ok, report.to_text()
    assert report.smoke["generated_tokens"] >= 1
    assert report.smoke["backend"] == ("simulated" if simulated else "onnx")
    assert ("note" in report.smoke) == simulated


def test_broken_model_directory_is_reported(tmp_path: Path, tiny_twin: Callable[..., Path]) -> None:
    import shutil

    twin = tiny_twin("llama")
    broken = tmp_path / "broken"
    shutil.copytree(twin, broken)
    next(broken.glob("*_l1_together.onnx")).unlink()
    report = run_doctor(str(broken))
    assert statuses(report)["model"] == "fail" and "missing decoder layer" in report.to_text()
