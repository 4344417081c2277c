"""Bundles with several decode groups (newer builds: 2k/4k/... capacities, in any group order).

A tiny twin is given a second, smaller decode group in its `ax.shape_groups` metadata (listed after the
prefill groups, as ax-llm warns group 0 need not be the largest). The axcl backend on the simulated card must
decode each position through the smallest decode group that holds it (ax-llm's choose_decode_gid), switch
groups mid-generation without copying the cache, and compute what the single-group twin computes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from ax_llm_provider.model.layout import scan_model_dir  # noqa: E402
from ax_llm_provider.runtime.axcl_backend import AxclDecoderStack  # noqa: E402
from ax_llm_provider.runtime.bf16 import bf16_to_float32  # noqa: E402
from ax_llm_provider.runtime.contract import ContextOverflowError  # noqa: E402
from ax_llm_provider.runtime.protocol import DecoderStack  # noqa: E402
from ax_llm_provider.runtime.simcard import SimCard  # noqa: E402
from ax_llm_provider.runtime.simcard.reference import CardReference  # noqa: E402

GEOMETRY = {"decode_capacity": 63, "prefill_chunk": 8, "prefill_histories": (0, 8, 16, 24)}
SMALL = 40  # the extra decode group's capacity
PROMPT, STEPS = 37, 12  # decode positions 37..48 cross from the small group into the large one


def add_decode_group(src: Path, dest: Path, capacity: int) -> Path:
    shutil.copytree(src, dest)
    for layer in sorted(dest.glob("*_together.onnx")):
        model = onnx.load(str(layer), load_external_data=False)
        props = {p.key: p for p in model.metadata_props}
        groups = json.loads(props["ax.shape_groups"].value)
        groups.append({"tokens": 1, "history": capacity, "kv_rows": capacity})
        props["ax.shape_groups"].value = json.dumps(groups)
        onnx.save(model, str(layer))
    return dest


@pytest.fixture(scope="module")
def twins(tiny_twin: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    single = tiny_twin("llama", 0, **GEOMETRY)
    return single, add_decode_group(single, tmp_path_factory.mktemp("multi") / "twin", SMALL)


def run(stack: DecoderStack, table: np.ndarray, ids: np.ndarray) -> tuple[list[int], list[np.ndarray]]:
    logits = stack.prefill(table[ids], 0)
    tokens, seen = [], [logits]
    for step in range(STEPS):
        tokens.append(int(np.argmax(logits)))
        logits = stack.decode(table[tokens[-1]], PROMPT + step)
        seen.append(logits)
    return tokens, seen


def test_smallest_holding_decode_group_runs_and_matches_the_single_group_model(twins: tuple[Path, Path]) -> None:
    single, multi = twins
    files = scan_model_dir(multi)
    ref_files = scan_model_dir(single)
    ref = CardReference(ref_files.layers, ref_files.post)
    table = bf16_to_float32(np.fromfile(files.embedding, dtype="<u2")).reshape(-1, ref.spec.hidden)
    ids = np.random.default_rng(3).integers(0, len(table), PROMPT)

    card = SimCard(dirty_memory=True, shuffle_io_seed=5)
    executed: list[tuple[int, int]] = []
    real_execute = card.rt.engine_execute

    def spy(model_id: int, context_id: int, group: int, io: int) -> int:
        executed.append((model_id, group))
        return real_execute(model_id, context_id, group, io)

    card.rt.engine_execute = spy  # type: ignore[method-assign]
    stack = AxclDecoderStack(files.layers, files.post, card, kv_write="d2d")  # type: ignore[arg-type]
    try:
        spec = stack.spec
        small = next(g for g in spec.decode_groups if g.history == SMALL)
        large = spec.decode_group
        assert small.index == len(spec.groups) - 1 and large.history == 63 and spec.decode_capacity == 63
        want_tokens, want = run(ref, table, ids)
        executed.clear()
        got_tokens, got = run(stack, table, ids)
        post_id = stack._post.model_id
    finally:
        stack.close()
    assert got_tokens == want_tokens
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-2)
    layers = len(files.layers)
    decode_groups = [g for model, g in executed if model != post_id and g in (small.index, large.index)]
    # prompt positions 32..36 (past every prefill window) and decode positions 37..39 fit the 40-row group;
    # 40..48 need the 63-row one: one execute per layer each
    assert decode_groups == [small.index] * 8 * layers + [large.index] * (STEPS - 3) * layers


def test_decode_past_the_largest_group_is_a_context_overflow(twins: tuple[Path, Path]) -> None:
    files = scan_model_dir(twins[1])
    stack = AxclDecoderStack(files.layers, files.post, SimCard())  # type: ignore[arg-type]
    try:
        with pytest.raises(ContextOverflowError, match="63"):
            stack.decode(np.zeros(stack.spec.hidden, np.float32), 63)
    finally:
        stack.close()


def test_axengine_backend_feeds_the_small_group_its_own_window(twins: tuple[Path, Path]) -> None:
    pytest.importorskip("ml_dtypes")
    from ax_llm_provider.runtime.axengine_backend import AxengineDecoderStack
    from ax_llm_provider.runtime.simcard import make_axengine

    single, multi = twins
    ref_files, files = scan_model_dir(single), scan_model_dir(multi)
    ref = CardReference(ref_files.layers, ref_files.post)
    table = bf16_to_float32(np.fromfile(files.embedding, dtype="<u2")).reshape(-1, ref.spec.hidden)
    ids = np.random.default_rng(4).integers(0, len(table), PROMPT)
    card = SimCard()
    stack = AxengineDecoderStack(files.layers, files.post, make_axengine(card))
    try:
        want_tokens, want = run(ref, table, ids)
        sent: list[int] = []
        real_decode = stack.decode

        def counted(embed: np.ndarray, pos: int) -> np.ndarray:
            before = card.counters.bus_bytes
            out = real_decode(embed, pos)
            sent.append(card.counters.bus_bytes - before)
            return out

        stack.decode = counted  # type: ignore[method-assign]
        got_tokens, got = run(stack, table, ids)
    finally:
        stack.close()
    assert got_tokens == want_tokens
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-2)
    # pyaxengine copies the whole K/V window of the group in use: 40 rows for positions 37..39, then 63
    assert len(set(sent[:3])) == 1 and len(set(sent[3:])) == 1 and sent[0] < sent[3]
