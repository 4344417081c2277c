"""The token embedding table, looked up on the host from a memory-mapped bf16 file (never loaded whole)."""

from __future__ import annotations

import mmap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..runtime.bf16 import bf16_to_float32
from .errors import ModelDirectoryError


def _advise_random(rows: np.memmap) -> None:
    """Lookups jump around the table: turn off read-ahead so only the rows used become resident."""
    mm = getattr(rows, "_mmap", None)
    if mm is not None and hasattr(mmap, "MADV_RANDOM"):
        mm.madvise(mmap.MADV_RANDOM)


class EmbeddingTable:
    """Rows of `model.embed_tokens.weight.bfloat16.bin` ([vocab, hidden] bf16) as float32 on demand."""

    def __init__(self, path: str | Path, hidden: int, vocab: int | None = None) -> None:
        self.path = Path(path)
        if self.path.suffix == ".npy":
            table = np.load(self.path, mmap_mode="r")
            if table.dtype.itemsize != 2 or table.ndim != 2:
                raise ModelDirectoryError(f"{self.path} should hold a 2-D bf16 array, "
                                          f"found {table.dtype} {table.shape}")
            self._rows = table.view(np.uint16)
        else:
            size = self.path.stat().st_size
            if size % (hidden * 2):
                raise ModelDirectoryError(
                    f"{self.path} is {size} bytes, not a whole number of bf16 rows of hidden size {hidden} "
                    f"({hidden * 2} bytes each); the file is truncated or belongs to another model"
                )
            self._rows = np.memmap(self.path, dtype=np.uint16, mode="r", shape=(size // (hidden * 2), hidden))
            _advise_random(self._rows)
        if self._rows.shape[1] != hidden:
            raise ModelDirectoryError(f"{self.path} rows are {self._rows.shape[1]} wide, "
                                      f"the model's hidden size is {hidden}")
        if vocab is not None and self._rows.shape[0] != vocab:
            raise ModelDirectoryError(
                f"{self.path} has {self._rows.shape[0]} rows but the model's vocabulary is {vocab} "
                f"(expected {vocab} x {hidden} x 2 = {vocab * hidden * 2} bytes); "
                "the file is truncated or from another model"
            )

    @property
    def vocab(self) -> int:
        return int(self._rows.shape[0])

    @property
    def hidden(self) -> int:
        return int(self._rows.shape[1])

    def lookup(self, token_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """float32 [n, hidden] for the given ids."""
        ids = np.asarray(token_ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab):
            bad = ids[(ids < 0) | (ids >= self.vocab)][0]
            raise ValueError(f"token id {bad} is outside the vocabulary (0..{self.vocab - 1})")
        return bf16_to_float32(self._rows[ids])

    def close(self) -> None:
        mm = getattr(self._rows, "_mmap", None)
        self._rows = np.empty((0, self.hidden), dtype=np.uint16)
        if mm is not None:
            mm.close()
