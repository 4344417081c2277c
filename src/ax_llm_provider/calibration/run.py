"""`ax-llm doctor --calibrate MODEL`: the first-contact check of the card path, and the stored choices.

Steps (each one a section of the JSON report; docs/hardware.md "First contact"):
1. kv_write copy vs bind: the same prompt and the same teacher-forced tokens through a stack opened in
   each mode; the logits must be identical (bind aliases the K/V outputs into the cache the same execute
   reads, which no vendor code does), and the median time per decoded token decides between them.
2. Per-group costs of the chosen mode: one prefill chunk per prefill group, one decode step.
3. Per-call costs and the fault codes of this runtime (probes.py).
4. The record is stored (record.py) and a short generation runs through the engine, which now opens the
   model with the calibrated choice.
"""

from __future__ import annotations

import logging
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..model.embeddings import EmbeddingTable
from ..model.layout import ModelFiles, scan_model_dir
from ..model.tokenizer import ChatTokenizer
from ..runtime.backends import open_stack
from ..runtime.protocol import DecoderStack
from .probes import Harness, call_costs, fault_probes
from .record import CalibrationRecord, GroupCost, KvWrite, runtime_of

log = logging.getLogger(__name__)
PROMPT = "Name three colours of the rainbow."
BIND_MARGIN = 0.03  # bind must be this much faster than copy to be worth leaving the vendor's path
Progress = Callable[[str, int, int], None]
STAGES = 5  # copy, bind, probes (here), then store and generate (report.py)


class CalibrationError(RuntimeError):
    """The calibration could not run (the card is held, the model is not a card model, ...)."""


@dataclass
class ModeRun:
    mode: KvWrite
    logits: list[np.ndarray] = field(default_factory=list)
    decode_ms: list[float] = field(default_factory=list)
    device_ms: list[float] = field(default_factory=list)
    groups: list[GroupCost] = field(default_factory=list)
    forced: list[int] = field(default_factory=list)  # the tokens fed after the prompt
    error: str | None = None

    @property
    def ms_per_token(self) -> float | None:
        return statistics.median(self.decode_ms) if self.decode_ms else None

    @property
    def device_ms_per_token(self) -> float | None:
        return statistics.median(self.device_ms) if self.device_ms else None

    def cost_per_token(self, basis: str) -> float:
        value = self.device_ms_per_token if basis == "simulated device time" else self.ms_per_token
        return value or 0.0


def _timed(clock: Any, fn: Callable[[], Any]) -> tuple[Any, float, float | None]:
    device0 = clock.device_ms if clock is not None else 0.0
    started = time.perf_counter()
    result = fn()
    wall = (time.perf_counter() - started) * 1e3
    return result, wall, (clock.device_ms - device0) if clock is not None else None


def _median(clock: Any, fn: Callable[[], Any], reps: int) -> tuple[float, float | None]:
    samples = [_timed(clock, fn)[1:] for _ in range(reps)]
    device = [d for _, d in samples if d is not None]
    return statistics.median(w for w, _ in samples), (statistics.median(device) if device else None)


def _group_costs(stack: DecoderStack, embeds: np.ndarray, clock: Any, reps: int) -> list[GroupCost]:
    spec, out = stack.spec, []
    for group in spec.prefill_groups:
        if group.history + group.tokens > spec.decode_capacity:
            continue  # never used for a full chunk
        rows = np.resize(embeds, (group.tokens, spec.hidden))
        call, device = _median(clock, partial(stack.prefill, rows, group.history, want_logits=False), reps)
        out.append(GroupCost(group=group.index, kind="prefill", tokens=group.tokens, history=group.history,
                             call_ms=round(call, 3), ms_per_token=round(call / group.tokens, 4),
                             device_ms=None if device is None else round(device, 3), samples=reps))
    decode = spec.decode_group
    call, device = _median(clock, partial(stack.decode, embeds[0], min(8, spec.decode_capacity - 1)), reps)
    out.append(GroupCost(group=decode.index, kind="decode", tokens=1, history=decode.history, call_ms=round(call, 3),
                         ms_per_token=round(call, 4), device_ms=None if device is None else round(device, 3),
                         samples=reps))
    return out


