"""Geometry of a loaded layer stack (from the runtime's own I/O description) and its device buffer layout.

Groups are recognised as ax-llm does: `indices` with one element is decode, more is prefill; a group's
history capacity is `mask` columns minus tokens (docs/models.md, "Shape groups"). Nothing is hard-coded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from . import axcl_codes as codes
from .axcl_model import EngineModel
from .spec import ShapeGroup, StackSpec

log = logging.getLogger(__name__)

LAYER_INPUTS = ("input", "indices", "mask", "K_cache", "V_cache")
LAYER_OUTPUTS = ("K_cache_out", "V_cache_out", "output")
ALIGN = 256  # sub-buffers inside one allocation start on this boundary (conservative for NPU DMA)
BF16, UINT32 = codes.AXCL_DATA_TYPE_BF16, codes.AXCL_DATA_TYPE_UINT32


def align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class StackFormatError(ValueError):
    """The loaded models do not form a decoder stack this backend can drive."""


def _check_dtypes(model: EngineModel) -> None:
    for t in (*model.inputs.values(), *model.outputs.values()):
        want = UINT32 if t.name == "indices" else BF16
        if t.dtype != want:
            raise StackFormatError(f"{model.path}: tensor {t.name} has data type {t.dtype}, expected {want} "
                                   "(bf16 activations, uint32 indices); this bundle is not a w8a16/w4a16 LLM build")


def read_stack_spec(layers: Sequence[EngineModel], post: EngineModel) -> StackSpec:
    first = layers[0]
    first.require(LAYER_INPUTS, LAYER_OUTPUTS)
    post.require(("input",), ("output",))
    _check_dtypes(first)
    signature = {n: t.dims for n, t in (*first.inputs.items(), *first.outputs.items())}
    for model in layers[1:]:
        model.require(LAYER_INPUTS, LAYER_OUTPUTS)
        other = {n: t.dims for n, t in (*model.inputs.items(), *model.outputs.items())}
        if other != signature:
            raise StackFormatError(f"{model.path} has other tensors or shape groups than {first.path}; "
                                   "the layer files come from different builds")
    ins = first.inputs
    groups = []
    for g in range(first.groups):
        tokens = ins["indices"].elements(g)
        columns = ins["mask"].dims[g][-1]
        groups.append(ShapeGroup(g, tokens, columns - tokens, ins["K_cache"].dims[g][1]))
    try:
        spec = StackSpec(layers=len(layers), hidden=ins["input"].dims[0][-1],
                         kv_dim=first.outputs["K_cache_out"].dims[0][-1], vocab=post.outputs["output"].dims[0][-1],
                         groups=tuple(groups), io_dtype="bfloat16")
    except ValueError as exc:
        raise StackFormatError(f"{first.path}: {exc}") from exc
    for decode in spec.decode_groups:
        if decode.kv_rows != decode.history:
            raise StackFormatError(f"{first.path}: decode group {decode.index} has K_cache rows {decode.kv_rows} but "
                                   f"mask history {decode.history}; expected both to be its capacity C")
    if post.inputs["input"].sizes[0] != spec.hidden * 2:
        raise StackFormatError(f"{post.path}: input is {post.inputs['input'].dims[0]}, expected [1, 1, {spec.hidden}]")
    return spec


@dataclass(frozen=True)
class Layout:
    """Byte sizes and offsets of the shared device buffers (and their pinned host mirrors).

    decode block:  [input H*2 | pad | indices 4]                  one H2D per token
    prefill block: [input P*H*2 | pad | indices P*4 | pad | mask]  one H2D per chunk (mask sized per group)
    decode masks:  C_g+1 bf16 slots for each decode group g, updated in place (the current-token slot is
                   the last one, so a group's mask cannot be a prefix of a larger group's)
    """

    row_bytes: int  # one K or V row: kv_dim * 2
    kv_rows: int  # rows allocated per layer K and V buffer
    decode_indices_offset: int
    decode_block: int
    decode_masks: tuple[tuple[int, int], ...]  # (decode group index, bytes), one buffer each
    prefill_indices_offset: int
    prefill_mask_offset: int
    prefill_block: int
    hidden_buffer: int  # each of the two ping-pong hidden-state buffers
    kv_scratch: int  # d2d mode: the K_cache_out / V_cache_out landing buffer
    logits: int

    @property
    def decode_mask(self) -> int:
        """Bytes of all decode masks together."""
        return sum(size for _, size in self.decode_masks)

    @property
    def device_bytes_shared(self) -> int:
        return self.decode_block + self.decode_mask + self.prefill_block + 2 * self.hidden_buffer + self.logits

    def device_bytes(self, layers: int, d2d: bool) -> int:
        return 2 * layers * self.kv_rows * self.row_bytes + self.device_bytes_shared + (2 * self.kv_scratch
                                                                                        if d2d else 0)


def plan_layout(spec: StackSpec, layer: EngineModel, post: EngineModel, d2d: bool) -> Layout:
    ins, outs = layer.inputs, layer.outputs
    dec = spec.decode_group.index
    prefill = [g.index for g in spec.prefill_groups]
    idx_off = align(ins["input"].sizes[dec])

    def largest(tensor: str, groups: list[int], output: bool = False) -> int:
        sizes = (outs if output else ins)[tensor].sizes
        return max((sizes[g] for g in groups), default=0)

    p_idx_off = align(largest("input", prefill))
    p_mask_off = p_idx_off + align(largest("indices", prefill))
    all_groups = list(range(layer.groups))
    # bind mode writes a whole P-row chunk at its start row: P rows of slack past C keep it in bounds
    slack = 0 if d2d else spec.prefill_chunk
    return Layout(
        row_bytes=spec.kv_dim * 2,
        kv_rows=spec.decode_capacity + slack,
        decode_indices_offset=idx_off,
        decode_block=idx_off + ins["indices"].sizes[dec],
        decode_masks=tuple((g.index, ins["mask"].sizes[g.index]) for g in spec.decode_groups),
        prefill_indices_offset=p_idx_off,
        prefill_mask_offset=p_mask_off,
        prefill_block=p_mask_off + largest("mask", prefill) if prefill else 0,
        hidden_buffer=max(largest("output", all_groups, True), largest("input", all_groups)),
        kv_scratch=max(largest("K_cache_out", all_groups, True), largest("V_cache_out", all_groups, True)),
        logits=post.outputs["output"].sizes[0],
    )
