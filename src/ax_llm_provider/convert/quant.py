"""Block-quantized weights for the twin's `com.microsoft.MatMulNBits` projections.

A projection weight W [N, K] (HF layout: one row per output feature) is stored as

    W[n, k] = scale[n, b] * (code[n, k] - zero[n, b]) + offset[n, b]        b = k // block

with unsigned `bits`-bit codes, float32 scales, integer zero points and an optional float32 offset per
block. MatMulNBits computes the first term (codes packed along K, uint8 zero points); the offset term is
sum_b offset[n, b] * (sum of the inputs in block b), a small extra MatMul on the inputs' block sums
(`graph._Graph.linear`).

Why the offset term exists: GGUF Q4_1 / Q4_K / Q5_1 / Q5_K store W = d * q + m with a float minimum m.
MatMulNBits accepts float zero points (zp = -m / d would make it one op), but onnxruntime's CPU kernel
then skips prepacking and dequantizes the whole matrix to float on every call (`ComputeBUnpacked`,
~100x slower than the packed kernel, measured with onnxruntime 1.32), and -m / d is not exact in float
anyway. With zero = 0 and offset = m the codes, scales and minima are the GGUF's own values, so
`dequantize()` reproduces `gguf.quants.dequantize` bit for bit.

Formats with an exact mapping (`from_gguf`): Q4_0, Q4_1, Q4_K (4-bit codes) and Q5_0, Q5_1, Q5_K, Q8_0
(8-bit codes, the 5-bit values widened). Everything else (F32/F16/BF16, Q6_K, Q2_K/Q3_K, IQ*) is
requantized from float32 by round-to-nearest (`quantize`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

WeightFormat = Literal["float32", "q4", "int8"]
WEIGHT_FORMATS: tuple[str, ...] = ("float32", "q4", "int8")
BLOCK = 32  # the only block size the GGUF mappings use; also the requantization default
# GGUF types whose layers make "q4" the default storage: 4-bit block quants with an exact mapping.
FOUR_BIT_TYPES = frozenset({"Q4_0", "Q4_1", "Q4_K"})
_QK_K = 256


@dataclass(frozen=True, eq=False)
class BlockQuant:
    """W [N, K] = scales * (codes - zero_points) + offsets, per block of `block` along K.

    codes: uint8 [N, K] unpacked, each < 2**bits. scales: float32 [N, kb] with kb = ceil(K / block).
    zero_points: uint8 [N, kb], or None for MatMulNBits' default 2**(bits - 1).
    offsets: float32 [N, kb] or None (zero); only when K is a multiple of `block`.
    """

    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    offsets: np.ndarray | None
    bits: int
    block: int = BLOCK

    def __post_init__(self) -> None:
        n, k = self.codes.shape
        kb = -(-k // self.block)
        if self.bits not in (4, 8) or self.block < 16 or self.block & (self.block - 1):
            raise ValueError(f"unsupported block quant: {self.bits} bits, block {self.block}")
        if self.codes.dtype != np.uint8 or self.scales.shape != (n, kb) or self.scales.dtype != np.float32:
            raise ValueError("codes must be uint8 [N, K] and scales float32 [N, ceil(K / block)]")
        if self.zero_points is not None and (self.zero_points.shape != (n, kb) or self.zero_points.dtype != np.uint8):
            raise ValueError("zero points must be uint8 [N, ceil(K / block)]")
        if self.offsets is not None and (self.offsets.shape != (n, kb) or k % self.block):
            raise ValueError("offsets need K to be a multiple of the block size and shape [N, K / block]")

    @property
    def shape(self) -> tuple[int, int]:
        n, k = self.codes.shape
        return int(n), int(k)

    @property
    def k_blocks(self) -> int:
        return int(self.scales.shape[1])

    @property
    def default_zero(self) -> int:
        return 1 << (self.bits - 1)

    def zeros(self) -> np.ndarray:
        """Zero points as uint8 [N, kb], the default materialized."""
        if self.zero_points is not None:
            return self.zero_points
        return np.full(self.scales.shape, self.default_zero, np.uint8)

    def dequantize(self) -> np.ndarray:
        """float32 [N, K], evaluated as scale * (code - zero) (+ offset) in float32, like gguf's dequantizers."""
        n, k = self.shape
        kb, bs = self.k_blocks, self.block
        codes = np.full((n, kb * bs), 0, np.float32)
        codes[:, :k] = self.codes
        zeros = self.zeros().astype(np.float32)
        blocks = codes.reshape(n, kb, bs) - zeros[:, :, None]
        values = self.scales[:, :, None] * blocks
        if self.offsets is not None:
            values = values + self.offsets[:, :, None]
        return values.reshape(n, kb * bs)[:, :k].astype(np.float32, copy=False)

    def packed_codes(self) -> np.ndarray:
        """MatMulNBits input B: uint8 [N, kb, block * bits / 8], packed along K, low nibble first."""
        n, k = self.shape
        kb, bs = self.k_blocks, self.block
        codes = np.empty((n, kb * bs), np.uint8)
        codes[:, :k] = self.codes
        codes[:, k:] = self.zeros()[:, -1:]  # padding decodes to zero; A has no columns there anyway
        blocks = codes.reshape(n, kb, bs)
        if self.bits == 8:
            return np.ascontiguousarray(blocks)
        return np.ascontiguousarray(blocks[..., 0::2] | (blocks[..., 1::2] << np.uint8(4)))

    def packed_zero_points(self) -> np.ndarray | None:
        """MatMulNBits input zero_points: uint8 [N, ceil(kb * bits / 8)], or None for the default."""
        if self.zero_points is None:
            return None
        if self.bits == 8:
            return np.ascontiguousarray(self.zero_points)
        zp = self.zero_points
        if zp.shape[1] % 2:
            zp = np.concatenate([zp, np.zeros((zp.shape[0], 1), np.uint8)], axis=1)
        return np.ascontiguousarray(zp[:, 0::2] | (zp[:, 1::2] << np.uint8(4)))

    def take_rows(self, order: np.ndarray) -> BlockQuant:
        """The same weight with its rows (output features) reordered: W[order]."""
        return replace(
            self,
            codes=self.codes[order],
            scales=self.scales[order],
            zero_points=None if self.zero_points is None else self.zero_points[order],
            offsets=None if self.offsets is None else self.offsets[order],
        )

    def widened(self, bits: int) -> BlockQuant:
        """The same values with wider codes (4 -> 8 bits); exact."""
        if bits == self.bits:
            return self
        if bits < self.bits:
            raise ValueError(f"cannot narrow {self.bits}-bit codes to {bits} bits exactly")
        shift = (1 << (bits - 1)) - self.default_zero
        if self.zero_points is None:  # keep the default zero point: shift the codes with it
            return replace(self, codes=self.codes + np.uint8(shift), bits=bits)
        return replace(self, bits=bits)


