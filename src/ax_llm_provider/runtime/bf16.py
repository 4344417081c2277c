"""bfloat16 as raw uint16 bits, so the core needs no ml_dtypes: the card's I/O and the embedding files are bf16."""

from __future__ import annotations

import numpy as np


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """uint16 bf16 bits -> float32 (exact: bf16 is the top half of a float32)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16(values: np.ndarray) -> np.ndarray:
    """float32 -> uint16 bf16 bits, rounding to nearest even (NaN stays NaN)."""
    f = np.ascontiguousarray(values, dtype=np.float32)
    bits = f.view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    out = ((bits + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(f)
    if nan.any():
        out[nan] = 0x7FC0
    return out


def bf16_round(values: np.ndarray) -> np.ndarray:
    """float32 values rounded to bf16 (as the card stores them), kept as float32."""
    return bf16_to_float32(float32_to_bf16(np.asarray(values, dtype=np.float32)))
