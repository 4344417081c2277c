"""Plain-numpy forward pass of llama / qwen2 / qwen3 for the tests: the truth the CPU twin is held to.

Shares no code with `ax_llm_provider.convert`: it parses safetensors and GGUF itself (GGUF through the
`gguf` package's reader and dequantizer), undoes llama.cpp's Q/K row order with its own index map, and
runs full-sequence causal attention with explicit per-head loops.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class ReferenceModel:
    family: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rms_eps: float
    rope_theta: float
    embed: np.ndarray  # [vocab, hidden]
    final_norm: np.ndarray
    lm_head: np.ndarray  # [vocab, hidden]
    blocks: list[dict[str, np.ndarray]] = field(default_factory=list)


# ----------------------------------------------------------------------------- loading


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    blob = path.read_bytes()
    (n,) = struct.unpack_from("<Q", blob, 0)
    header = json.loads(blob[8 : 8 + n])
    base = 8 + n
    out: dict[str, np.ndarray] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        lo, hi = meta["data_offsets"]
        raw = np.frombuffer(blob, dtype=np.uint8, count=hi - lo, offset=base + lo)
        if meta["dtype"] == "F32":
            arr = raw.view("<f4").astype(np.float32)
        elif meta["dtype"] == "F16":
            arr = raw.view("<f2").astype(np.float32)
        elif meta["dtype"] == "BF16":
            arr = np.zeros(raw.size // 2, dtype="<u4")
            arr |= raw.view("<u2").astype("<u4") * 65536
            arr = arr.view(np.float32)
        else:
            raise ValueError(meta["dtype"])
        out[name] = arr.reshape(meta["shape"])
    return out


def load_hf_reference(model_dir: Path) -> ReferenceModel:
    model_dir = Path(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    tensors: dict[str, np.ndarray] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        tensors.update(_read_safetensors(f))
    family = cfg["model_type"]
    heads = cfg["num_attention_heads"]
    ref = ReferenceModel(
        family=family,
        n_layers=cfg["num_hidden_layers"],
        n_heads=heads,
        n_kv_heads=cfg.get("num_key_value_heads", heads),
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        rms_eps=cfg["rms_norm_eps"],
        rope_theta=cfg.get("rope_theta", 10000.0),
        embed=tensors["model.embed_tokens.weight"],
        final_norm=tensors["model.norm.weight"],
        lm_head=tensors.get("lm_head.weight", tensors["model.embed_tokens.weight"]),
    )
    for i in range(ref.n_layers):
        p = f"model.layers.{i}."
        block = {
            "ln1": tensors[p + "input_layernorm.weight"],
            "wq": tensors[p + "self_attn.q_proj.weight"],
            "wk": tensors[p + "self_attn.k_proj.weight"],
            "wv": tensors[p + "self_attn.v_proj.weight"],
            "wo": tensors[p + "self_attn.o_proj.weight"],
            "ln2": tensors[p + "post_attention_layernorm.weight"],
            "wg": tensors[p + "mlp.gate_proj.weight"],
            "wu": tensors[p + "mlp.up_proj.weight"],
            "wd": tensors[p + "mlp.down_proj.weight"],
        }
        for short in ("q", "k", "v"):
            if p + f"self_attn.{short}_proj.bias" in tensors:
                block["b" + short] = tensors[p + f"self_attn.{short}_proj.bias"]
        for short in ("q", "k"):
            if p + f"self_attn.{short}_norm.weight" in tensors:
                block[short + "n"] = tensors[p + f"self_attn.{short}_norm.weight"]
        ref.blocks.append(block)
    return ref


def _gguf_row_order(n_head: int, head_dim: int) -> np.ndarray:
    """Index map: HF row r of a llama Q/K projection is GGUF row order[r] (pairs vs halves)."""
    order = np.empty(n_head * head_dim, dtype=np.int64)
    half = head_dim // 2
    for h in range(n_head):
        for j in range(half):
            order[h * head_dim + j] = h * head_dim + 2 * j  # first half <- even slots
            order[h * head_dim + half + j] = h * head_dim + 2 * j + 1  # second half <- odd slots
    return order


def load_gguf_reference(path: Path) -> ReferenceModel:
    import gguf

    reader = gguf.GGUFReader(str(path))

    def meta(key: str, default: object = None) -> object:
        f = reader.fields.get(key)
        if f is None:
            return default
        return f.contents()

    arch = meta("general.architecture")
    assert arch in ("llama", "qwen2", "qwen3"), arch
    raw = {t.name: t for t in reader.tensors}

    def get(name: str) -> np.ndarray:
        t = raw[name]
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        return np.asarray(values, dtype=np.float32).reshape([int(d) for d in t.shape[::-1]])

    hidden = int(meta(f"{arch}.embedding_length"))
    heads = int(meta(f"{arch}.attention.head_count"))
    kv_heads = int(meta(f"{arch}.attention.head_count_kv", heads))
    head_dim = int(meta(f"{arch}.attention.key_length", hidden // heads))
    embed = get("token_embd.weight")
    ref = ReferenceModel(
        family=str(arch),
        n_layers=int(meta(f"{arch}.block_count")),
        n_heads=heads,
        n_kv_heads=kv_heads,
        head_dim=head_dim,
        rms_eps=float(meta(f"{arch}.attention.layer_norm_rms_epsilon")),
        rope_theta=float(meta(f"{arch}.rope.freq_base", 10000.0)),
        embed=embed,
        final_norm=get("output_norm.weight"),
        lm_head=get("output.weight") if "output.weight" in raw else embed,
    )
    q_order = _gguf_row_order(heads, head_dim)
    k_order = _gguf_row_order(kv_heads, head_dim)
    for i in range(ref.n_layers):
        p = f"blk.{i}."
        wq, wk = get(p + "attn_q.weight"), get(p + "attn_k.weight")
        if arch == "llama":
            wq, wk = wq[q_order], wk[k_order]
        block = {
            "ln1": get(p + "attn_norm.weight"), "wq": wq, "wk": wk, "wv": get(p + "attn_v.weight"),
            "wo": get(p + "attn_output.weight"), "ln2": get(p + "ffn_norm.weight"),
            "wg": get(p + "ffn_gate.weight"), "wu": get(p + "ffn_up.weight"), "wd": get(p + "ffn_down.weight"),
        }
        for short in ("q", "k", "v"):
            if p + f"attn_{short}.bias" in raw:
                block["b" + short] = get(p + f"attn_{short}.bias")
        for short in ("q", "k"):
            if p + f"attn_{short}_norm.weight" in raw:
                block[short + "n"] = get(p + f"attn_{short}_norm.weight")
        ref.blocks.append(block)
    return ref


# ----------------------------------------------------------------------------- forward


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rotate(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """x [T, heads, d]: pair element j with j + d/2 and rotate by position * theta^(-2j/d)."""
    d = x.shape[-1]
    half = d // 2
    freq = theta ** (-np.arange(half, dtype=np.float64) * 2.0 / d)
    ang = positions[:, None].astype(np.float64) * freq[None, :]
    c = np.cos(ang)[:, None, :].astype(x.dtype)
    s = np.sin(ang)[:, None, :].astype(x.dtype)
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)


def forward_hidden(model: ReferenceModel, embeds: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """Final hidden states (before the last norm) for a whole sequence of embeddings [T, hidden]."""
    x = np.asarray(embeds, dtype=dtype)
    t = x.shape[0]
    positions = np.arange(t)
    causal = np.triu(np.ones((t, t), dtype=bool), k=1)
    hd, nh, nkv = model.head_dim, model.n_heads, model.n_kv_heads
    group = nh // nkv
    for blk in model.blocks:
        w = {k: v.astype(dtype) for k, v in blk.items()}
        h = _rms(x, w["ln1"], model.rms_eps)
        q = h @ w["wq"].T + w.get("bq", 0)
        k = h @ w["wk"].T + w.get("bk", 0)
        v = h @ w["wv"].T + w.get("bv", 0)
        q, k, v = q.reshape(t, nh, hd), k.reshape(t, nkv, hd), v.reshape(t, nkv, hd)
        if "qn" in w:
            q, k = _rms(q, w["qn"], model.rms_eps), _rms(k, w["kn"], model.rms_eps)
        q, k = _rotate(q, positions, model.rope_theta), _rotate(k, positions, model.rope_theta)
        heads_out = []
        for head in range(nh):
            kv = head // group
            scores = (q[:, head] @ k[:, kv].T) / np.sqrt(hd)
            scores = np.where(causal, -np.inf, scores)
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            heads_out.append((scores / scores.sum(axis=-1, keepdims=True)) @ v[:, kv])
        x = x + np.concatenate(heads_out, axis=-1) @ w["wo"].T
        h = _rms(x, w["ln2"], model.rms_eps)
        gate = h @ w["wg"].T
        x = x + ((gate / (1 + np.exp(-gate))) * (h @ w["wu"].T)) @ w["wd"].T
    return x


def logits_from_hidden(model: ReferenceModel, hidden: np.ndarray) -> np.ndarray:
    h = _rms(hidden, model.final_norm.astype(hidden.dtype), model.rms_eps)
    return (h @ model.lm_head.T.astype(hidden.dtype)).astype(np.float32)


def bf16_round(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 -> float32 with ml_dtypes (round to nearest even), as the engine feeds them."""
    import ml_dtypes

    return np.asarray(values, dtype=np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def forward(model: ReferenceModel, token_ids: np.ndarray | list[int], *, bf16_embeddings: bool = True,
            dtype: type = np.float32) -> np.ndarray:
    """Logits [T, vocab] of a token sequence (teacher forced, causal)."""
    embeds = model.embed[np.asarray(token_ids)]
    if bf16_embeddings:
        embeds = bf16_round(embeds)
    return logits_from_hidden(model, forward_hidden(model, embeds, dtype))
