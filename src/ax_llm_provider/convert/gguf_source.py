"""GGUF checkpoints (llama, qwen2, qwen3), read with the `gguf` package and dequantized to float32.

llama.cpp's converter permutes the rows of llama-family Q/K projections so its interleaved-pair rope
applies; the HF "rotate_half" graph needs them back in HF order (qwen2/qwen3 GGUFs are not permuted).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConversionError
from .families import (
    EMBED,
    FAMILIES,
    FINAL_NORM,
    LAYER_PARTS,
    LM_HEAD,
    ModelConfig,
    default_inv_freq,
    family_traits,
)
from .quant import FOUR_BIT_TYPES, BlockQuant, from_gguf
from .tokenizer import GGUFVocab, write_gguf_tokenizer

log = logging.getLogger(__name__)

try:
    import gguf
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ConversionError("reading GGUF needs the `gguf` package: pip install 'ax-llm-provider[cpu]'") from exc

_GLOBAL_NAMES = {"token_embd.weight": EMBED, "output_norm.weight": FINAL_NORM, "output.weight": LM_HEAD}
# GGUF per-block tensor suffix -> LAYER_PARTS key.
_BLOCK_PARTS = {
    "attn_norm.weight": "attn_norm",
    "attn_q.weight": "q",
    "attn_k.weight": "k",
    "attn_v.weight": "v",
    "attn_output.weight": "o",
    "attn_q.bias": "q_bias",
    "attn_k.bias": "k_bias",
    "attn_v.bias": "v_bias",
    "attn_output.bias": "o_bias",
    "attn_q_norm.weight": "q_norm",
    "attn_k_norm.weight": "k_norm",
    "ffn_norm.weight": "mlp_norm",
    "ffn_gate.weight": "gate",
    "ffn_up.weight": "up",
    "ffn_down.weight": "down",
}


def _hf_to_gguf_names(layers: int) -> dict[str, str]:
    names = {hf: g for g, hf in _GLOBAL_NAMES.items()}
    for i in range(layers):
        for suffix, part in _BLOCK_PARTS.items():
            names[f"model.layers.{i}.{LAYER_PARTS[part]}"] = f"blk.{i}.{suffix}"
    return names


def field_value(field: Any) -> Any:
    """Decode a GGUFReader field (scalar, string or array) without relying on newer helpers."""
    types = field.types
    if not types:
        return None
    if types[0] == gguf.GGUFValueType.ARRAY:
        if len(types) > 1 and types[1] == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    part = field.parts[field.data[0]]
    if types[0] == gguf.GGUFValueType.STRING:
        return bytes(part).decode("utf-8", errors="replace")
    return part.tolist()[0]


def unpermute_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (pairs per head back to halves); works for weights and biases."""
    rows = weight.shape[0]
    head_dim = rows // n_head
    return (
        weight.reshape(n_head, head_dim // 2, 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


class GGUFSource:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._reader = gguf.GGUFReader(path, "r")
        except (ValueError, OSError, IndexError, KeyError) as exc:
            raise ConversionError(f"{path} is not a readable GGUF file ({exc}); download it again") from exc
        self._fields = {name: field_value(f) for name, f in self._reader.fields.items()
                        if not name.startswith("tokenizer.ggml.")}
        self._tensors = {t.name: t for t in self._reader.tensors}
        arch = self._fields.get("general.architecture")
        if arch not in FAMILIES:
            raise ConversionError(
                f"{path}: GGUF architecture {arch!r} is not supported; supported: {', '.join(FAMILIES)}"
            )
        self.config = self._read_config(str(arch))
        self._names = _hf_to_gguf_names(self.config.layers)
        self.quantization = self._quantization()
        self._check_quant_types()
        log.info("opened %s: %s, %d layers, %s", path, arch, self.config.layers, self.quantization)

    def _get(self, key: str, default: Any = None) -> Any:
        value = self._fields.get(key, default)
        if value is None:
            raise ConversionError(f"{self.path}: GGUF metadata {key!r} is missing; the file is incomplete")
        return value

    def _read_config(self, arch: str) -> ModelConfig:
        if "token_embd.weight" not in self._tensors:
            raise ConversionError(f"{self.path}: tensor 'token_embd.weight' is missing")
        hidden = int(self._get(f"{arch}.embedding_length"))
        heads = int(self._get(f"{arch}.attention.head_count"))
        head_dim = int(self._fields.get(f"{arch}.attention.key_length") or hidden // heads)
        rope_dims = int(self._fields.get(f"{arch}.rope.dimension_count") or head_dim)
        if rope_dims != head_dim:
            raise ConversionError(f"{self.path}: partial rotary ({rope_dims} of {head_dim} dims) is not supported")
        theta = float(self._fields.get(f"{arch}.rope.freq_base") or 10000.0)
        inv_freq = default_inv_freq(theta, head_dim)
        scaling = self._fields.get(f"{arch}.rope.scaling.type") or "none"
        if scaling == "linear":
            inv_freq = inv_freq / np.float32(self._get(f"{arch}.rope.scaling.factor"))
        elif scaling != "none":
            raise ConversionError(f"{self.path}: rope scaling {scaling!r} is not supported (none, linear)")
        if "rope_freqs.weight" in self._tensors:  # llama3-style per-frequency factors
            inv_freq = inv_freq / self._dequantize("rope_freqs.weight")
        biases = tuple(p for p in ("q", "k", "v", "o")
                       if f"blk.0.attn_{'output' if p == 'o' else p}.bias" in self._tensors)
        required_biases, qk_norm = family_traits(arch)
        if not set(required_biases) <= set(biases):
            raise ConversionError(f"{self.path}: {arch} needs q/k/v biases but 'blk.0.attn_q.bias' is missing")
        cfg = ModelConfig(
            architecture=arch,
            layers=int(self._get(f"{arch}.block_count")),
            hidden=hidden,
            heads=heads,
            kv_heads=int(self._fields.get(f"{arch}.attention.head_count_kv") or heads),
            head_dim=head_dim,
            ffn=int(self._get(f"{arch}.feed_forward_length")),
            vocab=int(self._tensors["token_embd.weight"].shape[-1]),
            rms_eps=float(self._fields.get(f"{arch}.attention.layer_norm_rms_epsilon") or 1e-5),
            context_length=int(self._fields.get(f"{arch}.context_length") or 2048),
            inv_freq=np.asarray(inv_freq, dtype=np.float32),
            tie_embeddings="output.weight" not in self._tensors,
            attn_biases=biases,
            qk_norm=qk_norm,
        )
        cfg.validate()
        return cfg

    def _quantization(self) -> str:
        file_type = self._fields.get("general.file_type")
        if file_type is not None:
            try:
                return gguf.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_")
            except ValueError:
                pass
        counts = Counter(t.tensor_type.name for t in self._tensors.values() if len(t.shape) > 1)
        return counts.most_common(1)[0][0] if counts else "F32"

    def _check_quant_types(self) -> None:
        """Fail before any work if a tensor's quant type cannot be dequantized by `gguf`."""
        seen: set[Any] = set()
        for t in self._tensors.values():
            if t.tensor_type in seen:
                continue
            seen.add(t.tensor_type)
            try:
                gguf.quants.dequantize(t.data[:1], t.tensor_type)
            except (NotImplementedError, ValueError) as exc:
                raise ConversionError(
                    f"{self.path}: tensor {t.name!r} uses quant type {t.tensor_type.name}, which the installed "
                    f"`gguf` cannot dequantize ({exc}); upgrade gguf or re-quantize to Q8_0/Q4_K"
                ) from exc

    def _dequantize(self, gguf_name: str) -> np.ndarray:
        t = self._tensors[gguf_name]
        try:
            values = gguf.quants.dequantize(t.data, t.tensor_type)
        except (NotImplementedError, ValueError) as exc:
            raise ConversionError(f"{self.path}: cannot dequantize {gguf_name} ({t.tensor_type.name}): {exc}") from exc
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dims innermost first
        return np.array(values, dtype=np.float32).reshape(shape)

    def default_name(self) -> str:
        base = self._fields.get("general.basename")
        size = self._fields.get("general.size_label")
        if base and size:
            return f"{base}:{size}".lower()
        return self.path.stem.lower()

    def has(self, name: str) -> bool:
        return self._names.get(name) in self._tensors

    def _gguf_name(self, name: str) -> str:
        gguf_name = self._names.get(name)
        if gguf_name is None or gguf_name not in self._tensors:
            raise ConversionError(
                f"{self.path}: tensor {gguf_name or name!r} is missing; the GGUF is incomplete or not a "
                f"{self.config.architecture} model"
            )
        return gguf_name

    def _row_heads(self, gguf_name: str) -> int | None:
        """Head count of a llama Q/K tensor whose rows llama.cpp permuted, else None."""
        if self.config.architecture == "llama" and gguf_name.split(".", 2)[-1] in (
            "attn_q.weight", "attn_q.bias", "attn_k.weight", "attn_k.bias"
        ):
            return self.config.heads if ".attn_q." in gguf_name else self.config.kv_heads
        return None

    def tensor(self, name: str) -> np.ndarray:
        gguf_name = self._gguf_name(name)
        values = self._dequantize(gguf_name)
        heads = self._row_heads(gguf_name)
        if heads is not None:
            values = unpermute_rows(values, heads)
        return values

    def tensor_type(self, name: str) -> str:
        """The GGUF storage type of a tensor: "Q4_1", "Q8_0", "F32", ..."""
        return self._tensors[self._gguf_name(name)].tensor_type.name

    def block_quant(self, name: str) -> BlockQuant | None:
        """A 2-D tensor's exact block-quantized form (codes and scales as stored), or None when its type has none.

        `BlockQuant.dequantize()` of the result equals `tensor(name)` bit for bit.
        """
        gguf_name = self._gguf_name(name)
        t = self._tensors[gguf_name]
        if len(t.shape) != 2:
            return None
        shape = (int(t.shape[1]), int(t.shape[0]))  # GGUF lists dims innermost first
        quant = from_gguf(np.asarray(t.data), t.tensor_type.name, shape)
        heads = self._row_heads(gguf_name)
        if quant is not None and heads is not None:
            quant = quant.take_rows(unpermute_rows(np.arange(shape[0]), heads))
        return quant

    def default_weights(self) -> str:
        """Storage when none is asked for: "q4" if most layer matrices are Q4_0/Q4_1/Q4_K, else "float32"."""
        types = Counter(t.tensor_type.name for name, t in self._tensors.items()
                        if name.startswith("blk.") and len(t.shape) == 2)
        four_bit = sum(n for kind, n in types.items() if kind in FOUR_BIT_TYPES)
        return "q4" if types and four_bit * 2 >= sum(types.values()) else "float32"

    def _vocab(self) -> GGUFVocab:
        fields = self._reader.fields

        def get(key: str, default: Any = None) -> Any:
            return field_value(fields[key]) if key in fields else default

        tokens = get("tokenizer.ggml.tokens")
        if not tokens:
            raise ConversionError(f"{self.path}: GGUF has no tokenizer.ggml.tokens; cannot build a tokenizer")
        add_bos = get("tokenizer.ggml.add_bos_token")
        return GGUFVocab(
            model=str(get("tokenizer.ggml.model", "gpt2")),
            pre=str(get("tokenizer.ggml.pre", "default")),
            tokens=list(tokens),
            token_types=[int(t) for t in get("tokenizer.ggml.token_type", [])],
            merges=list(get("tokenizer.ggml.merges", [])),
            bos_id=get("tokenizer.ggml.bos_token_id"),
            eos_id=get("tokenizer.ggml.eos_token_id"),
            unk_id=get("tokenizer.ggml.unknown_token_id"),
            pad_id=get("tokenizer.ggml.padding_token_id"),
            add_bos=bool(add_bos) if add_bos is not None else False,
            add_eos=bool(get("tokenizer.ggml.add_eos_token", False)),
            chat_template=self._fields.get("tokenizer.chat_template"),
            max_length=self.config.context_length,
        )

    def write_tokenizer(self, dest: Path) -> list[int]:
        vocab = self._vocab()
        write_gguf_tokenizer(vocab, dest)
        ids = [vocab.eos_id]
        for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
            if key in self._reader.fields:
                ids.append(field_value(self._reader.fields[key]))
        return list(dict.fromkeys(int(i) for i in ids if i is not None))

    def close(self) -> None:
        # GGUFReader holds a numpy memmap; dropping the references lets it close.
        self._tensors = {}
