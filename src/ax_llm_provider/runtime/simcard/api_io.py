"""`axcl.rt.engine_*` I/O description and IO-buffer functions of the simulated card (docs/sdk-notes.md).

Validation follows the [impl] notes: bad dims index/group -> INVALID_INDEX, bad size index -> the uint64 cast of
INVALID_INDEX, unknown name -> ILLEGAL_PARAM as int32 (not -1), unset slots -> (None, 0, 0). The by-name buffer
functions reproduce the published bug: the name always matches the FIRST tensor.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import axcl_codes as codes
from .api import GUARD, api
from .memory import Block, Fail
from .models import ModelDesc, TensorDesc

if TYPE_CHECKING:
    from .card import SimCard


@dataclass
class Slot:
    ptr: int | None = None
    size: int = 0
    block: Block | None = None  # resolved when bound, so execute needs no lookup
    offset: int = 0


@dataclass
class SimIO:
    model_id: int
    inputs: list[Slot] = field(default_factory=list)
    outputs: list[Slot] = field(default_factory=list)


class IoApi:
    card: SimCard

    def _model(self, model_id: int) -> ModelDesc:
        desc = self.card.models.get(model_id) if model_id else None
        if desc is None:
            raise Fail(codes.ERR_ENGINE_ILLEGAL_PARAM, f"unknown model id {model_id}")
        return desc

    # -- io info -------------------------------------------------------------------------------

    @api((None, GUARD), context=True, rpc=True)
    def engine_get_io_info(self, model_id: int) -> tuple[int | None, int]:
        self._model(model_id)
        info = self.card.new_handle("io_info")
        self.card.io_infos[info] = model_id
        return (info, 0)

    @api(GUARD, context=True)
    def engine_destroy_io_info(self, io_info: int) -> int:
        if not io_info:
            return GUARD
        self.card.io_infos.pop(io_info, None)
        return 0

    def _info(self, io_info: int) -> ModelDesc:
        model_id = self.card.io_infos.get(io_info)
        if model_id is None or model_id not in self.card.models:
            raise Fail(codes.ERR_ENGINE_NULL_POINTER, f"unknown io_info {io_info}")
        return self.card.models[model_id]

    @api((0, GUARD), context=True)
    def engine_get_shape_groups_count(self, io_info: int) -> tuple[int, int]:
        return (self._info(io_info).groups, 0) if io_info else (0, GUARD)

    @api(0, value=True, context=True)
    def engine_get_num_inputs(self, io_info: int) -> int:
        return len(self._info(io_info).inputs) if io_info else 0

    @api(0, value=True, context=True)
    def engine_get_num_outputs(self, io_info: int) -> int:
        return len(self._info(io_info).outputs) if io_info else 0

    def _size(self, tensors: tuple[TensorDesc, ...], groups: int, group: int, index: int) -> int:
        if not (0 <= index < len(tensors) and 0 <= group < groups):
            return codes.SIZE_INVALID_INDEX  # the uint64 cast of INVALID_INDEX, not 0
        return tensors[index].size(group)

    @api(0, value=True, context=True)
    def engine_get_input_size_by_index(self, io_info: int, group: int, index: int) -> int:
        if not io_info:
            return 0
        d = self._info(io_info)
        return self._size(d.inputs, d.groups, group, index)

    @api(0, value=True, context=True)
    def engine_get_output_size_by_index(self, io_info: int, group: int, index: int) -> int:
        if not io_info:
            return 0
        d = self._info(io_info)
        return self._size(d.outputs, d.groups, group, index)

    @api(None, value=True, context=True)
    def engine_get_input_name_by_index(self, io_info: int, index: int) -> str | None:
        tensors = self._info(io_info).inputs if io_info else ()
        return tensors[index].name if 0 <= index < len(tensors) else None

    @api(None, value=True, context=True)
    def engine_get_output_name_by_index(self, io_info: int, index: int) -> str | None:
        tensors = self._info(io_info).outputs if io_info else ()
        return tensors[index].name if 0 <= index < len(tensors) else None

    def _index(self, tensors: tuple[TensorDesc, ...], name: str) -> int:
        for i, t in enumerate(tensors):
            if t.name == name:
                return i
        return codes.signed(codes.ERR_ENGINE_ILLEGAL_PARAM)  # not -1

    @api(GUARD, value=True, context=True)
    def engine_get_input_index_by_name(self, io_info: int, name: str) -> int:
        return self._index(self._info(io_info).inputs, name) if io_info and name else GUARD

    @api(GUARD, value=True, context=True)
    def engine_get_output_index_by_name(self, io_info: int, name: str) -> int:
        return self._index(self._info(io_info).outputs, name) if io_info and name else GUARD

    def _dims(self, tensors: tuple[TensorDesc, ...], groups: int, group: int, index: int) -> tuple[list[int], int]:
        if not (0 <= index < len(tensors) and 0 <= group < groups):
            raise Fail(codes.ERR_ENGINE_INVALID_INDEX, f"dims of tensor {index} group {group}")
        return (list(tensors[index].dims[group]), 0)

    @api(([], GUARD), context=True)
    def engine_get_input_dims(self, io_info: int, group: int, index: int) -> tuple[list[int], int]:
        if not io_info:
            return ([], GUARD)
        d = self._info(io_info)
        return self._dims(d.inputs, d.groups, group, index)

    @api(([], GUARD), context=True)
    def engine_get_output_dims(self, io_info: int, group: int, index: int) -> tuple[list[int], int]:
        if not io_info:
            return ([], GUARD)
        d = self._info(io_info)
        return self._dims(d.outputs, d.groups, group, index)

    def _per_tensor(self, tensors: tuple[TensorDesc, ...], index: int, value: int | None) -> tuple[int, int]:
        if not 0 <= index < len(tensors):
            raise Fail(codes.ERR_ENGINE_ILLEGAL_PARAM, f"tensor index {index}")
        return (tensors[index].dtype if value is None else value, 0)

    @api((0, GUARD), context=True)
    def engine_get_input_data_type(self, io_info: int, index: int) -> tuple[int, int]:
        return self._per_tensor(self._info(io_info).inputs, index, None) if io_info else (0, GUARD)

    @api((0, GUARD), context=True)
    def engine_get_output_data_type(self, io_info: int, index: int) -> tuple[int, int]:
        return self._per_tensor(self._info(io_info).outputs, index, None) if io_info else (0, GUARD)

    @api((0, GUARD), context=True)
    def engine_get_input_data_layout(self, io_info: int, index: int) -> tuple[int, int]:
        return self._per_tensor(
            self._info(io_info).inputs, index, codes.AXCL_DATA_LAYOUT_NONE) if io_info else (0, GUARD)

    @api((0, GUARD), context=True)
    def engine_get_output_data_layout(self, io_info: int, index: int) -> tuple[int, int]:
        return self._per_tensor(
            self._info(io_info).outputs, index, codes.AXCL_DATA_LAYOUT_NONE) if io_info else (0, GUARD)

    # -- io and buffers --------------------------------------------------------------------------

    @api((None, GUARD), context=True)
    def engine_create_io(self, io_info: int) -> tuple[int | None, int]:
        if not io_info:
            return (None, GUARD)
        desc = self._info(io_info)
        io = self.card.new_handle("io")
        self.card.ios[io] = SimIO(self.card.io_infos[io_info], [Slot() for _ in desc.inputs],
                                  [Slot() for _ in desc.outputs])
        return (io, 0)

    @api(GUARD, context=True)
    def engine_destroy_io(self, io: int) -> int:
        if not io:
            return GUARD
        if self.card.ios.pop(io, None) is None:
            raise Fail(codes.ERR_ENGINE_NULL_POINTER, f"unknown io {io}")
        return 0  # the caller owns the buffers: nothing is freed

    def _slots(self, io: int, outputs: bool) -> list[Slot]:
        sim_io = self.card.ios.get(io)
        if sim_io is None:
            raise Fail(codes.ERR_ENGINE_NULL_POINTER, f"unknown io {io}")
        return sim_io.outputs if outputs else sim_io.inputs

    def _set(self, io: int, index: int, data_buffer: int | None, size: int, outputs: bool) -> int:
        if not io:
            return GUARD
        slots = self._slots(io, outputs)
        if not data_buffer:
            raise Fail(codes.ERR_ENGINE_NULL_POINTER, "NULL data buffer")
        if size == 0 or not 0 <= index < len(slots):
            raise Fail(codes.ERR_ENGINE_ILLEGAL_PARAM, f"index {index} size {size}")
        slot = slots[index]
        block = slot.block
        slot.ptr, slot.size = data_buffer, int(size)
        if block is not None and block.base <= data_buffer < block.base + block.data.size:
            slot.offset = data_buffer - block.base  # re-pointed inside the same allocation (the per-token case)
            return 0
        slot.block = None
        with contextlib.suppress(Fail):  # resolved now so execute is cheap; a bad pointer fails at execute
            slot.block, slot.offset = self.card.memory.resolve(data_buffer, 1)
        return 0

    def _get(self, io: int, index: int, outputs: bool) -> tuple[int | None, int, int]:
        if not io:
            return (None, 0, GUARD)
        slots = self._slots(io, outputs)
        if not 0 <= index < len(slots):
            raise Fail(codes.ERR_ENGINE_ILLEGAL_PARAM, f"index {index}")
        return (slots[index].ptr, slots[index].size, 0)

    @api(GUARD, context=True)
    def engine_set_input_buffer_by_index(self, io: int, index: int, data_buffer: int, size: int) -> int:
        return self._set(io, index, data_buffer, size, False)

    @api(GUARD, context=True)
    def engine_set_output_buffer_by_index(self, io: int, index: int, data_buffer: int, size: int) -> int:
        return self._set(io, index, data_buffer, size, True)

    @api(GUARD, context=True)
    def engine_set_input_buffer_by_name(self, io: int, name: str, data_buffer: int, size: int) -> int:
        return self._set(io, 0, data_buffer, size, False) if name else GUARD  # published bug: first tensor

    @api(GUARD, context=True)
    def engine_set_output_buffer_by_name(self, io: int, name: str, data_buffer: int, size: int) -> int:
        return self._set(io, 0, data_buffer, size, True) if name else GUARD

    @api((None, 0, GUARD), context=True)
    def engine_get_input_buffer_by_index(self, io: int, index: int) -> tuple[int | None, int, int]:
        return self._get(io, index, False)

    @api((None, 0, GUARD), context=True)
    def engine_get_output_buffer_by_index(self, io: int, index: int) -> tuple[int | None, int, int]:
        return self._get(io, index, True)

    @api((None, 0, GUARD), context=True)
    def engine_get_input_buffer_by_name(self, io: int, name: str) -> tuple[int | None, int, int]:
        return self._get(io, 0, False) if name else (None, 0, GUARD)

    @api((None, 0, GUARD), context=True)
    def engine_get_output_buffer_by_name(self, io: int, name: str) -> tuple[int | None, int, int]:
        return self._get(io, 0, True) if name else (None, 0, GUARD)

    @api(GUARD, context=True)
    def engine_set_dynamic_batch_size(self, io: int, batch_size: int) -> int:
        return 0 if io else GUARD
