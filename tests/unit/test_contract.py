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
    select_decode_group,
    select_prefill_group,
)
from ax_llm_provider.runtime.spec import ShapeGroup, StackSpec


def make_spec(capacity: int = 2047, histories: tuple[int, ...] = (0, 128, 256, 512, 1024, 1536),
              chunk: int = 128) -> StackSpec:
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
    assert [(c.start, c.count, c.group.is_decode) for c in plan[:3]] == [(0, 128, False),
                                                                         (128, 128, False), (256, 1, True)]
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


def multi_decode_spec() -> StackSpec:
    """Decode groups of 1024, 4096 and 2048 rows, deliberately not in capacity order, behind prefill groups."""
    groups = (ShapeGroup(0, 128, 0, 1), ShapeGroup(1, 1, 4096, 4096), ShapeGroup(2, 128, 512, 512),
              ShapeGroup(3, 1, 1024, 1024), ShapeGroup(4, 1, 2048, 2048))
    return StackSpec(layers=2, hidden=8, kv_dim=4, vocab=10, groups=groups)


def test_decode_groups_are_ordered_by_capacity_and_the_largest_sets_the_capacity() -> None:
    spec = multi_decode_spec()
    assert [g.index for g in spec.decode_groups] == [3, 4, 1]
    assert spec.decode_group.index == 1 and spec.decode_capacity == 4096
    assert [g.index for g in spec.prefill_groups] == [0, 2] and spec.prefill_chunk == 128


@pytest.mark.parametrize(("pos", "group"), [(0, 3), (1023, 3), (1024, 4), (2047, 4), (2048, 1), (4095, 1)])
def test_decode_group_is_the_smallest_that_holds_the_position(pos: int, group: int) -> None:
    # ax-llm: choose_decode_gid(kv_slot + 1) = first group (by capacity) with kv_slot + 1 <= capacity
    assert select_decode_group(multi_decode_spec(), pos).index == group


def test_decode_group_selection_refuses_past_the_largest_capacity() -> None:
    with pytest.raises(ContextOverflowError, match="4096"):
        select_decode_group(multi_decode_spec(), 4096)
    with pytest.raises(ValueError, match="negative"):
        select_decode_group(multi_decode_spec(), -1)


def test_single_decode_group_bundles_are_unchanged() -> None:
    spec = make_spec()
    assert spec.decode_groups == (spec.decode_group,) and select_decode_group(spec, 2046) is spec.decode_group


def test_prefill_past_every_window_decodes_through_the_smallest_fitting_decode_group() -> None:
    chunks = plan_prefill(multi_decode_spec(), 600, 3)  # 600 > the largest prefill window (512)
    assert [(c.start, c.count, c.group.index) for c in chunks] == [(600, 1, 3), (601, 1, 3), (602, 1, 3)]
    late = plan_prefill(multi_decode_spec(), 2047, 2)
    assert [(c.start, c.group.index) for c in late] == [(2047, 4), (2048, 1)]
