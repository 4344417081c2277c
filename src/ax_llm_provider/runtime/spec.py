"""Geometry of a compiled decoder stack: layers, widths and the shape groups of each layer.

A vendor layer model (`*_p128_lN_together.axmodel`) carries several shape groups. A decode group decodes one
token against a KV capacity C (published bundles have one, group 0; newer builds may carry several, e.g.
2k/4k/8k, in any order); groups with P-token inputs (P = 128) prefill a chunk against a history window of Hc
rows. Roles are told apart by token count, as ax-llm does. The CPU twin carries the same groups in its ONNX
metadata (`ax.shape_groups`). Which group runs when is decided in runtime/contract.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

IoDtype = Literal["bfloat16", "float32"]


@dataclass(frozen=True)
class ShapeGroup:
    """One compiled shape of a layer model.

    tokens:  rows of `input` / `indices` (1 for decode, P for prefill).
    history: Hc, the history columns of `mask` (`mask` is [1, tokens, history + tokens]).
    kv_rows: rows of the `K_cache` / `V_cache` inputs. Equal to `history`, except for the
             "no history" prefill group whose placeholder cache has one row.
    """

    index: int
    tokens: int
    history: int
    kv_rows: int

    @property
    def is_decode(self) -> bool:
        return self.tokens == 1


@dataclass(frozen=True)
class StackSpec:
    """Everything the engine needs to know about a loaded decoder stack."""

    layers: int
    hidden: int
    kv_dim: int
    vocab: int
    groups: tuple[ShapeGroup, ...]
    io_dtype: IoDtype = "bfloat16"

    def __post_init__(self) -> None:
        if not any(g.is_decode for g in self.groups):
            raise ValueError("a decoder stack needs a decode group (tokens == 1); these shape groups have none")
        chunks = {g.tokens for g in self.groups if not g.is_decode}
        if len(chunks) > 1:
            raise ValueError(f"prefill groups disagree on the chunk length: {sorted(chunks)}")

    @property
    def decode_groups(self) -> tuple[ShapeGroup, ...]:
        """Decode groups ordered by growing capacity (then by index)."""
        return tuple(sorted((g for g in self.groups if g.is_decode), key=lambda g: (g.history, g.index)))

    @property
    def decode_group(self) -> ShapeGroup:
        """The largest decode group: its capacity is the stack's, and it can decode any position."""
        return self.decode_groups[-1]

    @property
    def prefill_groups(self) -> tuple[ShapeGroup, ...]:
        """Prefill groups ordered by growing history capacity."""
        return tuple(sorted((g for g in self.groups if not g.is_decode), key=lambda g: g.history))

    @property
    def decode_capacity(self) -> int:
        """C: rows of the per-layer KV cache (the largest decode capacity), so the most positions a sequence holds."""
        return self.decode_group.history

    @property
    def prefill_chunk(self) -> int:
        """P: tokens per prefill call (128 on every published bundle); 1 when the model has no prefill group."""
        groups = self.prefill_groups
        return groups[0].tokens if groups else 1

    @property
    def max_prefill_history(self) -> int:
        """Largest history a prefill chunk can see; beyond it the prompt continues through decode steps."""
        groups = self.prefill_groups
        return groups[-1].history if groups else 0

    @property
    def kv_bytes_per_token(self) -> int:
        """Host bytes of one position's K and V over all layers, at the stack's I/O dtype."""
        width = 2 if self.io_dtype == "bfloat16" else 4
        return 2 * self.layers * self.kv_dim * width
