"""Per-token device calls and bus bytes of the axcl backend, counted by the simulated card, and the bench.

Budget per decode token: calls <= 3 x layers + 10; bus bytes <= 2 x hidden x 2 + vocab x 2 + 1 KiB (no KV).
"""

from __future__ import annotations

import numpy as np
import pytest

from ax_llm_provider.bench import run_backend_bench
from ax_llm_provider.runtime.axcl_backend import AxclDecoderStack
from ax_llm_provider.runtime.simcard import PRESETS, Geometry, SimCard

SMALL = Geometry(layers=4, hidden=64, kv_dim=32, vocab=300, capacity=80, chunk=16, prefill_histories=(0, 16, 32))


def open_null(preset: str | None, geometry: Geometry | None = None,
              **kwargs: object) -> tuple[SimCard, AxclDecoderStack]:
    card = SimCard(preset)
    layers, post = card.add_null_stack(geometry)
    return card, AxclDecoderStack(layers, post, card, **kwargs)  # type: ignore[arg-type]


def per_token(card: SimCard, stack: AxclDecoderStack, start: int, tokens: int) -> list[dict[str, int]]:
    embed = np.full(stack.spec.hidden, 0.01, np.float32)
    rows = []
    for pos in range(start, start + tokens):
        before = dict(card.counters.bytes_by_kind), card.counters.total_calls
        stack.decode(embed, pos)
        after = card.counters.bytes_by_kind
        rows.append({"calls": card.counters.total_calls - before[1],
                     **{k: after[k] - before[0].get(k, 0) for k in ("H2D", "D2H", "D2D")}})
    return rows


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("kv_write", ["bind", "d2d"])
def test_decode_budget_at_preset_geometry(preset: str, kv_write: str) -> None:
    card, stack = open_null(preset, kv_write=kv_write)
    g = PRESETS[preset].geometry
    with stack:
        stack.prefill(np.zeros((20, g.hidden), np.float32), 0)
        for row in per_token(card, stack, 20, 5)[1:]:  # the first one also re-points the post input
            assert row["calls"] == 3 * g.layers + 4 <= 3 * g.layers + 10
            assert row["H2D"] + row["D2H"] <= 2 * g.hidden * 2 + g.vocab * 2 + 1024
            assert row["D2H"] == g.vocab * 2  # only the logits come back
            padded = (g.hidden * 2 + 255) // 256 * 256
            assert row["H2D"] == padded + 4 + 2  # embedding + position + one mask slot
            assert row["D2D"] == (2 * g.layers * g.kv_dim * 2 if kv_write == "d2d" else 0)


@pytest.mark.parametrize("kv_write", ["bind", "d2d"])
def test_prefill_uploads_once_per_chunk_not_per_layer(kv_write: str) -> None:
    card, stack = open_null(None, SMALL, kv_write=kv_write)
    with stack:
        before_calls, before_h2d = card.counters.total_calls, card.counters.copies_by_kind["H2D"]
        stack.prefill(np.zeros((40, SMALL.hidden), np.float32), 0)  # chunks at 0, 16, 32
        chunks = 3
        assert card.counters.copies_by_kind["H2D"] - before_h2d == chunks + 1  # + the decode-mask catch-up
        # per chunk: 1 upload + L x (1 execute + 2 D2D copies, or 2 setters in bind mode, where the first chunk
        # lands in row 0 and the outputs are bound there already); then the post input moves to row n-1,
        # post execute, logits, mask
        layers = SMALL.layers
        already_bound = 2 * layers if kv_write == "bind" else 0
        assert card.counters.total_calls - before_calls == chunks * (1 + 3 * layers) - already_bound + 4
        first, second = per_token(card, stack, 40, 2)
        assert first["calls"] == 3 * layers + 4  # post input back to row 0, but no mask slot to open
        assert second["calls"] == 3 * layers + 4  # one mask slot, no post rebind


def test_the_default_kv_write_is_the_vendor_copy() -> None:
    card, stack = open_null(None, SMALL)
    with stack:
        stack.decode(np.full(SMALL.hidden, 0.01, np.float32), 0)
        assert card.counters.copies_by_kind["D2D"] == 2 * SMALL.layers  # K and V copied after every execute
        bound_once = 3 * SMALL.layers * len(stack.spec.groups) + 1  # every output of every group, and the post's
        assert card.counters.calls["engine_set_output_buffer_by_index"] == bound_once  # never re-pointed


def test_kv_snapshot_moves_only_the_valid_rows() -> None:
    card, stack = open_null(None, SMALL)
    with stack:
        stack.prefill(np.zeros((10, SMALL.hidden), np.float32), 0, want_logits=False)
        before = card.counters.bytes_by_kind["D2H"]
        snapshot = stack.kv_save(10)
        assert card.counters.bytes_by_kind["D2H"] - before == 2 * SMALL.layers * 10 * SMALL.kv_dim * 2
        before = card.counters.bytes_by_kind["H2D"]
        stack.kv_restore(snapshot)
        assert card.counters.bytes_by_kind["H2D"] - before == snapshot.nbytes


@pytest.mark.hostspeed  # host overhead per token: emulated, it is ~40x the real one
def test_bench_reports_its_fields_and_the_legacy_comparison() -> None:
    result = run_backend_bench("qwen3-0.6b-w8a16", tokens=8, baseline_tokens=2, compare_legacy=True)
    for key in ("device_bound_tok_s", "projected_tok_s", "host_overhead_ms_per_token", "device_calls_per_token",
                "bus_bytes_per_token", "baseline_device_bound_tok_s", "baseline_projected_tok_s",
                "baseline_host_overhead_ms_per_token", "baseline_device_calls_per_token",
                "baseline_bus_bytes_per_token"):
        assert isinstance(result[key], float), key
    assert result["timing_model"] == "strict" and result["backend"] == "axcl (kv_write=d2d)"
    assert result["device_calls_per_token"] <= result["budget"]["device_calls_per_token"]
    assert result["bus_bytes_per_token"] <= result["budget"]["bus_bytes_per_token"]
    assert result["baseline_bus_bytes_per_token"] > 500 * result["bus_bytes_per_token"]  # the KV copy
    assert result["baseline_device_bound_tok_s"] < result["device_bound_tok_s"] / 10
    # strict: 28 x 1.51 ms + 7.9 ms, 56 D2D copies, and ~1 ms more per host transfer than the legacy model
    assert 17 < result["device_bound_tok_s"] < 18.5  # 17.9: ~4.7 ms more device time per token
    legacy = result["legacy"]
    assert legacy["timing_model"] == "legacy" and legacy["backend"] == "axcl (kv_write=bind)"
    assert 18 < legacy["device_bound_tok_s"] < 21  # ~19.9 tok/s: the measured per-layer figures alone
