"""The prefill planner: evaluate a request's new tokens the cheapest way the compiled groups allow.

A prefill group costs the same whatever the number of real tokens in its P-row chunk (the padding rows are
computed too), while a decode-group step costs one token. On the card one Qwen3-0.6B chunk costs about as
much as 15 decode steps, so a turn that adds 10 tokens to a cached conversation is cheaper token by token
through the decode group; a long prompt is cheaper in chunks, and a prompt of 130 tokens is cheapest as one
chunk plus two decode steps. `plan_cheapest` finds the plan of least total cost from a table of measured
per-call costs (`PrefillCosts`); `plan_prefill` (runtime/contract.py, chunks only) is the plan without one.

Every plan computes the same thing: each token's K/V row and hidden state depend only on the rows before it,
whichever group evaluates it (positions and masks follow the contract either way). Greedy output is
therefore the same up to the rounding of a different accumulation order (tests/contract/test_planner.py).

Where the costs come from (runtime/backends.py `open_stack` attaches them to the stack):
  * simulated card: its timing preset (`costs_from_timing`);
  * real card (axcl): the first-contact calibration record of that model and runtime (`costs_from_record`);
  * otherwise none, and the stack keeps plain chunks: on the CPU twin (onnx) a chunk of n tokens runs as
    n rows, so its cost scales with the tokens and chunking is already the cheapest plan; pyaxengine
    copies the whole KV per call, so a decode step there is far dearer than the card's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .contract import Chunk, plan_prefill, select_decode_group, select_prefill_group
from .spec import StackSpec

if TYPE_CHECKING:
    from ..calibration.record import CalibrationRecord

log = logging.getLogger(__name__)

Planner = Callable[[StackSpec, int, int], list[Chunk]]
"""planner(spec, start, count) -> the chunks that evaluate positions start..start+count-1."""


@dataclass(frozen=True)
class PrefillCosts:
    """Cost in ms of one call through every layer, by shape-group index, without the lm-head.

    chunk_ms: prefill groups (one padded chunk, whatever its real token count);
    step_ms:  decode groups (one token).
    """

    chunk_ms: Mapping[int, float]
    step_ms: Mapping[int, float]
    source: str

    def covers(self, spec: StackSpec) -> bool:
        return (all(g.index in self.chunk_ms for g in spec.prefill_groups)
                and all(g.index in self.step_ms for g in spec.decode_groups))

    def plan_cost(self, plan: list[Chunk]) -> float:
        return sum((self.step_ms if c.group.is_decode else self.chunk_ms)[c.group.index] for c in plan)

    def planner(self) -> Planner:
        return lambda spec, start, count: plan_cheapest(spec, start, count, self)


def plan_cheapest(spec: StackSpec, start: int, count: int, costs: PrefillCosts) -> list[Chunk]:
    """The plan of least total cost for positions start..start+count-1; ties go to chunks (today's plan).

    Dynamic programming from the end: at each position either one decode step or a chunk. A chunk costs the
    same whatever its length and the group it needs depends only on where it starts, so only two lengths
    can be best: the longest that fits, or one that ends exactly at a prefill window's history (the next
    chunk then starts in that cheaper window rather than the next larger one). Without a usable prefill
    group at a position only the decode step is possible, as in `plan_prefill`. O(count x groups).
    """
    if not costs.covers(spec):
        log.warning("prefill costs (%s) miss some shape groups of this model: plain chunks", costs.source)
        return plan_prefill(spec, start, count)
    plan_prefill(spec, start, count)  # the same validation and capacity error as the default plan
    end, size = start + count, spec.prefill_chunk
    windows = sorted({g.history for g in spec.prefill_groups})
    best = [0.0] * (count + 1)  # best[i]: cost of positions start+i..end-1
    choice: list[Chunk] = [Chunk(0, 0, spec.decode_group)] * count
    for i in range(count - 1, -1, -1):
        pos = start + i
        step = select_decode_group(spec, pos)
        choice[i], best[i] = Chunk(pos, 1, step), costs.step_ms[step.index] + best[i + 1]
        group = select_prefill_group(spec, pos)
        if group is None:
            continue
        longest = min(size, end - pos)
        for n in (longest, *(h - pos for h in windows if pos < h < pos + longest)):
            total = costs.chunk_ms[group.index] + best[i + n]
            if total < best[i] or (total == best[i] and choice[i].group.is_decode):
                choice[i], best[i] = Chunk(pos, n, group), total
    plan, i = [], 0
    while i < count:
        plan.append(choice[i])
        i += choice[i].count
    return plan


def check_plan(spec: StackSpec, start: int, count: int, plan: list[Chunk]) -> list[Chunk]:
    """Raise ValueError unless `plan` evaluates exactly start..start+count-1 with groups that can run it."""
    pos = start
    for chunk in plan:
        group = chunk.group
        if chunk.start != pos or chunk.count < 1:
            raise ValueError(f"plan chunk {chunk} does not continue at position {pos}")
        if group.is_decode:
            if chunk.count != 1 or chunk.start >= group.history:
                raise ValueError(f"decode group {group.index} cannot evaluate {chunk}")
        elif chunk.count > group.tokens or chunk.start > group.history:
            raise ValueError(f"prefill group {group.index} (P={group.tokens}, Hc={group.history}) cannot run {chunk}")
        pos += chunk.count
    if pos != start + count:
        raise ValueError(f"plan ends at {pos}, expected {start + count}")
    return plan


def make_plan(spec: StackSpec, start: int, count: int, planner: Planner | None) -> list[Chunk]:
    """What a backend runs: the planner's plan, checked, or the plain chunked plan without one."""
    if planner is None:
        return plan_prefill(spec, start, count)
    return check_plan(spec, start, count, planner(spec, start, count))


