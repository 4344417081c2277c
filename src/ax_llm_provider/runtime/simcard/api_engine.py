"""`axcl.rt.engine_*` lifecycle, loading and execute of the simulated card (docs/sdk-notes.md, "AXCL runtime").

Choices where the sources say nothing, kept strict so backend bugs surface here rather than on the card:
  * execute checks every bound buffer lies inside one allocation and is at least the group's size;
  * a repeated engine_init succeeds (a field user opens 29 pyaxengine sessions, each calling it, in one
    process; pyaxengine would crash on any non-zero return), `faults.fail_engine_init` provokes the failure;
  * the engine context and io must belong to the executed model;
  * only codes the V3.10.2 headers declare, or native codes passed through (docs/sdk-notes.md, "Error codes").
I/O description and buffer binding live in api_io.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import axcl_codes as codes
from ..bf16 import bf16_to_float32, float32_to_bf16
from .api import GUARD, api
from .api_io import IoApi, Slot
from .memory import Block, Fail
from .models import ModelDesc, TensorDesc, load_twin

if TYPE_CHECKING:
    from .card import SimCard

_NP = {codes.AXCL_DATA_TYPE_UINT32: np.uint32, codes.AXCL_DATA_TYPE_INT32: np.int32,
       codes.AXCL_DATA_TYPE_UINT8: np.uint8, codes.AXCL_DATA_TYPE_INT8: np.int8}


def _decode(raw: np.ndarray, t: TensorDesc, group: int) -> np.ndarray:
    if t.dtype == codes.AXCL_DATA_TYPE_BF16:
        return bf16_to_float32(raw.view(np.uint16)).reshape(t.dims[group])
    if t.dtype in _NP:
        return raw.view(_NP[t.dtype]).reshape(t.dims[group]).copy()
    raise Fail(codes.ERR_ENGINE_AXCL_UNSUPPORTED, f"simulated input dtype {t.dtype}")


def _encode(value: np.ndarray, t: TensorDesc) -> np.ndarray:
    if value.dtype == np.uint8:
        return value  # already raw bytes (null compute)
    if t.dtype == codes.AXCL_DATA_TYPE_BF16:
        return float32_to_bf16(value).view(np.uint8).reshape(-1)
    return np.ascontiguousarray(value, dtype=_NP[t.dtype]).view(np.uint8).reshape(-1)


class EngineApi(IoApi):
    card: SimCard

    # -- lifecycle -----------------------------------------------------------------------------

    @api(GUARD, context=True, rpc=True)
    def engine_init(self, npu_kind: int) -> int:
        card = self.card
        card.require_init()
        if card.faults.engine_init is not None and card.faults.engine_init.trigger():
            raise Fail(card.faults.engine_init.code, "injected engine_init fault")
        if card.engine_vnpu is None:
            card.engine_vnpu = npu_kind
        return 0  # a repeat succeeds: vendor code opens dozens of sessions, each calling it, in one process

    @api((0, GUARD), context=True, rpc=True)
    def engine_get_vnpu_kind(self) -> tuple[int, int]:
        if self.card.engine_vnpu is None:
            raise Fail(codes.ERR_ENGINE_ILLEGAL_PARAM, "engine not initialised")
        return (self.card.engine_vnpu, 0)

    @api(GUARD, context=True, rpc=True)
    def engine_finalize(self) -> int:
        self.card.engine_vnpu = None
        return 0

    def _describe(self, path: str) -> ModelDesc:
        card = self.card
        if path in card.model_files:
            return card.model_files[path]()
        if not os.path.isfile(path):
            raise Fail(codes.ERR_ENGINE_ILLEGAL_PARAM, f"no such model file {path}")
        if not path.endswith(".onnx"):
            raise Fail(codes.ERR_ENGINE_AXCL_UNSUPPORTED, f"the simulated card runs CPU twins (.onnx), not {path}")
        return load_twin(path, card.ort_threads)

    def _load(self, describe: Any) -> tuple[int, int]:
        card = self.card
        card.current_context()
        if card.engine_vnpu is None:
            raise Fail(codes.ERR_ENGINE_ILLEGAL_PARAM, "engine_init was not called")
        if card.faults.load is not None and card.faults.load.trigger():
            raise Fail(card.faults.load.code, "injected load fault")
        desc = card.prepare(describe())
        card.reserve_cmm(desc.cmm_bytes, codes.ERR_ENGINE_EXECUTE_FAIL)  # the device-side failure code
        model_id = card.new_handle("model")
        card.models[model_id] = desc
        return (model_id, 0)

    @api((0, GUARD), context=True, rpc=True)
    def engine_load_from_file(self, model_path: str) -> tuple[int, int]:
        if not model_path:
            return (0, GUARD)
        return self._load(lambda: self._describe(str(model_path)))

    @api((0, GUARD), context=True, rpc=True)
    def engine_load_from_mem(self, model: int, model_size: int) -> tuple[int, int]:
        if not model:
            return (0, GUARD)
        data = bytes(self.card.memory.view(model, model_size))
        return self._load(lambda: load_twin(data, self.card.ort_threads))

    @api(GUARD, context=True, rpc=True)
    def engine_unload(self, model_id: int) -> int:
        self.card.current_context()
        if self.card.models.pop(model_id, None) is None:
            raise Fail(codes.ERR_ENGINE_ILLEGAL_PARAM, f"unknown model {model_id}")
        return 0

    @api(None, value=True, context=True, rpc=True)
    def engine_get_model_compiler_version(self, model_id: int) -> str | None:
        desc = self.card.models.get(model_id)
        return desc.compiler_version if desc else None

    @api(GUARD, context=True, rpc=True)
    def engine_set_affinity(self, model_id: int, mask: int) -> int:
        self._model(model_id)
        if not 1 <= mask <= 0b111:
            raise Fail(codes.ERR_ENGINE_ILLEGAL_PARAM, f"affinity {mask}")
        return 0

    @api((0, GUARD), context=True, rpc=True)
    def engine_get_affinity(self, model_id: int) -> tuple[int, int]:
        self._model(model_id)
        return (0b111, 0)

    @api((0, 0, GUARD), context=True, rpc=True)
    def engine_get_usage(self, model_path: str) -> tuple[int, int, int]:
        if not model_path:
            return (0, 0, GUARD)
        path = str(model_path)
        if path in self.card.model_files:
            return (1 << 20, self.card.model_files[path]().cmm_bytes, 0)
        if not os.path.isfile(path):
            raise Fail(codes.ERR_ENGINE_ILLEGAL_PARAM, f"no such model file {path}")
        return (1 << 20, os.path.getsize(path), 0)

    @api((0, 0, GUARD), context=True, rpc=True)
    def engine_get_usage_from_mem(self, model: int, model_size: int) -> tuple[int, int, int]:
        if not model or model_size <= 0:
            return (0, 0, GUARD)
        return (1 << 20, model_size, 0)

    @api((0, 0, GUARD), context=True, rpc=True)
    def engine_get_usage_from_mode_id(self, model_id: int) -> tuple[int, int, int]:
        return (1 << 20, self._model(model_id).cmm_bytes, 0)

    @api((0, GUARD), context=True, rpc=True)
    def engine_get_model_type(self, model_path: str) -> tuple[int, int]:
        return (codes.AXCL_MODEL_TYPE_1CORE, 0) if model_path else (0, GUARD)

    @api((0, GUARD), context=True, rpc=True)
    def engine_get_model_type_from_mem(self, model: int, model_size: int) -> tuple[int, int]:
        return (codes.AXCL_MODEL_TYPE_1CORE, 0) if model and model_size > 0 else (0, GUARD)

    @api((0, GUARD), context=True, rpc=True)
    def engine_get_model_type_from_model_id(self, model_id: int) -> tuple[int, int]:
        self._model(model_id)
        return (codes.AXCL_MODEL_TYPE_1CORE, 0)

    @api((0, GUARD), context=True, rpc=True)
    def engine_create_context(self, model_id: int) -> tuple[int, int]:
        self._model(model_id)
        ctx = self.card.new_handle("engine_context")
        self.card.engine_contexts[ctx] = model_id
        return (ctx, 0)

    # -- execute -------------------------------------------------------------------------------

    @api(GUARD, context=True)
    def engine_execute(self, model_id: int, context_id: int, group: int, io: int) -> int:
        return self._execute(model_id, context_id, group, io) if io else GUARD

    @api(GUARD, context=True)
    def engine_execute_async(self, model_id: int, context_id: int, group: int, io: int, stream: int) -> int:
        if not io or not stream:
            return GUARD
        return self._execute(model_id, context_id, group, io)  # completes before returning

    def _execute(self, model_id: int, context_id: int, group: int, io: int) -> int:
        card = self.card
        card.current_context()
        if not model_id or not context_id or card.engine_contexts.get(context_id) != model_id:
            raise Fail(codes.ERR_ENGINE_ILLEGAL_PARAM, f"model {model_id} / context {context_id}")
        desc = self._model(model_id)
        sim_io = card.ios.get(io)
        if sim_io is None or sim_io.model_id != model_id:
            raise Fail(codes.ERR_ENGINE_NULL_POINTER if sim_io is None else codes.ERR_ENGINE_ILLEGAL_PARAM,
                       f"io {io} does not belong to model {model_id}")
        if not 0 <= group < desc.groups:
            raise Fail(codes.ERR_ENGINE_ILLEGAL_PARAM, f"shape group {group} of {desc.groups}")
        card.inject_execute_faults()
        live = card.memory.blocks
        feeds = {}
        reads = desc.runner.needs_inputs
        read_ranges = []
        for t, slot in zip(desc.inputs, sim_io.inputs, strict=True):
            view = _slot_view(slot, t, group, live)
            read_ranges.append((slot.block, slot.offset, slot.offset + view.size))
            if reads:
                unread = desc.runner_shapes.get((group, t.name))
                feeds[t.name] = np.zeros(unread, np.float32) if unread else _decode(view, t, group)
        results = desc.runner.run(group, feeds)
        for t, slot in zip(desc.outputs, sim_io.outputs, strict=True):
            view = _slot_view(slot, t, group, live)
            raw = _encode(results[t.name], t)
            if raw.size != view.size:
                raise Fail(codes.ERR_ENGINE_EXECUTE_FAIL, f"{t.name}: model wrote {raw.size} bytes, "
                                                          f"expected {view.size}")
            view[:] = raw
            if card.corrupt_aliased_outputs:
                _corrupt_overlap(view, slot, read_ranges)
        card.counters.executes += 1
        card.charge_execute(desc, group)
        return 0


def _corrupt_overlap(view: np.ndarray, slot: Slot, read_ranges: list[tuple[Block | None, int, int]]) -> None:
    """Write NaN (0xFF bytes) where this output overlaps an input of the same execute: the hazard an NPU
    that streams outputs while still reading inputs would create (undocumented, so only on request)."""
    start, end = slot.offset, slot.offset + view.size
    for block, lo, hi in read_ranges:
        if block is slot.block and lo < end and start < hi:
            view[max(lo, start) - start: min(hi, end) - start] = 0xFF


def _slot_view(slot: Slot, t: TensorDesc, group: int, live: dict[int, Block]) -> np.ndarray:
    need = t.sizes[group]
    block = slot.block
    if slot.ptr is None:
        raise Fail(codes.ERR_ENGINE_NULL_POINTER, f"tensor {t.name} has no buffer bound")
    if slot.size < need:
        raise Fail(codes.ERR_ENGINE_ILLEGAL_PARAM, f"{t.name}: bound {slot.size} bytes, group {group} needs {need}")
    if block is None or live.get(block.base) is not block or slot.offset + need > block.data.size:
        raise Fail(codes.ERR_ENGINE_EXECUTE_FAIL, f"{t.name}: buffer {slot.ptr:#x}+{need} is not device memory")
    return block.data[slot.offset:slot.offset + need]
