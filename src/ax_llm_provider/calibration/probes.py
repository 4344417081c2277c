"""Raw runtime calls on this machine: what each one costs, and which codes this runtime returns for faults.

A small harness of its own (one layer model and the post model, every tensor bound to a zeroed device
buffer) rather than the decoder stack's internals, so each call is timed alone. The faults are the ones
that can be provoked without risk to the card: each is refused by the runtime before anything reaches
the NPU (a missing file, an out-of-range shape group or tensor index, an invalid copy direction, a call
from a thread with no context) or is an allocation far larger than any card's memory, freed at once
should it ever succeed.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..runtime import axcl_codes as codes
from ..runtime.axcl_device import AxclRuntime, value
from ..runtime.axcl_model import EngineModel
from ..runtime.errors import check, error_class
from .record import CallCost, FaultProbe

log = logging.getLogger(__name__)
H2D, D2H, D2D = codes.AXCL_MEMCPY_HOST_TO_DEVICE, codes.AXCL_MEMCPY_DEVICE_TO_HOST, codes.AXCL_MEMCPY_DEVICE_TO_DEVICE
HUGE_ALLOCATION = 64 << 30  # more than any AX650 card has (8 GB boards)
MISSING_MODEL = "/nonexistent/ax-llm-calibration-probe.axmodel"


class Harness:
    """Layer 0 and the post model loaded and bound; `close()` releases everything (never raises)."""

    def __init__(self, module: Any, device: int, layer_path: str, post_path: str) -> None:
        self.module = module
        self.clock = getattr(module, "clock", None)  # the simulated card's device clock
        self.runtime = AxclRuntime.acquire(module, device)
        self.rt = self.runtime.rt
        self.device: list[int] = []
        self.host: list[int] = []
        self.models: list[EngineModel] = []
        try:
            self.layer = self._load(layer_path)
            self.post = self._load(post_path)
            self.buffers = {model.path: self._bind(model) for model in self.models}
            self.pinned = self._malloc_host(self.largest, "pinned staging")
        except BaseException:
            self.close()
            raise

    def _load(self, path: str) -> EngineModel:
        self.models.append(EngineModel(self.runtime, path))
        return self.models[-1]

    def _malloc(self, size: int, what: str) -> int:
        ptr = value(self.rt.malloc(size, codes.AXCL_MEM_MALLOC_HUGE_FIRST), "axcl.rt.malloc", what)
        self.device.append(ptr)
        check(self.rt.memset(ptr, 0, size), "axcl.rt.memset", what)  # no stale NaNs or wild indices
        return ptr

    def _malloc_host(self, size: int, what: str) -> int:
        ptr = value(self.rt.malloc_host(size), "axcl.rt.malloc_host", what)
        self.host.append(ptr)
        return ptr

    def _bind(self, model: EngineModel) -> dict[str, tuple[int, int]]:
        bound: dict[str, tuple[int, int]] = {}
        for output, tensors in ((False, model.inputs), (True, model.outputs)):
            for name, info in tensors.items():
                size = max(info.sizes)
                ptr = self._malloc(size, f"{name} of {model.path}")
                bound[name] = (ptr, size)
                for g in range(model.groups):
                    model.bind(g, name, ptr, info.sizes[g], output=output)
        return bound

    @property
    def largest(self) -> int:
        return max(size for bound in self.buffers.values() for _, size in bound.values())

    def close(self) -> None:
        for model in reversed(self.models):
            model.close()
        for fn, ptrs in ((self.rt.free, self.device), (self.rt.free_host, self.host)):
            for ptr in ptrs:
                ret = fn(ptr)
                if ret:
                    log.warning("calibration harness: freeing %#x -> %d", ptr, ret)
        self.models, self.device, self.host = [], [], []
        self.runtime.release()


def _time(call: Callable[[], int], samples: int, clock: Any) -> tuple[float, float | None]:
    walls, devices = [], []
    for _ in range(samples):
        device0 = clock.device_ms if clock is not None else 0.0
        started = time.perf_counter()
        ret = call()
        walls.append((time.perf_counter() - started) * 1e3)
        if ret:
            raise error_class(ret)(ret, "calibration timing", "a call that worked a moment ago failed")
        if clock is not None:
            devices.append(clock.device_ms - device0)
    return statistics.median(walls), (statistics.median(devices) if devices else None)


def call_costs(h: Harness, samples: int = 20) -> list[CallCost]:
    """Median cost of execute (decode / prefill group, lm-head), each memcpy kind and the host-side setters."""
    rt, layer, post = h.rt, h.layer, h.post
    groups = [(g, layer.inputs["indices"].elements(g)) for g in range(layer.groups)]
    decode = next((g for g, rows in groups if rows == 1), 0)
    prefill = next((g for g, rows in groups if rows > 1), None)
    hidden_ptr, _ = h.buffers[layer.path]["input"]
    hidden_row = layer.inputs["input"].sizes[decode]  # [1, 1, hidden] in the decode group
    logits_ptr, logits_size = h.buffers[post.path]["output"]
    k_ptr, _ = h.buffers[layer.path]["K_cache"]
    k_out, _ = h.buffers[layer.path]["K_cache_out"]
    row = layer.outputs["K_cache_out"].sizes[decode]
    unpinned = np.zeros(hidden_row, np.uint8)
    k_out_index = layer.outputs["K_cache_out"].index
    cases: list[tuple[str, str, int | None, Callable[[], int]]] = [
        ("axcl.rt.engine_execute", f"layer 0 decode group {decode}", None,
         lambda: rt.engine_execute(layer.model_id, layer.context_id, decode, layer.ios[decode])),
        ("axcl.rt.engine_execute", "lm-head", None,
         lambda: rt.engine_execute(post.model_id, post.context_id, 0, post.ios[0])),
        ("axcl.rt.memcpy", "H2D hidden row, malloc_host memory", hidden_row,
         lambda: rt.memcpy(hidden_ptr, h.pinned, hidden_row, H2D)),
        ("axcl.rt.memcpy", "H2D hidden row, numpy memory", hidden_row,
         lambda: rt.memcpy(hidden_ptr, unpinned.ctypes.data, hidden_row, H2D)),
        ("axcl.rt.memcpy", "D2H logits", logits_size, lambda: rt.memcpy(h.pinned, logits_ptr, logits_size, D2H)),
        ("axcl.rt.memcpy", "D2D K row (kv_write=copy: 2 per layer)", row,
         lambda: rt.memcpy(k_ptr, k_out, row, D2D)),
        ("axcl.rt.memset", "K row", row, lambda: rt.memset(k_out, 0, row)),
        ("axcl.rt.engine_set_output_buffer_by_index", "K_cache_out (kv_write=bind: 2 per layer)", None,
         lambda: rt.engine_set_output_buffer_by_index(layer.ios[decode], k_out_index, k_out, row)),
    ]
    if prefill is not None:
        cases.insert(1, ("axcl.rt.engine_execute", f"layer 0 prefill group {prefill}", None,
                         lambda: rt.engine_execute(layer.model_id, layer.context_id, prefill, layer.ios[prefill])))
    h.runtime.bind_thread()
    out = []
    for call, what, nbytes, fn in cases:
        n = max(3, samples // 4) if "prefill" in what else samples  # a prefill execute is ~100x a decode one
        wall, device = _time(fn, n, h.clock)
        out.append(CallCost(call=call, what=what, bytes=nbytes, wall_ms=round(wall, 4),
                            device_ms=None if device is None else round(device, 4), samples=n))
    return out


def _probe(name: str, call: str, ret: int, note: str = "") -> FaultProbe:
    hex_code = "-1 (pyaxcl guard)" if ret == codes.WRAPPER_GUARD else f"0x{codes.unsigned(ret):08X}"
    return FaultProbe(name=name, call=call, ret=int(ret), hex=hex_code if ret else "0 (accepted)",
                      code_name=codes.code_name(ret) if ret else "success", error_class=error_class(ret).__name__
                      if ret else "-", note=note)


def fault_probes(h: Harness) -> list[FaultProbe]:
    """Provoke the safe faults (module docstring) and record what this runtime returns for each."""
    rt, layer = h.rt, h.layer
    h.runtime.bind_thread()
    probes = []
    model_id, ret = rt.engine_load_from_file(MISSING_MODEL)
    if ret == 0 and model_id:
        rt.engine_unload(model_id)
    probes.append(_probe("load a missing model file", "axcl.rt.engine_load_from_file", ret))
    bad_group = layer.groups + 3
    probes.append(_probe("execute an unknown shape group", "axcl.rt.engine_execute",
                         rt.engine_execute(layer.model_id, layer.context_id, bad_group, layer.ios[0]),
                         f"group {bad_group} of {layer.groups}"))
    ptr, size = h.buffers[layer.path]["input"]
    probes.append(_probe("bind an unknown input index", "axcl.rt.engine_set_input_buffer_by_index",
                         rt.engine_set_input_buffer_by_index(layer.ios[0], 999, ptr, size)))
    probes.append(_probe("copy with an invalid direction", "axcl.rt.memcpy", rt.memcpy(ptr, h.pinned, 2, 99)))
    huge, ret = rt.malloc(HUGE_ALLOCATION, codes.AXCL_MEM_MALLOC_HUGE_FIRST)
    if ret == 0 and huge:
        rt.free(huge)
    probes.append(_probe("allocate more device memory than the card has", "axcl.rt.malloc", ret,
                         f"{HUGE_ALLOCATION >> 30} GiB: the code a real CMM shortage is likely to return"))
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(
        rt.engine_execute(layer.model_id, layer.context_id, 0, layer.ios[0])), name="ax-llm-probe-no-context")
    worker.start()
    worker.join(60)
    probes.append(_probe("execute from a thread with no context bound", "axcl.rt.engine_execute",
                         result[0] if result else codes.WRAPPER_GUARD,
                         "" if result else "the call did not return within 60 s"))
    return probes
