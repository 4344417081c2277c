"""`ax-llm doctor`: check the machine, the card and a model, run a smoke generation, print a report.

The report is meant to be pasted into a bug report: every line says what was checked and what was
found. Without a card the device checks say so, and the smoke test can run on the simulated card
(the axcl backend's real code path over a CPU twin) or the onnx backend.
"""

from __future__ import annotations

import ctypes.util
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import __version__

Status = Literal["ok", "warn", "fail", "skip"]
DEVICE_NODE = "/dev/axcl_host"
Progress = Callable[[str, int, int], None]


@dataclass
class Check:
    name: str
    status: Status
    detail: str


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)
    smoke: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, status: Status, detail: str) -> None:
        self.checks.append(Check(name, status, detail))

    @property
    def ok(self) -> bool:
        return not any(c.status == "fail" for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks], "smoke": self.smoke}

    def to_text(self) -> str:
        marks = {"ok": "[ ok ]", "warn": "[warn]", "fail": "[FAIL]", "skip": "[skip]"}
        lines = [f"ax-llm doctor (ax-llm-provider {__version__})"]
        lines += [f"{marks[c.status]} {c.name}: {c.detail}" for c in self.checks]
        if self.smoke:
            lines.append("smoke generation:")
            lines += [f"    {k}: {v}" for k, v in self.smoke.items()]
        lines.append("result: " + ("no blocking problem found" if self.ok else "problems found (see [FAIL] lines)"))
        return "\n".join(lines)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def check_environment(report: DoctorReport) -> None:
    report.add("python", "ok", f"{platform.python_version()} on {platform.machine()} ({platform.platform()})")
    report.add("packages", "ok", ", ".join(f"{p} {_version(p)}" for p in ("numpy", "onnxruntime", "transformers")))


def _lspci_axera() -> tuple[Status, str]:
    if shutil.which("lspci") is None:
        return "skip", "lspci not installed (apt install pciutils)"
    try:
        out = subprocess.run(["lspci"], capture_output=True, text=True, timeout=5, check=False).stdout
    except subprocess.TimeoutExpired:
        return "warn", "lspci did not answer within 5 s"
    lines = [line for line in out.splitlines() if "axera" in line.lower() or "0650" in line]
    if lines:
        return "ok", "; ".join(lines)
    return "fail", (
        "no Axera device on the PCIe bus: reseat the card, "
        "check the power supply (> 9 V 3 A or 5 V 3 A HAT+)"
    )


def check_driver(report: DoctorReport) -> bool:
    """Driver, device node, runtime library and SDK wheels. True when a card looks usable."""
    status, detail = _lspci_axera()
    report.add("pcie", status, detail)
    node = os.path.exists(DEVICE_NODE)
    report.add("driver", "ok" if node else "fail" if status == "ok" else "skip",
               f"{DEVICE_NODE} present" if node else
               f"{DEVICE_NODE} missing: after a kernel upgrade run `sudo dkms autoinstall -k $(uname -r); "
               "sudo modprobe axcl_host`, or reinstall the axclhost package")
    lib_dir = os.getenv("AXCL_LIB_PATH", "/usr/lib/axcl")
    lib = Path(lib_dir) / "libaxcl_rt.so"
    found = lib.exists() or ctypes.util.find_library("axcl_rt") is not None
    report.add("runtime library", "ok" if found else "skip" if not node else "fail",
               str(lib) if lib.exists() else ("found by the loader" if found else f"libaxcl_rt.so not in {lib_dir}"))
    for module, wheel in (("axcl", "pyAXCL"), ("axengine", "pyaxengine")):
        present = importlib.util.find_spec(module) is not None
        report.add(f"sdk {module}", "ok" if present else "skip" if not node else "warn",
                   f"{wheel} installed"
                   if present else f"{wheel} wheel not installed (not on PyPI: see docs/hardware.md)")
    return node and importlib.util.find_spec("axcl") is not None


