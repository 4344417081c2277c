"""The first-contact command around the measurements: card ownership, storing, the generation, the summary."""

from __future__ import annotations

import logging
from typing import Any

from .record import save_record, save_report
from .run import STAGES, CalibrationError, Progress, calibrate

log = logging.getLogger(__name__)


def _take_card(device: int) -> Any:
    """The card lock, or CalibrationError naming the process that holds the card (never opened here)."""
    from ..process import DeviceInUseError, DeviceLock
    from ..status_channel import read_status

    status = read_status(device)
    if status is not None and status.alive:
        raise CalibrationError(f"card {device} is held by {status.describe_owner()}: calibration needs the card to "
                               "itself; stop that process (the service: `sudo systemctl stop ax-llm`) and run it again")
    lock = DeviceLock(f"card{device}")
    try:
        lock.acquire()
    except DeviceInUseError as exc:
        raise CalibrationError(str(exc)) from exc
    return lock


def first_contact(model: str, *, store_dir: str | None = None, backend: str = "auto", device: int = 0,
                  tokens: int = 16, reps: int = 3, progress: Progress | None = None) -> dict[str, Any]:
    """Calibrate `model` on card `device`, store the record, run a short generation with it; the report."""
    from ..doctor import DoctorReport, smoke_test
    from ..model.errors import ModelError
    from ..model.store import ModelStore

    try:
        stored = ModelStore(store_dir).resolve(model)
    except ModelError as exc:
        raise CalibrationError(str(exc)) from exc
    lock = _take_card(device)
    try:
        record, report = calibrate(stored.path, stored.name, backend=backend, device=device, steps=tokens, reps=reps,
                                   progress=progress)
        if progress is not None:
            progress("storing the calibration", STAGES - 2, STAGES)
        report["record_path"] = str(save_record(record))
        if progress is not None:
            progress("short generation", STAGES - 1, STAGES)
        smoke = DoctorReport()
        smoke_test(smoke, stored.path, report["backend"], tokens)  # opens the model with the stored choice
        check = smoke.checks[-1]
        report["generation"] = {"status": check.status, "detail": check.detail, **smoke.smoke}
        report["ok"] = check.status == "ok" and any(not m["error"] for m in report["kv_write"]["modes"].values())
        report["report_path"] = str(save_report(record, report))
    finally:
        lock.release()
    if progress is not None:
        progress("done", STAGES, STAGES)
    return report


def _ms(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f} ms"


def summary(report: dict[str, Any]) -> str:
    """One screen: verdict, kv_write comparison, per-group and per-call costs, fault codes, generation."""
    kv, runtime = report["kv_write"], report["runtime"]
    modes, comparison = kv["modes"], kv["comparison"]
    lines = [f"ax-llm doctor --calibrate {report['model']}: {'the card path works' if report.get('ok') else 'PROBLEMS'}"
             + (" (SIMULATED card: the times are this machine's simulator, not the NPU's)" if report["simulated"]
                else ""),
             f"runtime {runtime['kind']} {runtime['version']}" + (f", pyAXCL {runtime['pyaxcl']}" if runtime.get(
                 "pyaxcl") else "") + f", card {report['card']}, {report['seconds']:.0f} s"]
    per_mode = "   ".join(f"{mode}: " + (f"FAILED ({m['error'][:60]})" if m["error"] else
                                          f"{_ms(m['decode_ms_per_token'])}/token") for mode, m in modes.items())
    same = ("logits identical"
            if comparison["identical"] else f"logits DIFFER (max |diff| {comparison['max_abs_diff']:.3g}, "
            f"argmax agree {comparison['argmax_agree']})") if comparison["compared"] else "not compared"
    lines += [f"kv_write     {per_mode}   {same}",
              f"             -> {kv['chosen']}: {kv['reason']}"]
    groups = report["record"]["group_costs"]
    cells = [f"decode step {_ms(g['call_ms'], 1)}" if g["kind"] == "decode" else
             f"chunk Hc={g['history']} {_ms(g['call_ms'], 0)}" for g in groups]
    lines += [("per group    " if i == 0 else " " * 13) + " | ".join(cells[i:i + 4]) for i in range(0, len(cells), 4)]
    calls = [f"{c['call'].rsplit('.', 1)[-1]} {c['what'].split(' (')[0]}: {_ms(c['wall_ms'], 3)}"
             + (f" (sim device {_ms(c['device_ms'], 3)})" if c.get("device_ms") is not None else "")
             for c in report["call_costs"]]
    lines += [("per call     " if i == 0 else " " * 13) + "; ".join(calls[i:i + 2]) for i in range(0, len(calls), 2)]
    lines += [("fault codes  " if i == 0 else " " * 13) + f"{f['name']}: {f['hex']} {f['code_name']} -> "
              f"{f['error_class']}" for i, f in enumerate(report["faults"])]
    gen = report.get("generation", {})
    if gen.get("status") == "ok":
        lines.append(f"generation   {gen.get('generated_tokens')} tokens, {gen.get('decode_tok_s')} tok/s, TTFT "
                     f"{gen.get('ttft_ms')} ms: {gen.get('text', '')[:60]!r}")
    else:
        lines.append(f"generation   FAILED: {gen.get('detail')}")
    lines += [f"stored       {report.get('record_path')} (used whenever the axcl backend opens this model on "
              "this runtime)", f"report       {report.get('report_path')}"]
    return "\n".join(lines)


__all__ = ["first_contact", "summary"]
