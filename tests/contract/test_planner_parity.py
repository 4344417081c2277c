"""Every prefill plan gives the greedy tokens of plain chunked prefill, on the onnx twin and the simulated card.

A random history is prefilled the plain way; the turn's new tokens then run under a random valid plan (any
mix of decode-group steps and chunks of any length the windows allow) or under the cost planner; the greedy
continuation must equal the one after plain chunked prefill of the same tokens. Twins come from the real
converter (tiny random qwen3 / llama checkpoints) with 8-token chunks and windows 0, 8, 16, 24.

One allowance, and only one: a decode call and a chunk add up the same numbers in another order, so with
bf16 logits (the card's) two tokens that tie, or differ by a rounding step, can swap. A divergence passes only
at a step where the two tokens' logits are within two bf16 steps of each other in both runs (1e-4 relative
for the float32 twin); after it the continuations differ legitimately. Anything else fails.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("onnxruntime")

from ax_llm_provider.model.layout import scan_model_dir  # noqa: E402
from ax_llm_provider.runtime.axcl_backend import AxclDecoderStack  # noqa: E402
from ax_llm_provider.runtime.bf16 import bf16_to_float32  # noqa: E402
from ax_llm_provider.runtime.contract import Chunk, select_decode_group, select_prefill_group  # noqa: E402
from ax_llm_provider.runtime.onnx_backend import OnnxDecoderStack  # noqa: E402
from ax_llm_provider.runtime.planner import check_plan, costs_from_timing  # noqa: E402
from ax_llm_provider.runtime.protocol import DecoderStack  # noqa: E402
from ax_llm_provider.runtime.simcard import SimCard  # noqa: E402
from ax_llm_provider.runtime.simcard.timing import get_preset  # noqa: E402

GEOMETRY = {"decode_capacity": 63, "prefill_chunk": 8, "prefill_histories": (0, 8, 16, 24)}
STEPS = 6
BACKENDS = ("onnx", "onnx-exact", "simulated")
TIE = {"onnx": 1e-4, "onnx-exact": 1e-4, "simulated": 2.0**-6}  # relative: float32, bf16 (two steps)


class Bench:
    """One twin opened on every backend, reused across examples (each example prefills from position 0)."""

    def __init__(self, root: Path, namespace: Path) -> None:
        files = scan_model_dir(root)
        self.stacks: dict[str, DecoderStack] = {
            "onnx": OnnxDecoderStack(files.layers, files.post),
            "onnx-exact": OnnxDecoderStack(files.layers, files.post, exact_shapes=True),
            # Its own card namespace: a module fixture is set up before the per-test one (tests/conftest.py).
            "simulated": AxclDecoderStack(files.layers, files.post, SimCard(namespace=namespace)),
        }
        spec = self.stacks["simulated"].spec
        self.table = bf16_to_float32(np.fromfile(files.embedding, dtype="<u2")).reshape(-1, spec.hidden)

    def greedy(self, backend: str, ids: list[int], history: int,
               plan: list[Chunk] | None) -> tuple[list[int], list[np.ndarray]]:
        stack = self.stacks[backend]
        stack.planner = None  # type: ignore[attr-defined]
        if history:
            stack.prefill(self.table[ids[:history]], 0, want_logits=False)
        if plan is not None:
            stack.planner = lambda spec, start, count: plan  # type: ignore[attr-defined]
        try:
            logits = stack.prefill(self.table[ids[history:]], history)
        finally:
            stack.planner = None  # type: ignore[attr-defined]
        assert logits is not None
        tokens, seen, pos = [], [], len(ids)
        for _ in range(STEPS):
            seen.append(logits)
            tokens.append(int(np.argmax(logits)))
            logits = stack.decode(self.table[tokens[-1]], pos)
            pos += 1
        return tokens, seen

    def close(self) -> None:
        for stack in self.stacks.values():
            stack.close()


@pytest.fixture(scope="module", params=["qwen3", "llama"])
def bench(request: pytest.FixtureRequest, tiny_twin: Callable[..., Path],
          tmp_path_factory: pytest.TempPathFactory) -> Bench:
    made = Bench(tiny_twin(request.param, 0, **GEOMETRY), tmp_path_factory.mktemp("planner-card"))
    request.addfinalizer(made.close)
    return made


def assert_same_greedy(backend: str, plain: tuple[list[int], list[np.ndarray]],
                       other: tuple[list[int], list[np.ndarray]]) -> None:
    """Equal tokens, except that a tie (within rounding in both runs) may go either way; see the module doc."""
    for step, (a, b) in enumerate(zip(plain[0], other[0], strict=True)):
        if a == b:
            continue
        for logits in (plain[1][step], other[1][step]):
            gap = abs(float(logits[a]) - float(logits[b]))
            assert gap <= TIE[backend] * max(abs(float(logits[a])), 1.0), (
                f"{backend}: step {step} chose {b} instead of {a}, {gap:.4f} apart: "
                f"not a tie ({plain[0]} vs {other[0]})")
        return


@st.composite
def random_plan(draw: st.DrawFn, spec: object, start: int, count: int) -> list[Chunk]:
    """Any plan a backend can run: at each position a decode step, or a chunk of any length that fits."""
    plan, pos, end = [], start, start + count
    while pos < end:
        window = select_prefill_group(spec, pos)  # type: ignore[arg-type]
        if window is None or draw(st.booleans()):
            plan.append(Chunk(pos, 1, select_decode_group(spec, pos)))  # type: ignore[arg-type]
            pos += 1
            continue
        n = draw(st.integers(1, min(window.tokens, end - pos)))
        plan.append(Chunk(pos, n, window))
        pos += n
    return check_plan(spec, start, count, plan)  # type: ignore[arg-type]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), history=st.integers(0, 30), new=st.integers(1, 20), seed=st.integers(0, 2**16),
       backend=st.sampled_from(BACKENDS))
def test_every_plan_gives_the_plain_greedy_tokens(bench: Bench, data: st.DataObject, history: int, new: int,
                                                   seed: int, backend: str) -> None:
    spec = bench.stacks[backend].spec
    ids = np.random.default_rng(seed).integers(0, len(bench.table), history + new).tolist()
    plain = bench.greedy(backend, ids, history, None)
    plan = data.draw(random_plan(spec, history, new), label="plan")
    assert_same_greedy(backend, plain, bench.greedy(backend, ids, history, plan))


@pytest.mark.parametrize("preset", ["qwen3-0.6b-w8a16", "qwen2.5-0.5b-w4a16"])
@pytest.mark.parametrize("history,new", [(0, 3), (5, 20), (9, 2), (30, 12)])
def test_the_cost_planners_plans_give_the_plain_greedy_tokens(bench: Bench, preset: str, history: int,
                                                               new: int) -> None:
    spec = bench.stacks["simulated"].spec
    planner = costs_from_timing(spec, get_preset(preset).timing).planner()
    ids = np.random.default_rng(history * 100 + new).integers(0, len(bench.table), history + new).tolist()
    plan = planner(spec, history, new)
    for backend in BACKENDS:
        assert_same_greedy(backend, bench.greedy(backend, ids, history, None),
                           bench.greedy(backend, ids, history, plan))


@pytest.mark.parametrize("kv_write", ["d2d", "bind"])
def test_timing_costs_match_the_simulated_clock(tiny_twin: Callable[..., Path], kv_write: str) -> None:
    """The planner's cost table for the simulated card is what the card's clock charges for each call."""
    files = scan_model_dir(tiny_twin("qwen3", 0, **GEOMETRY))
    card = SimCard()
    stack = AxclDecoderStack(files.layers, files.post, card, kv_write=kv_write)
    try:
        spec, rows = stack.spec, np.zeros((8, stack.spec.hidden), np.float32)
        costs = costs_from_timing(spec, card.timing, kv_d2d=stack.kv_d2d)
        stack.prefill(rows, 0, want_logits=False)  # settles the decode mask after position 8

        def charged(plan: list[Chunk], start: int) -> float:
            stack.planner = lambda spec, s, c: plan  # type: ignore[assignment]
            before = card.clock.device_ms
            stack.prefill(rows[: sum(c.count for c in plan)], start, want_logits=False)
            return card.clock.device_ms - before

        window = select_prefill_group(spec, 8)
        assert window is not None
        chunk = charged([Chunk(8, 8, window)], 8)
        steps = charged([Chunk(8 + i, 1, select_decode_group(spec, 8 + i)) for i in range(4)], 8)
        settle = card.timing.transfer_ms(16, True)  # every prefill ends opening the decode mask up to its end
        assert chunk == pytest.approx(costs.chunk_ms[window.index] + settle, rel=0.02)
        assert steps == pytest.approx(4 * costs.step_ms[spec.decode_group.index] + settle, rel=0.02)
    finally:
        stack.close()
