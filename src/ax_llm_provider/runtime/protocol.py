"""The one interface between the engine and a backend: a decoder stack on one device.

A backend owns the per-layer KV cache (C rows per layer, at the compiled capacity) and writes it by
position. The engine looks token embeddings up on the host and hands them over as float32 rows;
backends convert to their I/O dtype. Hidden states stay inside the backend so a device backend can
keep them on the card; only logits come back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from .spec import StackSpec


@dataclass(frozen=True)
class KVSnapshot:
    """Host copy of KV rows 0..length-1 of every layer: k[layer] and v[layer] are [length, kv_dim]."""

    length: int
    k: tuple[np.ndarray, ...]
    v: tuple[np.ndarray, ...]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.k) + sum(a.nbytes for a in self.v)


@runtime_checkable
class DecoderStack(Protocol):
    """Layers + post model of one LLM, loaded on one device.

    Positions are absolute: the token at position p has its K/V in cache row p. The caller keeps
    track of how many rows are valid; a backend never reads rows at or beyond the position it is given.
    """

    spec: StackSpec

    def prefill(self, embeds: np.ndarray, start: int, want_logits: bool = True) -> np.ndarray | None:
        """Run embeds [n, hidden] at positions start..start+n-1 (chunked per the contract).

        Writes their KV rows and returns the float32 logits [vocab] of the last one (or None).
        """
        ...

    def decode(self, embed: np.ndarray, pos: int) -> np.ndarray:
        """Run one embedding [hidden] at position `pos`; write its KV row; return float32 logits [vocab]."""
        ...

    def kv_save(self, length: int) -> KVSnapshot:
        """Copy KV rows 0..length-1 of every layer to the host."""
        ...

    def kv_restore(self, snapshot: KVSnapshot) -> None:
        """Write a snapshot back into rows 0..snapshot.length-1."""
        ...

    def close(self) -> None:
        """Release the device resources; idempotent."""
        ...
