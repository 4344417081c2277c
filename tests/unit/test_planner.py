"""The prefill planner on hand-made cost tables: least total cost, valid plans, ties to plain chunks."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ax_llm_provider.calibration.record import CalibrationRecord, GroupCost, Runtime
from ax_llm_provider.runtime.contract import Chunk, ContextOverflowError, plan_prefill
from ax_llm_provider.runtime.planner import (
    PrefillCosts,
    check_plan,
    costs_from_record,
    costs_from_timing,
    make_plan,
    plan_cheapest,
)
from ax_llm_provider.runtime.simcard.timing import get_preset
from ax_llm_provider.runtime.spec import ShapeGroup, StackSpec

# Shaped like Qwen3-0.6B's bundle, scaled down: decode C=64, P=8, prefill windows 0, 16, 32.
GROUPS = (ShapeGroup(0, 1, 64, 64), ShapeGroup(1, 8, 0, 1), ShapeGroup(2, 8, 16, 16), ShapeGroup(3, 8, 32, 32))
SPEC = StackSpec(layers=4, hidden=16, kv_dim=8, vocab=32, groups=GROUPS)


def costs(chunk: float, step: float, dearer_windows: float = 0.0) -> PrefillCosts:
    return PrefillCosts({1: chunk, 2: chunk + dearer_windows, 3: chunk + 2 * dearer_windows}, {0: step}, "test")


def brute_force_cost(start: int, count: int, table: PrefillCosts) -> float:
    """Cheapest cost over every split into decode steps and chunks of any length (exponential: small counts)."""
    best = {start + count: 0.0}
    for pos in range(start + count - 1, start - 1, -1):
        options = [table.step_ms[0] + best[pos + 1]]
        window = next((g for g in SPEC.prefill_groups if pos <= g.history), None)
        if window is not None:
            options += [table.chunk_ms[window.index] + best[pos + n]
                        for n in range(1, min(8, start + count - pos) + 1)]
        best[pos] = min(options)
    return best[start]


def test_a_few_tokens_go_through_the_decode_group() -> None:
    plan = plan_cheapest(SPEC, 10, 3, costs(chunk=10.0, step=2.0))
    assert [(c.start, c.count, c.group.index) for c in plan] == [(10, 1, 0), (11, 1, 0), (12, 1, 0)]


def test_many_tokens_go_in_chunks_with_a_short_tail_of_steps() -> None:
    plan = plan_cheapest(SPEC, 0, 18, costs(chunk=10.0, step=2.0))
    assert [(c.start, c.count, c.group.index) for c in plan] == [(0, 8, 1), (8, 8, 2), (16, 1, 0), (17, 1, 0)]


def test_a_tie_keeps_the_plain_chunk() -> None:
    assert plan_cheapest(SPEC, 4, 5, costs(chunk=10.0, step=2.0)) == plan_prefill(SPEC, 4, 5)


def test_past_every_prefill_window_only_steps_remain() -> None:
    plan = plan_cheapest(SPEC, 40, 12, costs(chunk=1.0, step=5.0))
    assert plan == plan_prefill(SPEC, 40, 12) and all(c.group.is_decode for c in plan)


def test_capacity_error_is_the_default_plans() -> None:
    with pytest.raises(ContextOverflowError):
        plan_cheapest(SPEC, 60, 8, costs(chunk=10.0, step=2.0))


def test_missing_costs_fall_back_to_chunks() -> None:
    partial = PrefillCosts({1: 10.0}, {0: 1.0}, "partial")
    assert plan_cheapest(SPEC, 0, 3, partial) == plan_prefill(SPEC, 0, 3)


@settings(max_examples=150, deadline=None)
@given(start=st.integers(0, 40), count=st.integers(1, 23), chunk=st.floats(0.5, 30.0), step=st.floats(0.1, 10.0),
       dearer=st.floats(0.0, 5.0))
def test_least_cost_and_valid(start: int, count: int, chunk: float, step: float, dearer: float) -> None:
    table = costs(chunk, step, dearer)
    plan = plan_cheapest(SPEC, start, count, table)
    check_plan(SPEC, start, count, plan)
    assert table.plan_cost(plan) == pytest.approx(brute_force_cost(start, count, table))
    assert table.plan_cost(plan) <= table.plan_cost(plan_prefill(SPEC, start, count)) + 1e-9


def test_check_plan_rejects_gaps_and_impossible_groups() -> None:
    decode, first, second = GROUPS[0], GROUPS[1], GROUPS[2]
    bad_plans = [
        ([Chunk(0, 2, decode)], 2),  # a decode call evaluates one token
        ([Chunk(0, 1, first), Chunk(2, 1, decode)], 3),  # gap
        ([Chunk(0, 9, first)], 9),  # longer than P
        ([Chunk(0, 1, first), Chunk(1, 2, first)], 3),  # the no-history group cannot see position 0
        ([Chunk(0, 3, second)], 4),  # stops short
    ]
    for plan, count in bad_plans:
        with pytest.raises(ValueError):
            check_plan(SPEC, 0, count, plan)
    assert make_plan(SPEC, 0, 9, None) == plan_prefill(SPEC, 0, 9)


def test_costs_from_the_simulated_timing_model() -> None:
    spec = StackSpec(layers=28, hidden=1024, kv_dim=1024, vocab=151936,
                     groups=(ShapeGroup(0, 1, 2559, 2559), ShapeGroup(1, 128, 0, 1), ShapeGroup(2, 128, 512, 512)))
    table = costs_from_timing(spec, get_preset("qwen3-0.6b-w8a16").timing)
    assert table.chunk_ms[1] == pytest.approx(28 * 23.6, rel=0.02)
    assert table.step_ms[0] == pytest.approx(28 * 1.51, rel=0.1)  # plus two small uploads and the K/V copies
    # The break-even point the issue quotes: about 13-16 decode steps cost one chunk.
    chunked = [n for n in range(2, 40) if not plan_cheapest(spec, 100, n, table)[0].group.is_decode]
    assert 13 <= chunked[0] <= 17 and chunked == list(range(chunked[0], 40))


def test_costs_from_a_calibration_record() -> None:
    record = CalibrationRecord(
        model="m", model_dir="/nowhere", runtime=Runtime(kind="axcl", version="3.10.2"), kv_write="bind",
        kv_write_reason="test", head_ms=9.0,
        group_costs=[GroupCost(group=1, kind="prefill", tokens=8, history=0, call_ms=40.0, ms_per_token=5.0, samples=3),
                     GroupCost(group=2, kind="prefill", tokens=8, history=16,
                               call_ms=44.0, ms_per_token=5.5, samples=3),
                     GroupCost(group=0, kind="decode", tokens=1, history=64,
                               call_ms=14.0, ms_per_token=14.0, samples=3)])
    table = costs_from_record(SPEC, record)
    assert table is not None
    assert dict(table.chunk_ms) == {1: 40.0, 2: 44.0, 3: 44.0}  # the unmeasured window: the dearest chunk
    assert dict(table.step_ms) == {0: 5.0}  # lm-head taken off
    assert costs_from_record(SPEC, record.model_copy(update={"group_costs": []})) is None


def test_every_split_is_checked_valid() -> None:
    """check_plan accepts exactly the splits a backend can run (exhaustive over a short range)."""
    accepted = 0
    for cuts in itertools.product((False, True), repeat=4):
        bounds = [0] + [i + 1 for i, cut in enumerate(cuts) if cut] + [5]
        plan = [Chunk(a, b - a, GROUPS[1] if a == 0 else GROUPS[2]) for a, b in itertools.pairwise(bounds) if b > a]
        check_plan(SPEC, 0, 5, plan)
        accepted += 1
    assert accepted == 16
