"""The vendor tensor contract, written once: masks, positions, group choice and prefill chunking.

Pure functions over numpy, shared by every backend (axcl, axengine, onnx, simulated card).
Conventions (docs/sdk-notes.md, "The tensor contract"; docs/models.md, "Shape groups"; AXERA-TECH/ax-llm
src/runner/LLM_decode.cpp):
  decode  mask [1, 1, C+1]: slot i < C is cache row i, slot C is the current token (always open).
  prefill mask [1, P, Hc+P]: columns [0, hist) open for the valid history, column Hc+j open for j <= i.
Open is 0, blocked is -65536 (additive, in the model's I/O dtype).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .spec import ShapeGroup, StackSpec

MASK_OPEN = 0.0
MASK_BLOCKED = -65536.0


class ContextOverflowError(ValueError):
    """A sequence would need more KV rows than the compiled capacity."""


def decode_mask(pos: int, capacity: int, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """Mask for decoding the token at position `pos`: rows 0..pos-1 and the current slot are open."""
    if not 0 <= pos < capacity:
        raise ContextOverflowError(f"position {pos} is outside the decode capacity {capacity}")
    mask = np.full((1, 1, capacity + 1), MASK_BLOCKED, dtype=np.float32)
    mask[0, 0, :pos] = MASK_OPEN
    mask[0, 0, capacity] = MASK_OPEN
    return mask.astype(dtype, copy=False)


def prefill_mask(history: int, group: ShapeGroup, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """Mask for one prefill chunk that follows `history` valid cache rows.

    Padding rows (past the real tokens) get the same causal pattern, so no row is fully blocked
    (a fully blocked softmax row is NaN on some runtimes); their outputs are discarded.
    """
    if history > group.history:
        raise ValueError(f"history {history} exceeds group {group.index} capacity {group.history}")
    p, hc = group.tokens, group.history
    mask = np.full((1, p, hc + p), MASK_BLOCKED, dtype=np.float32)
    mask[0, :, :history] = MASK_OPEN
    causal = np.tril(np.ones((p, p), dtype=bool))
    mask[0, :, hc:][causal] = MASK_OPEN
    return mask.astype(dtype, copy=False)


def prefill_indices(history: int, count: int, chunk: int) -> np.ndarray:
    """Absolute positions of a chunk: history+i for the real rows, 0 for padding rows."""
    if not 0 < count <= chunk:
        raise ValueError(f"a prefill chunk holds 1..{chunk} tokens, got {count}")
    indices = np.zeros((1, chunk), dtype=np.uint32)
    indices[0, :count] = np.arange(history, history + count, dtype=np.uint32)
    return indices


def decode_indices(pos: int) -> np.ndarray:
    return np.array([[pos]], dtype=np.uint32)


def select_decode_group(spec: StackSpec, pos: int) -> ShapeGroup:
    """Smallest decode group whose cache holds position `pos` (ax-llm's choose_decode_gid(kv_slot + 1)).

    Every decode group reads the first C_g rows of the same per-layer cache, where row i is position i,
    so switching groups between steps needs no copy; a smaller group only attends over fewer rows.
    """
    if pos < 0:
        raise ValueError(f"negative position {pos}")
    for group in spec.decode_groups:
        if pos < group.history:
            return group
    raise ContextOverflowError(f"position {pos} is outside the decode capacity {spec.decode_capacity}")


def select_prefill_group(spec: StackSpec, history: int) -> ShapeGroup | None:
    """Smallest prefill group whose history window holds `history` rows; None when none does."""
    for group in spec.prefill_groups:
        if history <= group.history:
            return group
    return None


@dataclass(frozen=True)
class Chunk:
    """A run of prompt tokens processed by one device call per layer.

    `group` is a prefill group, or a decode group (the smallest that holds the position) when
    `count == 1` and no prefill group can see the history (long histories on bundles whose prefill
    windows are shorter than C).
    """

    start: int
    count: int
    group: ShapeGroup


def plan_prefill(spec: StackSpec, start: int, count: int) -> list[Chunk]:
    """Split tokens start..start+count-1 into chunks, choosing the group per chunk (2026 ax-llm rule).

    Chunks are P tokens long, the last one shorter. When the history outgrows every prefill window
    the remaining tokens go one at a time through the decode group, which sees the whole cache.
    """
    capacity = spec.decode_capacity
    if start < 0 or count < 1:
        raise ValueError(f"nothing to prefill: start={start} count={count}")
    if start + count > capacity:
        raise ContextOverflowError(
            f"{start + count} positions needed but the model was compiled for {capacity}; "
            "shorten the prompt or lower num_ctx so the engine truncates it"
        )
    chunks: list[Chunk] = []
    pos, end, size = start, start + count, spec.prefill_chunk
    while pos < end:
        group = select_prefill_group(spec, pos)
        if group is None:
            chunks.append(Chunk(pos, 1, select_decode_group(spec, pos)))
            pos += 1
            continue
        n = min(size, end - pos)
        chunks.append(Chunk(pos, n, group))
        pos += n
    return chunks
