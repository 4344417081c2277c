"""Model families the converter knows: their geometry, their traits and the canonical tensor names.

Every source (GGUF, safetensors) hands tensors over under the Hugging Face names below, in the Hugging
Face layout ([out, in] for projections, q/k rows in "rotate_half" order), as float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConversionError

FAMILIES = ("llama", "qwen2", "qwen3")

# HF `architectures[0]` / `model_type` -> family.
HF_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
HF_MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}

EMBED = "model.embed_tokens.weight"
FINAL_NORM = "model.norm.weight"
LM_HEAD = "lm_head.weight"

# Short part name -> HF suffix under `model.layers.{i}.`.
LAYER_PARTS = {
    "attn_norm": "input_layernorm.weight",
    "q": "self_attn.q_proj.weight",
    "k": "self_attn.k_proj.weight",
    "v": "self_attn.v_proj.weight",
    "o": "self_attn.o_proj.weight",
    "q_bias": "self_attn.q_proj.bias",
    "k_bias": "self_attn.k_proj.bias",
    "v_bias": "self_attn.v_proj.bias",
    "o_bias": "self_attn.o_proj.bias",
    "q_norm": "self_attn.q_norm.weight",
    "k_norm": "self_attn.k_norm.weight",
    "mlp_norm": "post_attention_layernorm.weight",
    "gate": "mlp.gate_proj.weight",
    "up": "mlp.up_proj.weight",
    "down": "mlp.down_proj.weight",
}


def layer_tensor(layer: int, part: str) -> str:
    return f"model.layers.{layer}.{LAYER_PARTS[part]}"


@dataclass(frozen=True, eq=False)
class ModelConfig:
    """Geometry and traits of one decoder-only checkpoint."""

    architecture: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    rms_eps: float
    context_length: int
    inv_freq: np.ndarray  # [head_dim // 2] float32, rope scaling already applied
    tie_embeddings: bool
    attn_biases: tuple[str, ...] = ()  # which of "q", "k", "v", "o" carry a bias
    qk_norm: bool = False

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def layer_parts(self) -> list[str]:
        """Part names every layer of this checkpoint must carry."""
        parts = ["attn_norm", "q", "k", "v", "o", "mlp_norm", "gate", "up", "down"]
        parts += [f"{p}_bias" for p in self.attn_biases]
        if self.qk_norm:
            parts += ["q_norm", "k_norm"]
        return parts

    def validate(self) -> None:
        for key in ("layers", "hidden", "heads", "kv_heads", "head_dim", "ffn", "vocab"):
            if int(getattr(self, key)) <= 0:
                raise ConversionError(f"config field {key} must be positive, got {getattr(self, key)}")
        if self.heads % self.kv_heads:
            raise ConversionError(
                f"{self.heads} attention heads are not a multiple of {self.kv_heads} KV heads; "
                "the checkpoint's config is inconsistent"
            )
        if self.head_dim % 2:
            raise ConversionError(f"head_dim {self.head_dim} must be even for rotary embeddings")
        if self.inv_freq.shape != (self.head_dim // 2,):
            raise ConversionError(
                f"rotary frequencies have shape {self.inv_freq.shape}, expected ({self.head_dim // 2},); "
                "partial rotary embeddings are not supported"
            )


def family_traits(architecture: str, attention_bias: bool = False) -> tuple[tuple[str, ...], bool]:
    """(biased projections, per-head q/k RMSNorm) of a family."""
    if architecture == "qwen2":
        return ("q", "k", "v"), False
    biases: tuple[str, ...] = ("q", "k", "v", "o") if attention_bias else ()
    if architecture == "qwen3":
        return biases, True
    if architecture == "llama":
        return biases, False
    raise ConversionError(f"unsupported architecture {architecture!r}; supported families: {', '.join(FAMILIES)}")


def default_inv_freq(theta: float, head_dim: int) -> np.ndarray:
    exponents = np.arange(0, head_dim, 2, dtype=np.float64) / head_dim
    return (1.0 / theta**exponents).astype(np.float32)


def scaled_inv_freq(theta: float, head_dim: int, scaling: Mapping[str, Any] | None) -> np.ndarray:
    """Rotary frequencies with HF `rope_scaling` applied (default, linear, llama3).

    Only schemes that rescale the frequencies are representable: the graph takes them as a constant.
    """
    inv_freq = default_inv_freq(theta, head_dim).astype(np.float64)
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default")) or "default"
    if kind == "default":
        return inv_freq.astype(np.float32)
    assert scaling is not None
    factor = float(scaling.get("factor", 1.0))
    if kind == "linear":
        return (inv_freq / factor).astype(np.float32)
    if kind == "llama3":
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_len = float(scaling.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv_freq
        long_wave = wavelen > old_len / low  # low frequencies: fully interpolated
        short_wave = wavelen < old_len / high  # high frequencies: untouched
        smooth = (old_len / wavelen - low) / (high - low)
        blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        out = np.where(long_wave, inv_freq / factor, np.where(short_wave, inv_freq, blended))
        return out.astype(np.float32)
    raise ConversionError(
        f"rope scaling {kind!r} is not supported (only default, linear and llama3); "
        "convert a checkpoint without it or extend convert/families.py"
    )


def hf_family(config: Mapping[str, Any]) -> str:
    for arch in config.get("architectures") or ():
        if arch in HF_ARCHITECTURES:
            return HF_ARCHITECTURES[arch]
    model_type = config.get("model_type")
    if model_type in HF_MODEL_TYPES:
        return HF_MODEL_TYPES[model_type]
    raise ConversionError(
        f"unsupported architecture {config.get('architectures')!r} (model_type {model_type!r}); "
        f"supported: {', '.join(sorted(HF_ARCHITECTURES))}"
    )


def config_from_hf(config: Mapping[str, Any]) -> ModelConfig:
    """ModelConfig from a Hugging Face config.json (transformers 4.x or 5.x spelling)."""
    architecture = hf_family(config)
    try:
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        layers = int(config["num_hidden_layers"])
        ffn = int(config["intermediate_size"])
        vocab = int(config["vocab_size"])
    except KeyError as exc:
        raise ConversionError(f"config.json lacks {exc.args[0]!r}; is this a {architecture} checkpoint?") from exc
    head_dim = int(config.get("head_dim") or hidden // heads)
    # transformers 5 moved rope_theta and rope_scaling into rope_parameters.
    rope = dict(config.get("rope_parameters") or {})
    theta = float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    scaling = config.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    biases, qk_norm = family_traits(architecture, bool(config.get("attention_bias", False)))
    if config.get("mlp_bias"):
        raise ConversionError("mlp_bias=true checkpoints are not supported by the CPU twin graph")
    cfg = ModelConfig(
        architecture=architecture,
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=head_dim,
        ffn=ffn,
        vocab=vocab,
        rms_eps=float(config.get("rms_norm_eps", 1e-6)),
        context_length=int(config.get("max_position_embeddings", 2048)),
        inv_freq=scaled_inv_freq(theta, head_dim, scaling),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        attn_biases=biases,
        qk_norm=qk_norm,
    )
    cfg.validate()
    return cfg