def concat_rows(parts: Sequence[BlockQuant]) -> list[BlockQuant]:
    """Stack weights along N, merging neighbours of the same bits/block (one MatMulNBits each)."""
    groups: list[list[BlockQuant]] = []
    for part in parts:
        last = groups[-1][-1] if groups else None
        if last is not None and (last.bits, last.block, last.shape[1]) == (part.bits, part.block, part.shape[1]):
            groups[-1].append(part)
        else:
            groups.append([part])
    merged = []
    for group in groups:
        if len(group) == 1:
            merged.append(group[0])
            continue
        zps = None if all(p.zero_points is None for p in group) else np.concatenate([p.zeros() for p in group])
        offsets = None
        if any(p.offsets is not None for p in group):
            offsets = np.concatenate([p.offsets if p.offsets is not None else np.zeros_like(p.scales) for p in group])
        merged.append(BlockQuant(
            codes=np.concatenate([p.codes for p in group]),
            scales=np.concatenate([p.scales for p in group]),
            zero_points=zps, offsets=offsets, bits=group[0].bits, block=group[0].block,
        ))
    return merged


# ----------------------------------------------------------------------------- requantization


def quantize(weight: np.ndarray, bits: int, block: int = BLOCK) -> BlockQuant:
    """Round-to-nearest block quantization of a float [N, K] weight.

    4 bits: asymmetric, scale = (max - min) / 15 and a uint8 zero point per block (onnxruntime's
    quantizer scheme; no offset term). 8 bits: symmetric, scale = absmax / 127, default zero point 128.
    """
    w = np.asarray(weight, dtype=np.float32)
    n, k = w.shape
    kb = -(-k // block)
    padded = np.zeros((n, kb * block), np.float32)
    padded[:, :k] = w
    blocks = padded.reshape(n, kb, block)
    if bits == 8:
        absmax = np.abs(blocks).max(axis=-1)
        scales = (absmax / 127).astype(np.float32)
        inv = np.divide(1.0, scales, out=np.zeros_like(scales), where=scales > 0)
        codes = np.clip(np.rint(blocks * inv[:, :, None]), -127, 127) + 128
        zero_points = None
    elif bits == 4:
        lo = np.minimum(blocks.min(axis=-1), 0.0)  # keep 0 representable, as onnxruntime's quantizer does
        hi = np.maximum(blocks.max(axis=-1), 0.0)
        scales = ((hi - lo) / 15).astype(np.float32)
        inv = np.divide(1.0, scales, out=np.zeros_like(scales), where=scales > 0)
        zero = np.clip(np.rint(-lo * inv), 0, 15)
        codes = np.clip(np.rint(blocks * inv[:, :, None]) + zero[:, :, None], 0, 15)
        zero_points = zero.astype(np.uint8)
    else:
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    codes = codes.astype(np.uint8).reshape(n, kb * block)[:, :k]
    return BlockQuant(np.ascontiguousarray(codes), scales, zero_points, None, bits, block)


# ----------------------------------------------------------------------------- GGUF blocks


def _f16(raw: np.ndarray) -> np.ndarray:
    """[B, 2] uint8 -> [B] float32 (fp16 widening is exact)."""
    return np.ascontiguousarray(raw).view("<f2")[:, 0].astype(np.float32)


def _nibbles_split(qs: np.ndarray) -> np.ndarray:
    """ggml's 4-bit layout: [B, 16] bytes -> [B, 32] codes, low nibbles are elements 0..15, high 16..31."""
    return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=-1)


