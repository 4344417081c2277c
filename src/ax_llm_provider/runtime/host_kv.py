"""The host-side KV cache of the backends that keep K/V on the host: onnx, axengine and the card reference.

Each layer has one K and one V array of [1, capacity, kv_dim] rows, written by position (gpt-fast's
`KVCache.update(input_pos, k, v)`): a chunk's new rows go to rows start..start+count-1, and each call feeds
the first `kv_rows` rows of its group back in. The axcl backend keeps its KV in device memory instead
(runtime/axcl_backend.py). A snapshot (the prefix cache's) copies rows 0..length-1; restoring one taken by
another backend converts its rows with `adopt` (float32 values vs bf16 bits).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .bf16 import bf16_round, bf16_to_float32, float32_to_bf16
from .protocol import KVSnapshot


def as_bf16_bits(rows: np.ndarray) -> np.ndarray:
    """Rows for a bf16-bits cache (uint16): bits pass through, float32 values are rounded to bf16."""
    return rows if rows.dtype == np.uint16 else float32_to_bf16(rows)


def as_bf16_values(rows: np.ndarray) -> np.ndarray:
    """Rows for a cache of bf16 values held as float32: bits are widened, float32 values are rounded."""
    return bf16_to_float32(rows) if rows.dtype == np.uint16 else bf16_round(rows)


def as_is(rows: np.ndarray) -> np.ndarray:
    return rows


class HostKV:
    """Per-layer K/V arrays on the host, written by position."""

    def __init__(self, layers: int, capacity: int, kv_dim: int, dtype: type[np.generic],
                 adopt: Callable[[np.ndarray], np.ndarray] = as_is) -> None:
        """adopt: turns a restored snapshot's rows into this cache's representation."""
        self.k = [np.zeros((1, capacity, kv_dim), dtype) for _ in range(layers)]
        self.v = [np.zeros((1, capacity, kv_dim), dtype) for _ in range(layers)]
        self._adopt = adopt

    def rows(self, layer: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Views of the first `count` K and V rows of `layer`, [1, count, kv_dim] (what a group reads)."""
        return self.k[layer][:, :count], self.v[layer][:, :count]

    def write(self, layer: int, start: int, k: np.ndarray, v: np.ndarray) -> None:
        """Store new rows k, v ([count, kv_dim]) of `layer` at positions start..start+count-1."""
        self.k[layer][0, start:start + len(k)] = k
        self.v[layer][0, start:start + len(v)] = v

    def save(self, length: int) -> KVSnapshot:
        return KVSnapshot(length, tuple(k[0, :length].copy() for k in self.k),
                          tuple(v[0, :length].copy() for v in self.v))

    def restore(self, snapshot: KVSnapshot) -> None:
        n = snapshot.length
        for layer in range(len(self.k)):
            self.k[layer][0, :n] = self._adopt(snapshot.k[layer])
            self.v[layer][0, :n] = self._adopt(snapshot.v[layer])

    def clear(self) -> None:
        """Drop the arrays (a closed stack holds no memory)."""
        self.k.clear()
        self.v.clear()
