"""The stored calibration of one model on one card runtime: what `ax-llm doctor --calibrate` chose and measured.

One record per model directory, card kind and runtime version, as JSON:

    <model dir>/.calibration/<kind>-<runtime version>.json        e.g. axcl-3.10.2.json, simulated-3.10.2.json

($AX_LLM_CALIBRATION_DIR/<model dir name>-<path hash>/ instead when set, for a read-only model store.)
The axcl backend reads it when it opens that model (runtime/backends.py `open_stack`): the calibrated
`kv_write` is used unless the caller names one. The per-group costs are typed here for a prefill planner.
docs/hardware.md "First contact" describes every field.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger(__name__)

SCHEMA = 1
KvWrite = Literal["copy", "bind"]
CardKind = Literal["axcl", "simulated"]


class Runtime(BaseModel):
    """Which runtime the figures belong to: a new runtime version needs a new calibration."""

    model_config = ConfigDict(extra="forbid")

    kind: CardKind
    version: str = Field(description="axcl.rt.get_version() as major.minor.patch")
    pyaxcl: str | None = Field(None, description="installed pyAXCL wheel version (None for the simulated card)")

    @property
    def key(self) -> str:
        return f"{self.kind}-{self.version}"


class CallCost(BaseModel):
    """Median cost of one runtime call measured on this machine."""

    model_config = ConfigDict(extra="forbid")

    call: str = Field(description="the pyaxcl function, e.g. axcl.rt.engine_execute")
    what: str = Field(description="what was measured, e.g. 'layer 0, decode group'")
    bytes: int | None = Field(None, description="bytes moved, for copies")
    wall_ms: float = Field(description="median host wall time of the call")
    device_ms: float | None = Field(None, description="simulated card only: its timing model's device time")
    samples: int


class GroupCost(BaseModel):
    """What one call of a shape group costs through the whole decoder stack (every layer), median.

    Prefill groups: one `stack.prefill(chunk, start=history, want_logits=False)` of `tokens` rows, i.e. the
    staging upload, one execute per layer and the KV writes, without the lm-head (a planner adds
    `CalibrationRecord.head_ms` once per prompt). Decode group: one `stack.decode()` step, lm-head and logits
    read-back included (what a generated token costs).
    """

    model_config = ConfigDict(extra="forbid")

    group: int = Field(description="shape-group index in the layer models")
    kind: Literal["prefill", "decode"]
    tokens: int = Field(gt=0, description="rows per call: the chunk P for prefill, 1 for decode")
    history: int = Field(ge=0, description="history rows the group sees (Hc; the capacity C for decode)")
    call_ms: float = Field(description="median wall time of one call through all layers")
    ms_per_token: float = Field(description="call_ms / tokens")
    device_ms: float | None = Field(None, description="simulated card only: device time of the same call")
    samples: int


class FaultProbe(BaseModel):
    """One fault provoked on purpose and what this runtime answered."""

    model_config = ConfigDict(extra="forbid")

    name: str
    call: str
    ret: int = Field(description="the signed return value as pyaxcl gave it (-1: pyaxcl's own guard)")
    hex: str
    code_name: str = Field(description="the project's name for the code, or 'unknown'")
    error_class: str = Field(description="the DeviceError subclass the project maps it to")
    note: str = ""


class CalibrationRecord(BaseModel):
    """What the axcl backend uses from then on for this model on this runtime."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_version: int = Field(default=SCHEMA, alias="schema")
    model: str
    model_dir: str
    runtime: Runtime
    created_at: float = Field(default_factory=time.time)
    kv_write: KvWrite = Field(description="the KV write mode the backend uses for this model")
    kv_write_reason: str
    bind_logits_identical: bool | None = Field(None, description="None when bind was not run")
    decode_ms_per_token: dict[str, float] = Field(default_factory=dict, description="per kv_write mode")
    head_ms: float | None = Field(None, description="lm-head execute + logits read-back, median")
    group_costs: list[GroupCost] = Field(default_factory=list)

    def cost(self, group: int) -> GroupCost | None:
        return next((c for c in self.group_costs if c.group == group), None)