def _high_bits(qh: np.ndarray) -> np.ndarray:
    """Q5_0/Q5_1: [B, 4] bytes (a little-endian uint32) -> [B, 32] fifth bits."""
    word = np.ascontiguousarray(qh).view("<u4")[:, 0]
    return ((word[:, None] >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)


def _k_scale_min(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: 12 bytes of packed 6-bit scales and mins per super-block -> [B, 8] each."""
    s = scales.reshape(-1, 3, 4)
    d, m, m_d = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc, mn


def from_gguf(raw: np.ndarray, type_name: str, shape: tuple[int, int]) -> BlockQuant | None:
    """The exact block form of a GGUF tensor ([N, K] in numpy order), or None when it has none.

    `raw` is the tensor's data as GGUFReader gives it (uint8, the blocks of each row in order).
    """
    n, k = shape
    blocks = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
    if type_name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
        if k % 32:
            return None
        size = {"Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24, "Q8_0": 34}[type_name]
        b = blocks.reshape(-1, size)
        d = _f16(b[:, 0:2])
        offsets = None
        if type_name == "Q4_0":  # d * (q - 8)
            codes, zero_points, bits = _nibbles_split(b[:, 2:]), None, 4
        elif type_name == "Q4_1":  # d * q + m
            codes, bits = _nibbles_split(b[:, 4:]), 4
            zero_points, offsets = np.zeros(len(b), np.uint8), _f16(b[:, 2:4])
        elif type_name == "Q5_0":  # d * (q - 16): 8-bit codes q + 112 against the default zero 128
            codes, zero_points, bits = (_nibbles_split(b[:, 6:]) | (_high_bits(b[:, 2:6]) << 4)) + 112, None, 8
        elif type_name == "Q5_1":  # d * q + m: codes q + 128 against the default zero 128
            codes, zero_points, bits = (_nibbles_split(b[:, 8:]) | (_high_bits(b[:, 4:8]) << 4)) + 128, None, 8
            offsets = _f16(b[:, 2:4])
        else:  # Q8_0: d * int8
            codes, zero_points, bits = b[:, 2:].view(np.int8).astype(np.int16) + 128, None, 8
        kb = k // 32
        return BlockQuant(
            codes=np.ascontiguousarray(codes.astype(np.uint8).reshape(n, k)),
            scales=d.reshape(n, kb),
            zero_points=None if zero_points is None else zero_points.reshape(n, kb),
            offsets=None if offsets is None else offsets.reshape(n, kb),
            bits=bits,
        )
    if type_name in ("Q4_K", "Q5_K"):
        if k % _QK_K:
            return None
        size = 144 if type_name == "Q4_K" else 176
        b = blocks.reshape(-1, size)
        d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
        sc, mn = _k_scale_min(b[:, 4:16])
        # Same float32 products as gguf: d * sc and dmin * m per 32-value sub-block.
        scales = d[:, None] * sc.astype(np.float32)
        offsets = -(dmin[:, None] * mn.astype(np.float32))
        if type_name == "Q4_K":  # 4 groups of 32 bytes: low nibbles sub-block 2j, high nibbles 2j+1
            qs = b[:, 16:].reshape(-1, 4, 32)
            codes = np.stack([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=2).reshape(-1, _QK_K)
            zero_points, bits = np.zeros(scales.shape, np.uint8), 4
        else:
            qh = b[:, 16:48]  # bit j of byte i is the fifth bit of value i of sub-block j
            qs = b[:, 48:].reshape(-1, 4, 32)
            low = np.stack([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=2).reshape(-1, 8, 32)
            high = (qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & np.uint8(1)
            codes = ((low | (high << np.uint8(4))) + np.uint8(128)).reshape(-1, _QK_K)
            zero_points, bits = None, 8
        kb = k // 32
        return BlockQuant(
            codes=np.ascontiguousarray(codes.reshape(n, k)),
            scales=np.ascontiguousarray(scales.reshape(n, kb), dtype=np.float32),
            zero_points=None if zero_points is None else zero_points.reshape(n, kb),
            offsets=np.ascontiguousarray(offsets.reshape(n, kb), dtype=np.float32),
            bits=bits,
        )
    return None


def storage_for(weights: str, exact: BlockQuant | None, source_is_quantized: bool, head: bool) -> int | None:
    """Bits to store one projection with (None: float32), given the twin's weight format.

    q4: an exact GGUF mapping keeps its own bits; other GGUF-quantized tensors (Q6_K, IQ*) and the lm head
    get 8 bits (no second lossy 4-bit rounding); float tensors of the layers get 4 bits. int8: 8 bits.
    """
    if weights == "float32":
        return None
    if weights == "int8":
        return 8
    if exact is not None:
        return exact.bits
    return 8 if (head or source_is_quantized) else 4
