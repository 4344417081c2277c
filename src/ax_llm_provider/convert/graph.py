"""ONNX graphs of the CPU twin: one decoder layer, and the post model (final norm + lm_head).

The layer graph implements the vendor contract of docs/cpu-twin.md: S new tokens, Hc = M - S history
rows taken from the caches, additive mask over M columns, RoPE from `indices`, only the new K/V rows out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .families import ModelConfig
from .quant import BlockQuant, concat_rows

OPSET = 17
CONTRIB_DOMAIN = "com.microsoft"  # MatMulNBits: onnxruntime's contrib op, opset version 1
# MatMulNBits accuracy levels on onnxruntime's CPU kernels (measured with 1.32, x86-64 AVX-512):
#   0 -> fp32 compute: B blocks dequantized in registers, float FMA; exact. 4-bit weights use it.
#   4 -> int8 compute: the input is quantized to int8 per block inside the op (like llama.cpp's Q8
#        activations). The only fast kernel for 8-bit B (at level 0 a bits=8 op dequantizes the whole
#        matrix to float on every call, ~100x slower). Alone it costs ~5e-3 relative error per product
#        (SmolLM2 logits: cosine 0.89 at worst against float), so its input goes through
#        `_Graph._int8_split`, which brings the error to ~1e-5 for one read of B.
LEVEL_FP32, LEVEL_INT8 = 0, 4
IR_VERSION = 8  # what opset 17 shipped with; keeps the files loadable by older onnxruntime
TWIN_FORMAT = "ax-llm-twin/1"
PRODUCER = "ax_llm_provider.convert"


def shape_groups(decode_capacity: int, prefill_chunk: int, histories: Sequence[int]) -> list[dict[str, int]]:
    """`ax.shape_groups`: decode group first, then one prefill group per history capacity."""
    groups = [{"tokens": 1, "history": decode_capacity, "kv_rows": decode_capacity}]
    groups += [{"tokens": prefill_chunk, "history": h, "kv_rows": max(h, 1)} for h in histories]
    return groups


Weight = np.ndarray | BlockQuant | Sequence[BlockQuant]  # float [out, in], or block-quantized row groups


def stack_rows(parts: Sequence[np.ndarray | BlockQuant]) -> Weight:
    """Fuse projections along the output axis (q|k|v, gate|up), float or block-quantized alike."""
    if all(isinstance(p, np.ndarray) for p in parts):
        return np.concatenate([np.asarray(p) for p in parts], axis=0)
    if all(isinstance(p, BlockQuant) for p in parts):
        return concat_rows([p for p in parts if isinstance(p, BlockQuant)])
    raise TypeError("cannot fuse float and block-quantized projections")


class _Graph:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._count = 0
        self._cache: dict[tuple[str, ...], str] = {}  # values computed once per input (block sums, splits)
        self.contrib = False  # uses com.microsoft ops

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self._name(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def ints(self, hint: str, values: Sequence[int]) -> str:
        return self.const(hint, np.asarray(values, dtype=np.int64))

    def scalar(self, hint: str, value: float) -> str:
        return self.const(hint, np.asarray(value, dtype=np.float32))

    def op(self, op_type: str, inputs: Sequence[str], hint: str = "", outputs: Sequence[str] | int = 1,
           **attrs: Any) -> str | list[str]:
        """Add a node; returns its output name (or names when several outputs are asked for)."""
        base = hint or op_type.lower()
        names = [self._name(base) for _ in range(outputs)] if isinstance(outputs, int) else list(outputs)
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=self._name(f"n_{base}"), **attrs))
        self.contrib |= attrs.get("domain") == CONTRIB_DOMAIN
        return names[0] if len(names) == 1 else names

    def many(self, op_type: str, inputs: Sequence[str], hint: str, outputs: Sequence[str] | int,
             **attrs: Any) -> list[str]:
        out = self.op(op_type, inputs, hint, outputs, **attrs)
        return [out] if isinstance(out, str) else out

    def one(self, op_type: str, inputs: Sequence[str], hint: str = "", **attrs: Any) -> str:
        out = self.op(op_type, inputs, hint, **attrs)
        assert isinstance(out, str)
        return out

    def rms_norm(self, x: str, weight: np.ndarray, eps: float, hint: str) -> str:
        """HF RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * weight."""
        square = self.one("Mul", [x, x], f"{hint}_sq")
        mean = self.one("ReduceMean", [square], f"{hint}_mean", axes=[-1], keepdims=1)
        root = self.one("Sqrt", [self.one("Add", [mean, self.scalar(f"{hint}_eps", eps)])], f"{hint}_rms")
        normed = self.one("Div", [x, root], f"{hint}_normed")
        return self.one("Mul", [normed, self.const(f"{hint}_weight", weight.astype(np.float32))], hint)

    def linear(self, x: str, weight: Weight, bias: np.ndarray | None, hint: str, out: str | None = None) -> str:
        """x @ weight.T (+ bias); `weight` is [out, in] as in HF checkpoints, float or block-quantized.

        `out` names the result (otherwise a generated name).
        """
        last = out if bias is None else None  # the node that produces the result
        if isinstance(weight, np.ndarray):
            w = self.const(f"{hint}_w", weight.T.astype(np.float32))
            y = self.many("MatMul", [x, w], hint, [last] if last else 1)[0]
        else:
            groups = [weight] if isinstance(weight, BlockQuant) else list(weight)
            if len(groups) == 1:
                y = self._matmul_nbits(x, groups[0], hint, last)
            else:  # row groups of different bit widths: one op each, outputs concatenated
                parts = [self._matmul_nbits(x, q, f"{hint}{i}", None) for i, q in enumerate(groups)]
                y = self.many("Concat", parts, f"{hint}_cat", [last] if last else 1, axis=-1)[0]
        if bias is not None:
            b = self.const(f"{hint}_b", bias.astype(np.float32))
            y = self.many("Add", [y, b], f"{hint}_bias", [out] if out else 1)[0]
        return y

    def _matmul_nbits(self, x: str, q: BlockQuant, hint: str, out: str | None) -> str:
        """com.microsoft.MatMulNBits over the packed codes, plus the per-block offset term when there is one.

        4-bit codes run the fp32 kernel; 8-bit codes the int8 kernel on the split input (`_int8_split`).
        """
        n, k = q.shape
        weights = [self.const(f"{hint}_qw", q.packed_codes()),
                   self.const(f"{hint}_scales", q.scales)]
        zp = q.packed_zero_points()
        if zp is not None:
            weights.append(self.const(f"{hint}_zp", zp))
        attrs = {"K": k, "N": n, "bits": q.bits, "block_size": q.block}
        last = out if q.offsets is None else None
        if q.bits == 8:
            y = self._int8_product(x, weights, attrs, q.block, hint, last)
        else:
            y = self.many("MatMulNBits", [x, *weights], hint, [last] if last else 1, domain=CONTRIB_DOMAIN,
                          accuracy_level=LEVEL_FP32, **attrs)[0]
        if q.offsets is None:
            return y
        # sum_b offset[n, b] * (sum of x over block b): block sums [.., kb] @ offsets.T [kb, N].
        key = ("block_sums", x, str(q.block))
        if key not in self._cache:
            blocks = self.one("Reshape", [x, self.ints(f"{hint}_blocks", [0, 0, q.k_blocks, q.block])])
            self._cache[key] = self.one("ReduceSum", [blocks, self.ints("last", [-1])], f"{hint}_bsum", keepdims=0)
        offsets = self.const(f"{hint}_offsets", q.offsets.T)
        shift = self.one("MatMul", [self._cache[key], offsets], f"{hint}_offset")
        return self.many("Add", [y, shift], f"{hint}_min", [out] if out else 1)[0]

    def _int8_product(self, x: str, weights: Sequence[str], attrs: Mapping[str, int], block: int, hint: str,
                      out: str | None) -> str:
        """MatMulNBits at accuracy level 4 on [grid; residual] rows of x, the two halves of the result summed."""
        y = self.one("MatMulNBits", [self._int8_split(x, attrs["K"], block), *weights], hint,
                     domain=CONTRIB_DOMAIN, accuracy_level=LEVEL_INT8, **attrs)
        halves = self.one("Reshape", [y, self.ints(f"{hint}_halves", [1, 2, -1, attrs["N"]])])
        return self.many("ReduceSum", [halves, self.ints("axis1", [1])], f"{hint}_sum", [out] if out else 1,
                         keepdims=0)[0]

    def _int8_split(self, x: str, k: int, block: int) -> str:
        """x [1, S, K] -> [1, 2S, K]: x rounded to the int8 grid of each block (absmax / 127 steps), then the rest.

        The level-4 kernel quantizes each row to int8 per block. The grid row passes that step unchanged (its
        values are j * step with |j| <= 127), and the residual row, at most half a step, is quantized on a grid
        ~250x finer: the two rows' products add up to the float product within ~1e-5 of the block maximum.
        """
        key = ("split", x, str(block))
        if key in self._cache:
            return self._cache[key]
        padded = -(-k // block) * block
        if padded != k:  # the last block is short: pad it with zeros, cut them off again below
            x_blocks = self.one("Pad", [x, self.ints("pads", [0, 0, 0, 0, 0, padded - k])], "x_padded")
        else:
            x_blocks = x
        blocks = self.one("Reshape", [x_blocks, self.ints("blocks", [0, 0, padded // block, block])], "x_blocks")
        amax = self.one("ReduceMax", [self.one("Abs", [blocks])], "amax", axes=[-1], keepdims=1)
        step = self.one("Mul", [self.one("Max", [amax, self.scalar("tiny", 1e-30)]), self.scalar("inv127", 1 / 127)],
                        "step")
        grid = self.one("Mul", [self.one("Round", [self.one("Div", [blocks, step])]), step], "grid")
        rows = self.one("Concat", [grid, self.one("Sub", [blocks, grid], "rest")], "split_blocks", axis=1)
        split = self.one("Reshape", [rows, self.ints("split_shape", [1, -1, padded])], "x_split")
        if padded != k:
            split = self.one("Slice", [split, self.ints("zero", [0]), self.ints("k", [k]), self.ints("last", [-1])],
                             "x_split_k")
        self._cache[key] = split
        return split


def _rope(g: _Graph, x: str, cos: str, sin: str, half: int, hint: str) -> str:
    """x * cos + rotate_half(x) * sin with rotate_half(x) = concat(-x2, x1) (HF convention)."""
    x1, x2 = g.many("Split", [x, g.ints("half", [half, half])], f"{hint}_halves", outputs=2, axis=-1)
    rotated = g.one("Concat", [g.one("Neg", [x2]), x1], f"{hint}_rot", axis=-1)
    return g.one("Add", [g.one("Mul", [x, cos]), g.one("Mul", [rotated, sin])], hint)


def _model(g: _Graph, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           props: Mapping[str, str]) -> onnx.ModelProto:
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.initializers)
    opsets = [helper.make_opsetid("", OPSET)]
    if g.contrib:
        opsets.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
    model = helper.make_model(graph, opset_imports=opsets, producer_name=PRODUCER)
    model.ir_version = IR_VERSION
    helper.set_model_props(model, dict(props))
    return model


def build_layer_graph(cfg: ModelConfig, layer: int, weights: Mapping[str, np.ndarray | BlockQuant],
                      groups: Sequence[Mapping[str, int]]) -> onnx.ModelProto:
    """One decoder layer; `weights` maps `families.LAYER_PARTS` keys to HF-layout arrays.

    The projections (q, k, v, o, gate, up, down) may be `BlockQuant`s: they become MatMulNBits nodes.
    """
    g = _Graph()
    hd, nh, nkv = cfg.head_dim, cfg.heads, cfg.kv_heads
    rep, kv_dim, q_dim = nh // nkv, cfg.kv_dim, cfg.q_dim
    f32 = TensorProto.FLOAT

    # Attention input: one fused q|k|v projection, split afterwards.
    h = g.rms_norm("input", _dense(weights["attn_norm"]), cfg.rms_eps, "attn_norm")
    w_qkv = stack_rows([weights["q"], weights["k"], weights["v"]])
    b_qkv = None
    if {"q", "k", "v"} & set(cfg.attn_biases):
        b_qkv = np.concatenate([_dense(weights.get(f"{p}_bias", np.zeros(n, np.float32)))
                                for p, n in (("q", q_dim), ("k", kv_dim), ("v", kv_dim))])
    qkv = g.linear(h, w_qkv, b_qkv, "qkv")
    q, k, _ = g.many("Split", [qkv, g.ints("qkv_split", [q_dim, kv_dim, kv_dim])], "qkv_split",
                   outputs=["q_flat", "k_flat", "V_cache_out"], axis=-1)
    q = g.one("Reshape", [q, g.ints("q_shape", [0, 0, nh, hd])], "q_heads")  # [1,S,nh,hd]
    k = g.one("Reshape", [k, g.ints("k_shape", [0, 0, nkv, hd])], "k_heads")  # [1,S,nkv,hd]
    if cfg.qk_norm:
        q = g.rms_norm(q, _dense(weights["q_norm"]), cfg.rms_eps, "q_norm")
        k = g.rms_norm(k, _dense(weights["k_norm"]), cfg.rms_eps, "k_norm")

    # Rotary angles from the absolute positions: [1,S,1,hd] cos/sin, halves duplicated.
    pos = g.one("Unsqueeze", [g.one("Cast", ["indices"], "pos", to=TensorProto.FLOAT), g.ints("ax2", [2])])
    freqs = g.one("Mul", [pos, g.const("inv_freq", cfg.inv_freq.astype(np.float32))], "freqs")
    angles = g.one("Unsqueeze", [g.one("Concat", [freqs, freqs], "angles", axis=-1), g.ints("ax2", [2])])
    cos, sin = g.one("Cos", [angles], "cos"), g.one("Sin", [angles], "sin")
    q = _rope(g, q, cos, sin, hd // 2, "q_rope")
    k = _rope(g, k, cos, sin, hd // 2, "k_rope")
    g.op("Reshape", [k, g.ints("kv_flat", [0, 0, kv_dim])], outputs=["K_cache_out"])

    # History: the first Hc = M - S cache rows, then the new rows -> [1,M,kv_dim].
    m_dim = g.one("Slice", [g.one("Shape", ["mask"]), g.ints("two", [2]), g.ints("three", [3])], "m")
    s_dim = g.one("Slice", [g.one("Shape", ["input"]), g.ints("one", [1]), g.ints("two", [2])], "s")
    hc = g.one("Sub", [m_dim, s_dim], "hc")
    zero, axis1 = g.ints("zero", [0]), g.ints("axis1", [1])
    k_all = g.one("Concat", [g.one("Slice", ["K_cache", zero, hc, axis1], "k_hist"), "K_cache_out"], "k_all", axis=1)
    v_all = g.one("Concat", [g.one("Slice", ["V_cache", zero, hc, axis1], "v_hist"), "V_cache_out"], "v_all", axis=1)
    kv_heads_shape = g.ints("kv_heads_shape", [0, 0, nkv, hd])
    # Grouped-query attention: q as [1,nkv,rep,S,hd] against K/V [1,nkv,1,M,hd], repeated by broadcasting.
    k_t = g.one("Transpose", [g.one("Reshape", [k_all, kv_heads_shape])], "k_t", perm=[0, 2, 3, 1])
    k_t = g.one("Unsqueeze", [k_t, g.ints("ax2", [2])], "k_t5")  # [1,nkv,1,hd,M]
    v_h = g.one("Transpose", [g.one("Reshape", [v_all, kv_heads_shape])], "v_h", perm=[0, 2, 1, 3])
    v_h = g.one("Unsqueeze", [v_h, g.ints("ax2", [2])], "v_h5")  # [1,nkv,1,M,hd]
    q = g.one("Mul", [q, g.scalar("scale", 1.0 / float(np.sqrt(hd)))], "q_scaled")
    q = g.one("Reshape", [q, g.ints("q_groups", [0, 0, nkv, rep, hd])], "q_groups")
    q = g.one("Transpose", [q], "q_t", perm=[0, 2, 3, 1, 4])  # [1,nkv,rep,S,hd]
    scores = g.one("MatMul", [q, k_t], "scores")  # [1,nkv,rep,S,M]
    scores = g.one("Add", [scores, g.one("Unsqueeze", ["mask", g.ints("ax12", [1, 2])], "mask5")], "masked")
    probs = g.one("Softmax", [scores], "probs", axis=-1)
    ctx = g.one("MatMul", [probs, v_h], "ctx")  # [1,nkv,rep,S,hd]
    ctx = g.one("Transpose", [ctx], "ctx_t", perm=[0, 3, 1, 2, 4])  # [1,S,nkv,rep,hd]
    ctx = g.one("Reshape", [ctx, g.ints("ctx_shape", [0, 0, q_dim])], "ctx_flat")
    attn = g.linear(ctx, weights["o"], _dense(weights["o_bias"]) if "o" in cfg.attn_biases else None, "o_proj")
    x = g.one("Add", ["input", attn], "resid1")

    # SwiGLU MLP with a fused gate|up projection.
    h = g.rms_norm(x, _dense(weights["mlp_norm"]), cfg.rms_eps, "mlp_norm")
    gate_up = g.linear(h, stack_rows([weights["gate"], weights["up"]]), None, "gate_up")
    gate, up = g.many("Split", [gate_up, g.ints("ffn_split", [cfg.ffn, cfg.ffn])], "gate_up_split", outputs=2, axis=-1)
    act = g.one("Mul", [g.one("Mul", [gate, g.one("Sigmoid", [gate])], "silu"), up], "act")
    down = g.linear(act, weights["down"], None, "down")
    g.op("Add", [x, down], outputs=["output"])

    inputs = [
        helper.make_tensor_value_info("input", f32, [1, "S", cfg.hidden]),
        helper.make_tensor_value_info("indices", TensorProto.UINT32, [1, "S"]),
        helper.make_tensor_value_info("mask", f32, [1, "S", "M"]),
        helper.make_tensor_value_info("K_cache", f32, [1, "R", kv_dim]),
        helper.make_tensor_value_info("V_cache", f32, [1, "R", kv_dim]),
    ]
    outputs = [
        helper.make_tensor_value_info("K_cache_out", f32, [1, "S", kv_dim]),
        helper.make_tensor_value_info("V_cache_out", f32, [1, "S", kv_dim]),
        helper.make_tensor_value_info("output", f32, [1, "S", cfg.hidden]),
    ]
    props = {"ax.format": TWIN_FORMAT, "ax.shape_groups": json.dumps(list(groups)), "ax.layer": str(layer)}
    return _model(g, f"{cfg.architecture}_layer_{layer}", inputs, outputs, props)


def build_post_graph(cfg: ModelConfig, norm: np.ndarray, head: np.ndarray | BlockQuant) -> onnx.ModelProto:
    """Final RMSNorm + lm_head: [1,1,H] -> [1,1,vocab] logits; `head` is [vocab, H], float or block-quantized."""
    g = _Graph()
    h = g.rms_norm("input", norm, cfg.rms_eps, "final_norm")
    if isinstance(head, BlockQuant):
        g.linear(h, head, None, "lm_head", out="output")
    else:
        g.op("MatMul", [h, g.const("lm_head_w", head.T.astype(np.float32))], outputs=["output"])
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, cfg.hidden])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, head.shape[0]])]
    return _model(g, f"{cfg.architecture}_post", inputs, outputs, {"ax.format": TWIN_FORMAT})


def _dense(value: np.ndarray | BlockQuant) -> np.ndarray:
    if isinstance(value, BlockQuant):
        raise TypeError("norm weights and biases stay float")
    return value