def check_devices(report: DoctorReport, device: int) -> dict[str, Any]:
    """Device list, index mapping, temperature and CMM through the runtime (never through axcl-smi)."""
    from .runtime.axcl_device import AxclRuntime, import_axcl
    from .runtime.axcl_props import get_device_properties, load_lib
    from .runtime.errors import DeviceError

    info: dict[str, Any] = {}
    try:
        runtime = AxclRuntime.acquire(import_axcl(), device)
    except (DeviceError, ImportError) as exc:
        report.add("device", "fail", str(exc))
        return info
    try:
        report.add("device", "ok", f"card index {device} (0-based, into the runtime's device list) = runtime device "
                   f"id {runtime.device_id} (bus-derived); compare with the Bus-Id column of `axcl-smi`")
        props = get_device_properties(load_lib(), runtime.device_id)
        info = {"temperature_c": props.temperature_c, "free_cmm_mb": props.free_cmm_kb // 1024,
                "total_cmm_mb": props.total_cmm_kb // 1024, "firmware": props.sw_version}
        hot = props.temperature_c >= 75
        report.add("temperature", "warn" if hot else "ok", f"{props.temperature_c:.1f} °C")
        report.add("cmm", "ok", f"{info['free_cmm_mb']} MB free of {info['total_cmm_mb']} MB")
    except (DeviceError, OSError) as exc:
        report.add("device properties", "warn", f"could not read: {exc}")
    finally:
        runtime.release()
    return info


def owner_of_card(report: DoctorReport, device: int) -> dict[str, Any] | None:
    """The card's readings from the process that holds it (its status channel), or None when nobody does.

    A live owner means this process must not open the card: on hardware the open fails, and the property
    call would set up and reset the device under the owner's feet (docs/health.md).
    """
    from .status_channel import read_status

    status = read_status(device)
    if status is None:
        return None
    if not status.alive:
        report.add("card owner", "warn", f"stale status channel {status.path} from {status.describe_owner()}, "
                   "which no longer runs: ignored")
        return None
    health = status.health
    report.add("card owner", "ok" if status.fresh else "warn",
               f"{health.get('device', f'card {device}')} is held by {status.describe_owner()}; readings from its "
               f"status channel ({status.age_s:.1f} s old), the card itself was not opened"
               + ("" if status.fresh else ": the owner stopped publishing, it may be hung"))
    state = str(health.get("state"))
    report.add("owner engine", "ok" if state in ("ok", "idle", "loading", "warn") else "fail",
               f"state {state}, models {', '.join(health.get('models') or []) or 'none'}, queue "
               f"{health.get('queue')}" + "".join(f"; {w}" for w in health.get("warnings") or []))
    temp = health.get("temperature_c")
    if temp is None:
        report.add("temperature", "skip", "the owner has not read the card yet (it reads while a model is loaded)")
    else:
        report.add("temperature", "warn" if temp >= 75 else "ok", f"{temp:.1f} °C (read by the owner)")
    if health.get("cmm_free_mb") is not None:
        report.add("cmm", "ok", f"{health['cmm_free_mb']:.0f} MB free of {health['cmm_total_mb']:.0f} MB "
                   "(read by the owner)")
    return {"owner_pid": status.pid, "free_cmm_mb": None}


def check_checksums(report: DoctorReport, name: str, path: Path, progress: Progress | None = None) -> bool:
    """Every byte of every file against the sha256 recorded when the model was written; names each bad file.

    False when a file is damaged or missing (an unrecorded model is only warned about)."""
    from .model.checksums import CHECKSUMS_NAME, repair_hint, verify_files
    from .model.errors import ModelError

    try:
        found = verify_files(path, progress)
    except ModelError as exc:
        report.add("checksums", "fail", str(exc))
        return False
    if not found.recorded:
        report.add("checksums", "warn", f"no {CHECKSUMS_NAME} (written by an older ax-llm), files not verified: "
                   f"`ax-llm pull --force {name}` fetches or converts it again and records them")
    elif found.ok:
        report.add("checksums", "ok", f"{found.checked} files match the sha256 recorded when the model was written")
    else:
        for rel, problem in sorted(found.problems.items()):
            report.add("checksums", "fail", f"{path / rel} {problem}")
        report.add("checksums", "fail", f"{len(found.problems)} of {found.checked} files damaged or missing; "
                   f"{repair_hint(name, path)}")
    return found.ok


def check_model(report: DoctorReport, model: str, store_dir: str | None, free_cmm_mb: int | None,
                progress: Progress | None = None) -> Path | None:
    from .model.errors import ModelError
    from .model.layout import scan_model_dir
    from .model.store import ModelStore

    try:
        stored = ModelStore(store_dir).resolve(model)
    except (ModelError, ValueError) as exc:
        report.add("model", "fail", str(exc))
        return None
    intact = check_checksums(report, stored.name, stored.path, progress)
    try:
        files = scan_model_dir(stored.path)
    except (ModelError, ValueError) as exc:
        report.add("model", "fail", str(exc))
        return None
    size_mb = sum(p.stat().st_size for p in (*files.layers, files.post)) / 1e6
    report.add("model", "ok", f"{stored.name}: {len(files.layers)} layers + post ({files.kind}, {size_mb:.0f} MB of "
               f"graphs), tokenizer {files.tokenizer_dir.name}, no Git LFS pointers")
    if free_cmm_mb is not None and files.kind == "axmodel":
        # The KV cache and IO buffers come on top; the axcl backend checks the exact figure before loading.
        status: Status = "ok" if size_mb < free_cmm_mb * 0.9 else "fail"
        report.add("cmm budget", status, f"model graphs need about {size_mb:.0f} MB, {free_cmm_mb} MB free")
    if not intact:
        report.add("smoke generation", "skip", "the model is damaged (see the checksums lines): repair it first")
        return None
    return stored.path


def smoke_test(report: DoctorReport, path: Path, backend: str, tokens: int) -> None:
    from .engine.engine import Engine
    from .model.store import ModelStore

    engine = Engine(ModelStore(path.parent.parent), backend=backend, keep_alive=-1, auto_pull=False)
    try:
        started = time.perf_counter()
        load = list(engine.chat({"model": str(path), "messages": []}))[-1]
        stream = engine.chat({"model": str(path), "messages": [{"role": "user", "content": "Say hello."}],
                              "options": {"temperature": 0, "num_predict": tokens}})
        t0 = time.perf_counter()
        chunks = [next(stream)]
        ttft = time.perf_counter() - t0
        chunks += list(stream)
        final = chunks[-1]
        text = "".join(c["message"]["content"] for c in chunks)
        eval_s = final.get("eval_duration", 0) / 1e9
        report.smoke = {
            "backend": final["ax"]["backend"], "load_s": round(load.get("load_duration", 0) / 1e9, 2),
            "ttft_ms": round(ttft * 1000, 1), "prompt_tokens": final.get("prompt_eval_count"),
            "generated_tokens": final.get("eval_count"),
            "decode_tok_s": round(final.get("eval_count", 0) / eval_s, 2) if eval_s else None,
            "wall_s": round(time.perf_counter() - started, 2), "text": text[:120],
        }
        if backend == "simulated":
            report.smoke["note"] = ("simulated card: wall times include executing the twin on this CPU; "
                                    "`ax-llm bench --backend simulated` gives the projected device figures")
        report.add("smoke generation", "ok" if final.get("eval_count") else "fail",
                   f"{final.get('eval_count')} tokens, done_reason {final.get('done_reason')}")
    except Exception as exc:  # noqa: BLE001 - any failure here is the finding the report must show
        report.add("smoke generation", "fail", f"{type(exc).__name__}: {exc}")
    finally:
        engine.close()


def _needs_card(path: Path, backend: str) -> bool:
    from .model.layout import scan_model_dir

    return backend in ("axcl", "axengine", "simulated") or (backend == "auto" and scan_model_dir(path).kind != "onnx")


def run_doctor(model: str | None = None, *, backend: str = "auto", device: int = 0, tokens: int = 16,
               store_dir: str | None = None, simulated: bool = False,
               progress: Progress | None = None) -> DoctorReport:
    """progress(stage, done, total): verifying the model's checksums reads every byte (a big model takes a while)."""
    report = DoctorReport()
    check_environment(report)
    card = check_driver(report)
    owner = owner_of_card(report, device)
    info = owner or (check_devices(report, device) if card else {})
    if not card and owner is None:
        report.add("card", "skip", "no LLM-8850 card usable from this process: device checks skipped"
                   + ("; running the smoke test on the simulated card" if simulated else ""))
    if model:
        path = check_model(report, model, store_dir, info.get("free_cmm_mb"), progress)
        chosen = "simulated" if simulated else backend
        if path is not None and owner is not None and _needs_card(path, chosen):
            report.add("smoke generation", "skip", f"card {device} is held by PID {owner['owner_pid']}: send the "
                       "request to that process (e.g. `ax-llm serve`'s API), or stop it and run doctor again")
        elif path is not None:
            smoke_test(report, path, chosen, tokens)
    return report


def main_json(report: DoctorReport) -> str:
    return json.dumps(report.to_dict(), indent=2, default=str)


if __name__ == "__main__":  # pragma: no cover - `ax-llm doctor` is the entry point
    result = run_doctor(sys.argv[1] if len(sys.argv) > 1 else None)
    sys.stdout.write(result.to_text() + "\n")
