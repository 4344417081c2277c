"""The vendor tensor contract: masks, positions, group choice and prefill chunking."""

from __future__ import annotations

import numpy as np
import pytest

from ax_llm_provider.runtime.contract import (
    MASK_BLOCKED,
    ContextOverflowError,
    decode_indices,
    decode_mask,
    plan_prefill,
    prefill_indices,
    prefill_mask,
    select_prefill_group,
)
from ax_llm_provider.runtime.spec import ShapeGroup, StackSpec


def make_spec(capacity: int = 2047, histories: tuple[int, ...] = (0, 128, 256, 512, 1024, 1536), chunk: int = 128) -> StackSpec:
    groups = [ShapeGroup(0, 1, capacity, capacity)]
    groups += [ShapeGroup(i + 1, chunk, h, max(h, 1)) for i, h in enumerate(histories)]
    return StackSpec(layers=2, hidden=8, kv_dim=4, vocab=10, groups=tuple(groups))


def test_decode_mask_opens_past_rows_and_current_slot() -> None:
    mask = decode_mask(3, 8)
    assert mask.shape == (1, 1, 9)
    assert mask[0, 0].tolist() == [0, 0, 0] + [MASK_BLOCKED] * 5 + [0]


def test_decode_mask_rejects_position_beyond_capacity() -> None:
    with pytest.raises(ContextOverflowError):
        decode_mask(8, 8)


def test_prefill_mask_history_and_causal_block() -> None:
    group = ShapeGroup(2, 4, 6, 6)
    mask = prefill_mask(2, group)
    assert mask.shape == (1, 4, 10)
    open_ = mask[0] == 0
    assert open_[:, :2].all() and not open_[:, 2:6].any()  # valid history only
    assert (open_[:, 6:] == np.tril(np.ones((4, 4), dtype=bool))).all()  # causal inside the chunk


def test_prefill_mask_no_history_group_has_only_chunk_columns() -> None:
    group = ShapeGroup(1, 4, 0, 1)
    mask = prefill_mask(0, group)
    assert mask.shape == (1, 4, 4)
    assert ((mask[0] == 0) == np.tril(np.ones((4, 4), dtype=bool))).all()


def test_prefill_mask_rejects_history_beyond_group() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        prefill_mask(7, ShapeGroup(2, 4, 6, 6))


def test_indices_real_rows_then_zero_padding() -> None:
    assert prefill_indices(5, 3, 6).tolist() == [[5, 6, 7, 0, 0, 0]]
    assert prefill_indices(5, 3, 6).dtype == np.uint32
    assert decode_indices(9).tolist() == [[9]]
    with pytest.raises(ValueError):
        prefill_indices(0, 0, 6)


def test_select_prefill_group_smallest_window_that_holds_history() -> None:
    spec = make_spec()
    assert select_prefill_group(spec, 0).history == 0
    assert select_prefill_group(spec, 1).history == 128
    assert select_prefill_group(spec, 128).history == 128
    assert select_prefill_group(spec, 129).history == 256
    assert select_prefill_group(spec, 1536).history == 1536
    assert select_prefill_group(spec, 1537) is None


def test_plan_prefill_chunks_choose_group_per_chunk() -> None:
    spec = make_spec()
    plan = plan_prefill(spec, 0, 300)
    assert [(c.start, c.count, c.group.history) for c in plan] == [(0, 128, 0), (128, 128, 128), (256, 44, 256)]


def test_plan_prefill_after_cached_prefix_starts_mid_window() -> None:
    plan = plan_prefill(make_spec(), 200, 10)
    assert [(c.start, c.count, c.group.history) for c in plan] == [(200, 10, 256)]


def test_plan_prefill_past_last_window_falls_back_to_decode_group() -> None:
    spec = make_spec(capacity=300, histories=(0, 128))
    plan = plan_prefill(spec, 0, 260)
    assert [(c.start, c.count, c.group.is_decode) for c in plan[:3]] == [(0, 128, False), (128, 128, False), (256, 1, True)]
    assert sum(c.count for c in plan) == 260 and all(c.group.is_decode for c in plan[2:])


def test_plan_prefill_overflow_says_what_to_do() -> None:
    with pytest.raises(ContextOverflowError, match="num_ctx"):
        plan_prefill(make_spec(capacity=100, histories=(0,)), 90, 20)


def test_spec_derived_geometry() -> None:
    spec = make_spec()
    assert spec.decode_capacity == 2047 and spec.prefill_chunk == 128 and spec.max_prefill_history == 1536
    assert spec.kv_bytes_per_token == 2 * 2 * 4 * 2
    with pytest.raises(ValueError, match="decode group"):
        StackSpec(layers=1, hidden=2, kv_dim=2, vocab=2, groups=(ShapeGroup(0, 4, 0, 1),))