def calibration_dir(model_dir: Path) -> Path:
    explicit = os.environ.get("AX_LLM_CALIBRATION_DIR")
    if explicit:
        resolved = model_dir.expanduser().resolve()
        digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:8]
        return Path(explicit).expanduser() / f"{resolved.name}-{digest}"
    return model_dir / ".calibration"


def record_path(model_dir: Path, runtime: Runtime) -> Path:
    return calibration_dir(model_dir) / f"{runtime.key}.json"


def _write_json(target: Path, data: Any) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, target)  # a reader (the backend opening the model) never sees half a record


def save_record(record: CalibrationRecord) -> Path:
    """Store the record where `open_stack` looks for it; returns its path."""
    path = record_path(Path(record.model_dir), record.runtime)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(path, record.model_dump(mode="json", by_alias=True))
    except OSError as exc:
        raise OSError(f"cannot write the calibration {path} ({exc}): set AX_LLM_CALIBRATION_DIR to a writable "
                      "directory") from exc
    return path


def save_report(record: CalibrationRecord, report: dict[str, Any]) -> Path:
    """The full first-contact report, next to the record: `<kind>-<version>.report.json`."""
    path = record_path(Path(record.model_dir), record.runtime)
    report_path = path.with_name(f"{record.runtime.key}.report.json")
    _write_json(report_path, report)
    return report_path


def load_record(model_dir: Path, runtime: Runtime) -> CalibrationRecord | None:
    """The stored record, or None (absent; unreadable ones are logged and ignored, never half-used)."""
    path = record_path(model_dir, runtime)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read the calibration %s: %s; using the defaults", path, exc)
        return None
    try:
        record = CalibrationRecord.model_validate_json(text)
    except ValidationError as exc:
        log.warning("ignoring the calibration %s (%s); run `ax-llm doctor --calibrate` again", path,
                    str(exc).splitlines()[0])
        return None
    if record.schema_version != SCHEMA:
        log.warning("ignoring the calibration %s: schema %d, this version reads %d; run `ax-llm doctor "
                    "--calibrate` again", path, record.schema_version, SCHEMA)
        return None
    return record


def runtime_of(module: Any, kind: CardKind) -> Runtime | None:
    """The runtime behind `module` (pyaxcl or the simulated card), from the host-side version query."""
    try:
        major, minor, patch, ret = module.rt.get_version()
    except (AttributeError, TypeError, ValueError) as exc:
        log.warning("cannot ask the AXCL runtime for its version (%s): no calibration applies", exc)
        return None
    if ret != 0:
        log.warning("axcl.rt.get_version() -> %d: no calibration applies", ret)
        return None
    wheel = None
    if kind == "axcl":
        import importlib.metadata

        try:
            wheel = importlib.metadata.version("pyAXCL")
        except importlib.metadata.PackageNotFoundError:
            wheel = None
    return Runtime(kind=kind, version=f"{major}.{minor}.{patch}", pyaxcl=wheel)


def load_calibration(model_dir: Path, backend: str, module: Any) -> CalibrationRecord | None:
    """The record stored for this model and the runtime behind `module`, or None."""
    kind: CardKind = "simulated" if backend == "simulated" else "axcl"
    runtime = runtime_of(module, kind)
    return load_record(model_dir, runtime) if runtime is not None else None


def calibrated_kv_write(model_dir: Path, backend: str, module: Any) -> KvWrite | None:
    """The kv_write stored for this model and runtime, or None (then the backend's default applies)."""
    record = load_calibration(model_dir, backend, module)
    if record is None:
        return None
    log.info("calibration %s: kv_write=%s (%s)", record_path(model_dir, record.runtime), record.kv_write,
             record.kv_write_reason)
    return record.kv_write