# -- where the costs come from ---------------------------------------------------------------------------

def costs_from_timing(spec: StackSpec, timing: Any, *, kv_d2d: bool = True) -> PrefillCosts:
    """Costs of the axcl backend on the simulated card, from its timing model (runtime/simcard/timing.py).

    A chunk: one upload of [embeddings | indices | mask] and one prefill execute per layer. A decode step
    inside a prefill: one upload of [embedding | index], one mask patch and one decode execute per layer.
    With `kv_d2d` (the backend's default KV write) every execute is followed by two on-card copies of the
    new K/V rows. tests/contract/test_planner_parity.py checks these against the card's clock.
    """
    layers, hidden, row = spec.layers, spec.hidden, 2 * spec.kv_dim
    chunk_ms, step_ms = {}, {}
    for g in spec.prefill_groups:
        upload = g.tokens * (2 * hidden + 4) + 2 * g.tokens * (g.history + g.tokens)  # mask [P, Hc + P]
        copies = 2 * timing.d2d_ms(g.tokens * row) if kv_d2d else 0.0
        chunk_ms[g.index] = layers * (timing.prefill_layer_ms + copies) + timing.transfer_ms(upload, True)
    for g in spec.decode_groups:
        copies = 2 * timing.d2d_ms(row) if kv_d2d else 0.0
        step_ms[g.index] = (layers * (timing.decode_layer_ms + copies) + timing.transfer_ms(2 * hidden + 4, True)
                            + timing.transfer_ms(2, True))
    return PrefillCosts(chunk_ms, step_ms, "simulated card timing model")


def costs_from_record(spec: StackSpec, record: CalibrationRecord) -> PrefillCosts | None:
    """Costs measured by `ax-llm doctor --calibrate` on this model and runtime (wall time of each call).

    The record has one decode cost (the largest decode group, lm-head included: `head_ms` is taken off) and
    the prefill groups a full chunk can use; a prefill group it lacks gets the dearest measured chunk cost,
    a smaller decode group the measured decode cost (both err towards today's plain chunks).
    """
    prefill = {c.group: c.call_ms for c in record.group_costs if c.kind == "prefill"}
    decode = [c.call_ms for c in record.group_costs if c.kind == "decode"]
    if not prefill or not decode:
        log.info("calibration of %s has no per-group costs: plain prefill chunks", record.model)
        return None
    step = max(decode[0] - (record.head_ms or 0.0), 0.0)
    dearest = max(prefill.values())
    return PrefillCosts({g.index: prefill.get(g.index, dearest) for g in spec.prefill_groups},
                        dict.fromkeys((g.index for g in spec.decode_groups), step),
                        f"calibration of {record.model} on {record.runtime.key}")
