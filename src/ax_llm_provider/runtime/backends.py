"""Choose and open a backend for a model directory. SDK modules are imported only here, lazily."""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from .protocol import DecoderStack

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from ..model.layout import ModelFiles
    from .planner import Planner

BackendName = Literal["auto", "onnx", "axcl", "axengine", "simulated"]
BACKENDS: tuple[str, ...] = ("auto", "onnx", "axcl", "axengine", "simulated")
# The onnx backend's layouts: "per-layer" (one session per vendor-contract layer graph, as the card runs them;
# the default) or "fused" (all layers in one session, KV bound in place). The default stays per-layer because
# the fused layout measured no faster in wall time with 2 threads (docs/performance.md); flip it when it is.
ONNX_LAYOUTS: tuple[str, ...] = ("fused", "per-layer")
ONNX_LAYOUT_ENV = "AX_LLM_ONNX_LAYOUT"
DEFAULT_ONNX_LAYOUT = "per-layer"


class BackendUnavailableError(RuntimeError):
    """The chosen backend cannot run here; the message says what to install or choose instead."""


def resolve_backend(files: ModelFiles, backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if files.kind == "onnx":
        return "onnx"
    if importlib.util.find_spec("axcl") is not None:
        return "axcl"
    if importlib.util.find_spec("axengine") is not None:
        return "axengine"
    raise BackendUnavailableError(
        f"{files.root} is a vendor bundle (.axmodel) but neither pyaxcl (module axcl) nor pyaxengine is "
        "installed; install the vendor wheels on the Pi (docs/hardware.md) or convert a CPU twin with `ax-llm convert`"
    )


def check_backend(files: ModelFiles, name: str) -> None:
    """Fail fast (before any expensive load) when the backend cannot run these files."""
    if name == "onnx" and files.kind != "onnx":
        raise BackendUnavailableError(f"the onnx backend runs CPU twins (.onnx); {files.root} holds .axmodel files")
    if name == "simulated" and files.kind != "onnx":
        raise BackendUnavailableError(
            f"the simulated card executes CPU twins (.onnx), not compiled .axmodel files; {files.root} is a vendor "
            "bundle: run it on the card (backend axcl) or convert the original checkpoint with `ax-llm convert`"
        )


def open_stack(files: ModelFiles, backend: str = "auto", device: int = 0, threads: int | None = None, *,
               axcl: Any | None = None, progress: Callable[[int, int], None] | None = None,
               cmm_floor_mb: int | None = None, kv_write: str | None = None,
               prefill_planner: bool = True, onnx_layout: str | None = None) -> DecoderStack:
    """Open the decoder stack of `files` on the chosen backend.

    For the card backends only: `axcl` is the module to drive (default `import axcl`; for "simulated", the
    SimCard, default `simcard.card_from_env()`), `progress(done, total)` is called after each
    model file, `cmm_floor_mb` is the CMM that must stay free after the load (AxclDecoderStack's default),
    `kv_write` is "d2d" (the vendor's copy) or "bind" (axcl and simulated only; default: the model's stored
    calibration, else "d2d"), `prefill_planner` whether prefill may mix decode steps and chunks by cost
    (runtime/planner.py; on the card only: the CPU twin's cost scales with the tokens, so plain chunks are
    already its cheapest plan).
    `onnx_layout` (onnx only): one of ONNX_LAYOUTS; default $AX_LLM_ONNX_LAYOUT, else DEFAULT_ONNX_LAYOUT.
    """
    name = resolve_backend(files, backend)
    check_backend(files, name)
    if name == "onnx":
        layout = onnx_layout or os.environ.get(ONNX_LAYOUT_ENV) or DEFAULT_ONNX_LAYOUT
        if layout not in ONNX_LAYOUTS:
            raise ValueError(f"unknown onnx layout {layout!r} (from {ONNX_LAYOUT_ENV} or onnx_layout); "
                             f"choose one of {', '.join(ONNX_LAYOUTS)}")
        if layout == "per-layer":
            from .onnx_backend import OnnxDecoderStack

            return OnnxDecoderStack(files.layers, files.post, threads=threads)
        from .onnx_fused import FusedOnnxDecoderStack

        return FusedOnnxDecoderStack(files.layers, files.post, threads=threads)
    card_options: dict[str, Any] = {"device_index": device, "progress": progress}
    if cmm_floor_mb is not None:
        card_options["cmm_floor_mb"] = cmm_floor_mb
    if kv_write is not None and name not in ("axcl", "simulated"):
        raise ValueError(f"kv_write applies to the axcl and simulated backends, not {name}")
    if name == "axengine":
        from .axengine_backend import AxengineDecoderStack

        return AxengineDecoderStack(files.layers, files.post, device_index=device)
    from .axcl_backend import AxclDecoderStack

    if name == "axcl":
        from .axcl_device import import_axcl

        card = axcl if axcl is not None else import_axcl()
    else:  # simulated: the axcl backend's real code path over a simulated card running the twin's graphs
        from .simcard import card_from_env

        card = axcl if axcl is not None else card_from_env()
    from ..calibration.record import calibrated_kv_write, load_calibration  # `ax-llm doctor --calibrate`

    chosen = kv_write or calibrated_kv_write(files.root, name, card)
    if chosen is not None:
        card_options["kv_write"] = chosen
    stack = AxclDecoderStack(files.layers, files.post, card, **card_options)
    if prefill_planner:
        stack.planner = _card_planner(stack, name, card, lambda: load_calibration(files.root, name, card))
    return stack


def _card_planner(stack: DecoderStack, name: str, card: Any, calibration: Callable[[], Any]) -> Planner | None:
    """The cost-based prefill planner (runtime/planner.py) for the card: costs from the simulated card's timing
    model, or from the real card's calibration record; None (plain chunks) when there is none."""
    from .planner import PrefillCosts, costs_from_record, costs_from_timing

    costs: PrefillCosts | None
    if name == "simulated" and hasattr(card, "timing"):
        costs = costs_from_timing(stack.spec, card.timing, kv_d2d=getattr(stack, "kv_d2d", True))
    else:
        record = calibration()
        costs = costs_from_record(stack.spec, record) if record is not None else None
    if costs is None:
        log.info("no prefill costs for this model (run `ax-llm doctor --calibrate`): plain prefill chunks")
        return None
    log.info("prefill planner on, costs from the %s", costs.source)
    return costs.planner()