def run_mode(files: ModelFiles, backend: str, device: int, module: Any, mode: KvWrite, prompt: list[int],
             forced: list[int] | None, steps: int, embeddings: Callable[[int], EmbeddingTable], reps: int) -> ModeRun:
    """Prefill `prompt`, then decode `steps` tokens (greedy, or `forced` ones), timing each decode step."""
    run = ModeRun(mode)
    clock = getattr(module, "clock", None)
    try:
        stack = open_stack(files, backend, device=device, axcl=module, kv_write=mode)
    except Exception as exc:  # noqa: BLE001 -- a mode that cannot open is a finding of the report
        run.error = f"{type(exc).__name__}: {exc}"
        return run
    try:
        table = embeddings(stack.spec.hidden)
        logits = stack.prefill(table.lookup(prompt), 0)
        assert logits is not None
        tokens: list[int] = []
        for i in range(steps):
            run.logits.append(logits)
            token = forced[i] if forced is not None else int(np.argmax(logits))
            tokens.append(token)
            logits, wall, dev = _timed(clock, partial(stack.decode, table.lookup([token])[0], len(prompt) + i))
            run.decode_ms.append(wall)
            if dev is not None:
                run.device_ms.append(dev)
        run.logits.append(logits)
        run.forced = tokens
        run.groups = _group_costs(stack, table.lookup(prompt), clock, reps)
    except Exception as exc:  # noqa: BLE001 -- as above: the report says which mode failed and how
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        stack.close()
    return run


def compare(copy: ModeRun, bind: ModeRun) -> dict[str, Any]:
    if copy.error or bind.error or not copy.logits or len(copy.logits) != len(bind.logits):
        return {"compared": False, "identical": None, "argmax_agree": None, "max_abs_diff": None}
    diffs = [float(np.max(np.abs(a - b))) for a, b in zip(copy.logits, bind.logits, strict=True)]
    agree = sum(int(np.argmax(a) == np.argmax(b)) for a, b in zip(copy.logits, bind.logits, strict=True))
    return {"compared": True, "steps": len(diffs), "identical": max(diffs) == 0.0,
            "argmax_agree": f"{agree}/{len(diffs)}", "max_abs_diff": max(diffs),
            "first_differing_step": next((i for i, d in enumerate(diffs) if d), None)}


def choose(copy: ModeRun, bind: ModeRun, comparison: dict[str, Any]) -> tuple[KvWrite, str]:
    if copy.error and bind.error:
        raise CalibrationError(f"neither KV write mode runs on this card: copy: {copy.error}; bind: {bind.error}")
    if copy.error:
        return "bind", f"copy failed ({copy.error}); bind ran"
    if bind.error:
        return "copy", f"bind failed ({bind.error})"
    if not comparison["identical"]:
        return "copy", (f"bind changed the logits (max |diff| {comparison['max_abs_diff']:.4g}, argmax agree "
                        f"{comparison['argmax_agree']}): the NPU does not tolerate the aliased K/V outputs")
    # On the simulated card the wall time is mostly the CPU twin's own compute: compare its device clock.
    basis = "simulated device time" if copy.device_ms and bind.device_ms else "wall time"
    copy_ms, bind_ms = copy.cost_per_token(basis), bind.cost_per_token(basis)
    if bind_ms < copy_ms * (1 - BIND_MARGIN):
        return "bind", f"identical logits and {copy_ms:.2f} -> {bind_ms:.2f} ms per token ({basis})"
    return "copy", (f"identical logits but bind is not {BIND_MARGIN:.0%} faster ({copy_ms:.2f} vs {bind_ms:.2f} ms "
                    f"per token, {basis}): the vendor's path stays")


