"""HostKV: rows written by position, read back as a group's first rows, saved and restored across representations."""

from __future__ import annotations

import numpy as np
import pytest

from ax_llm_provider.runtime.bf16 import bf16_round, bf16_to_float32, float32_to_bf16
from ax_llm_provider.runtime.host_kv import HostKV, as_bf16_bits, as_bf16_values

LAYERS, CAPACITY, KV_DIM = 2, 8, 4


def rows(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, KV_DIM)).astype(np.float32)


def test_rows_are_written_at_their_positions_and_read_as_the_first_rows() -> None:
    kv = HostKV(LAYERS, CAPACITY, KV_DIM, np.float32)
    k, v = rows(3, 1), rows(3, 2)
    kv.write(1, 2, k, v)
    k_cache, v_cache = kv.rows(1, 5)
    assert k_cache.shape == (1, 5, KV_DIM)
    assert np.array_equal(k_cache[0, 2:5], k) and np.array_equal(v_cache[0, 2:5], v)
    assert not k_cache[0, :2].any() and not kv.rows(0, CAPACITY)[0].any()  # other rows and layers untouched
    k_cache[0, 0] = 7.0  # a view: what a group reads is the cache itself
    assert kv.k[1][0, 0, 0] == 7.0


def test_a_snapshot_is_a_copy_and_restores_the_rows() -> None:
    kv = HostKV(LAYERS, CAPACITY, KV_DIM, np.float32)
    for layer in range(LAYERS):
        kv.write(layer, 0, rows(4, layer), rows(4, 10 + layer))
    snapshot = kv.save(3)
    assert snapshot.length == 3 and snapshot.k[0].shape == (3, KV_DIM)
    kv.write(0, 0, rows(4, 99), rows(4, 98))  # later writes leave the snapshot alone
    other = HostKV(LAYERS, CAPACITY, KV_DIM, np.float32)
    other.restore(snapshot)
    for layer in range(LAYERS):
        assert np.array_equal(other.k[layer][0, :3], rows(4, layer)[:3])
        assert np.array_equal(other.v[layer][0, :3], rows(4, 10 + layer)[:3])
        assert not other.k[layer][0, 3:].any()


@pytest.mark.parametrize("source", [np.float32, np.uint16])
def test_restoring_converts_between_float32_values_and_bf16_bits(source: type[np.generic]) -> None:
    values = rows(3, 5)
    saved = HostKV(1, CAPACITY, KV_DIM, source)
    saved.write(0, 0, *((values, values) if source is np.float32 else (float32_to_bf16(values),) * 2))
    snapshot = saved.save(3)

    bits = HostKV(1, CAPACITY, KV_DIM, np.uint16, adopt=as_bf16_bits)
    bits.restore(snapshot)
    assert np.array_equal(bits.k[0][0, :3], float32_to_bf16(values))

    held = HostKV(1, CAPACITY, KV_DIM, np.float32, adopt=as_bf16_values)
    held.restore(snapshot)
    assert np.array_equal(held.k[0][0, :3], bf16_round(values))
    assert np.array_equal(held.v[0][0, :3], bf16_to_float32(float32_to_bf16(values)))


def test_clear_drops_the_arrays() -> None:
    kv = HostKV(LAYERS, CAPACITY, KV_DIM, np.float32)
    kv.clear()
    assert kv.k == [] and kv.v == []
    assert kv.save(0).k == ()
