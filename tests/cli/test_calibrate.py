"""`ax-llm doctor --calibrate MODEL` end to end on the simulated card (the first-contact check CI runs), and the
axcl backend opening a calibrated model with the stored choice."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ax_llm_provider import status_channel
from ax_llm_provider.calibration.record import CalibrationRecord, Runtime, load_record, record_path
from ax_llm_provider.model.layout import scan_model_dir
from ax_llm_provider.process import process_start_time
from ax_llm_provider.runtime.backends import open_stack
from ax_llm_provider.runtime.simcard import SimCard

from .conftest import TINY

Cli = Callable[..., tuple[int, str, str]]
SIM = Runtime(kind="simulated", version="3.10.2")


def test_calibrate_on_the_simulated_card_end_to_end(store: Path, cli: Cli) -> None:
    code, out, err = cli("doctor", "--calibrate", TINY, "--simulated", "--tokens", "3", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["ok"] and report["simulated"] and report["runtime"]["kind"] == "simulated"
    kv = report["kv_write"]
    assert kv["comparison"]["compared"] and kv["comparison"]["steps"] == 4  # after the prompt + 3 decodes
    assert kv["chosen"] in ("copy", "bind") and kv["reason"]
    if not kv["comparison"]["identical"]:  # a simulated card told to corrupt aliased outputs
        assert kv["chosen"] == "copy" and "changed the logits" in kv["reason"]
    for mode in ("copy", "bind"):
        assert kv["modes"][mode]["error"] is None and kv["modes"][mode]["device_ms_per_token"] > 0
    calls = {c["what"]: c for c in report["call_costs"]}
    assert calls["lm-head"]["samples"] == 20 and calls["lm-head"]["device_ms"] > 0
    assert any(c["call"] == "axcl.rt.engine_set_output_buffer_by_index" for c in report["call_costs"])
    faults = {f["name"]: f for f in report["faults"]}
    assert len(faults) == 6 and all(f["ret"] != 0 for f in faults.values())  # every fault was refused
    assert faults["execute from a thread with no context bound"]["code_name"] != "success"
    assert report["generation"]["status"] == "ok" and report["generation"]["generated_tokens"] == 3

    record = load_record(store / "tiny" / "llama", SIM)
    assert record is not None and record.kv_write == kv["chosen"] and record.model == TINY
    kinds = [g.kind for g in record.group_costs]
    assert kinds.count("decode") == 1 and kinds.count("prefill") >= 1
    assert all(g.call_ms > 0 and g.device_ms and g.device_ms > 0 for g in record.group_costs)
    assert Path(report["report_path"]).is_file() and Path(report["record_path"]) == record_path(
        store / "tiny" / "llama", SIM)

    code, out, _ = cli("doctor", "--calibrate", TINY, "--simulated", "--tokens", "2")
    assert code == 0 and "the card path works (SIMULATED card" in out and "fault codes" in out
    assert len(out.splitlines()) <= 25  # one screen


@pytest.mark.parametrize("kv_write", ["copy", "bind"])
def test_the_backend_opens_a_calibrated_model_with_the_stored_kv_write(
        tiny_twin: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kv_write: str) -> None:
    monkeypatch.setenv("AX_LLM_CALIBRATION_DIR", str(tmp_path / "calibration"))
    files = scan_model_dir(tiny_twin("llama"))
    record = CalibrationRecord(model="tiny", model_dir=str(files.root), runtime=SIM, kv_write=kv_write,  # type: ignore[arg-type]
                               kv_write_reason="test")
    path = record_path(files.root, SIM)
    path.parent.mkdir(parents=True)
    path.write_text(record.model_dump_json(by_alias=True))
    stack = open_stack(files, "simulated", axcl=SimCard())
    try:
        assert stack._d2d is (kv_write == "copy")  # type: ignore[attr-defined]
    finally:
        stack.close()
    explicit = open_stack(files, "simulated", axcl=SimCard(), kv_write="bind" if kv_write == "copy" else "copy")
    try:
        assert explicit._d2d is (kv_write == "bind")  # type: ignore[attr-defined]  # the caller's choice wins
    finally:
        explicit.close()


def test_a_record_of_another_runtime_or_a_broken_one_is_not_used(
        tiny_twin: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AX_LLM_CALIBRATION_DIR", str(tmp_path / "calibration"))
    root = tiny_twin("llama")
    other = Runtime(kind="simulated", version="3.9.0")
    path = record_path(root, other)
    path.parent.mkdir(parents=True)
    path.write_text(CalibrationRecord(model="t", model_dir=str(root), runtime=other, kv_write="bind",
                                      kv_write_reason="old runtime").model_dump_json(by_alias=True))
    assert load_record(root, SIM) is None
    record_path(root, SIM).write_text('{"schema": 1, "kv_write": "sideways"}')
    assert load_record(root, SIM) is None


def test_calibrate_refuses_a_card_another_process_holds(store: Path, cli: Cli, tmp_path: Path) -> None:
    import os

    data = {"schema": status_channel.SCHEMA, "card": 0, "published_at": time.time(), "period_s": 1.0,
            "owner": {"pid": os.getpid(), "cmdline": "ax-llm serve", "started": process_start_time(os.getpid()),
                      "user": "pi"}, "health": {"state": "ok", "device": "card 0"}}
    path = status_channel.channel_path(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    status_channel.write_atomically(path, data)
    code, _, err = cli("doctor", "--calibrate", TINY, "--simulated")
    assert code == 1 and "is held by PID" in err and "stop that process" in err
    assert load_record(store / "tiny" / "llama", SIM) is None


def test_calibrate_needs_a_model(cli: Cli) -> None:
    code, _, err = cli("doctor", "--calibrate")
    assert code == 1 and "--calibrate needs a MODEL" in err