def resolve_card(files: ModelFiles, backend: str) -> tuple[str, Any]:
    """The backend that calibrates (axcl or simulated) and its module."""
    if backend == "auto":
        backend = "simulated" if files.kind == "onnx" else "axcl"
    if backend == "simulated":
        if files.kind != "onnx":
            raise CalibrationError("the simulated card runs CPU twins (.onnx); calibrate a vendor bundle on the card")
        import os

        from ..runtime.simcard import DEFAULT_PRESET, SimCard

        return backend, SimCard(os.environ.get("AX_LLM_SIM_PRESET", DEFAULT_PRESET))
    if backend != "axcl":
        raise CalibrationError(f"calibration measures the axcl backend's card path; --backend {backend} has none "
                               "(use axcl on the card, or simulated)")
    from ..runtime.axcl_device import import_axcl

    try:
        return backend, import_axcl()
    except ImportError as exc:
        raise CalibrationError(str(exc)) from exc


def calibrate(path: Path, name: str, *, backend: str = "auto", device: int = 0, steps: int = 16, reps: int = 3,
              progress: Progress | None = None) -> tuple[CalibrationRecord, dict[str, Any]]:
    """Run steps 1-3: the record to store and the report so far (report.py stores both and generates)."""
    def stage(text: str, done: int) -> None:
        log.info("calibration: %s", text)
        if progress is not None:
            progress(text, done, STAGES)

    started = time.perf_counter()
    files = scan_model_dir(path)
    backend, module = resolve_card(files, backend)
    runtime = runtime_of(module, "simulated" if backend == "simulated" else "axcl")
    if runtime is None:
        raise CalibrationError("axcl.rt.get_version() does not answer: the runtime is not usable (see the log)")
    tokenizer = ChatTokenizer(files.tokenizer_dir)
    prompt = tokenizer.encode(tokenizer.render_chat([{"role": "user", "content": PROMPT}]))
    tables: dict[int, EmbeddingTable] = {}

    def embeddings(hidden: int) -> EmbeddingTable:
        if hidden not in tables:
            tables[hidden] = EmbeddingTable(files.embedding, hidden=hidden)
        return tables[hidden]

    stage("kv_write=copy", 0)
    copy = run_mode(files, backend, device, module, "copy", prompt, None, steps, embeddings, reps)
    stage("kv_write=bind", 1)
    bind = run_mode(files, backend, device, module, "bind", prompt, copy.forced or None, steps, embeddings, reps)
    comparison = compare(copy, bind)
    kv_write, reason = choose(copy, bind, comparison)
    chosen = copy if kv_write == "copy" else bind
    stage("per-call costs and fault codes", 2)
    harness = Harness(module, device, str(files.layers[0]), str(files.post))
    try:
        calls = call_costs(harness)
        faults = fault_probes(harness)
    finally:
        harness.close()
    head = next((c.wall_ms for c in calls if "lm-head" in c.what), None)
    record = CalibrationRecord(model=name, model_dir=str(path), runtime=runtime, kv_write=kv_write,
                               kv_write_reason=reason, bind_logits_identical=comparison["identical"],
                               decode_ms_per_token={r.mode: round(r.ms_per_token, 3) for r in (copy, bind)
                                                    if r.ms_per_token is not None},
                               head_ms=head, group_costs=chosen.groups)
    report: dict[str, Any] = {
        "schema": 1, "ax_llm_provider": __version__, "host": f"{platform.machine()} {platform.platform()}",
        "model": name, "model_dir": str(path), "backend": backend, "card": device,
        "runtime": runtime.model_dump(), "simulated": backend == "simulated",
        "kv_write": {"chosen": kv_write, "reason": reason, "comparison": comparison,
                     "modes": {r.mode: {"error": r.error, "decode_ms_per_token": r.ms_per_token,
                                        "device_ms_per_token": r.device_ms_per_token,
                                        "groups": [g.model_dump() for g in r.groups]} for r in (copy, bind)}},
        "call_costs": [c.model_dump() for c in calls],
        "faults": [f.model_dump() for f in faults],
        "record": record.model_dump(mode="json", by_alias=True),
        "seconds": round(time.perf_counter() - started, 2),
    }
    return record, report


__all__ = ["CalibrationError", "calibrate"]
