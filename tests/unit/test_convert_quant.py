"""Block-quantized twin weights (convert/quant.py, MatMulNBits in convert/graph.py).

The GGUF mappings must be exact: the codes, scales and minima written for MatMulNBits, unpacked the way the
op's schema describes (B [N, k_blocks, block*bits/8], low nibble first; zero points packed the same way),
dequantize to exactly what `gguf.quants.dequantize` gives, bit for bit. The ops themselves are checked
against numpy products, and tiny checkpoints converted with weights="q4"/"int8" against their float twins.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from tests.fixtures.tiny_models import make_tiny_gguf, make_tiny_hf_model, write_safetensors
from tests.fixtures.twin_runner import TwinRunner, cosine_rows

from ax_llm_provider.convert import ConversionError, convert
from ax_llm_provider.convert.gguf_source import GGUFSource
from ax_llm_provider.convert.graph import _Graph
from ax_llm_provider.convert.quant import BlockQuant, concat_rows, from_gguf, quantize, storage_for
from ax_llm_provider.convert.safetensors_source import SafetensorsSource

QT = gguf.GGMLQuantizationType
SIMPLE_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]  # gguf-py can quantize these
K_TYPES = ["Q4_K", "Q5_K"]
GEOMETRY = {"decode_capacity": 63, "prefill_chunk": 8, "prefill_histories": (0, 8, 16, 24)}


def _weights(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w[:, :7] += 0.5  # asymmetric blocks, so Q4_1/Q5_1 minima are not just -max
    w[3] = 0.0  # an all-zero row: zero scales
    return w


def _k_blocks(rows: int, cols: int, type_name: str, seed: int = 0) -> np.ndarray:
    """Random but valid Q4_K / Q5_K rows (gguf-py has no quantizer for them): finite fp16 d and dmin."""
    rng = np.random.default_rng(seed)
    size = {"Q4_K": 144, "Q5_K": 176}[type_name]
    raw = rng.integers(0, 256, size=(rows, cols // 256, size), dtype=np.uint8)
    raw[..., 0:2] = (rng.random((rows, cols // 256, 1)) * 0.01).astype("<f2").view(np.uint8)
    raw[..., 2:4] = (rng.random((rows, cols // 256, 1)) * 0.02).astype("<f2").view(np.uint8)
    return raw.reshape(rows, -1)


def _gguf_blocks(type_name: str, rows: int = 6, cols: int = 512) -> np.ndarray:
    if type_name in K_TYPES:
        return _k_blocks(rows, cols, type_name)
    return gguf.quants.quantize(_weights(rows, cols), QT[type_name])


def _unpack_matmulnbits(q: BlockQuant) -> np.ndarray:
    """Dequantize from the MatMulNBits inputs, independently of BlockQuant.dequantize (schema of the op)."""
    n, k = q.shape
    packed = q.packed_codes()
    assert packed.shape == (n, q.k_blocks, q.block * q.bits // 8) and packed.dtype == np.uint8
    codes = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, -1) if q.bits == 4 else packed.reshape(n, -1)
    zp_packed = q.packed_zero_points()
    if zp_packed is None:
        zeros = np.full((n, q.k_blocks), 1 << (q.bits - 1), np.float32)
    elif q.bits == 4:
        assert zp_packed.shape == (n, (q.k_blocks * 4 + 7) // 8)
        zeros = np.stack([zp_packed & 0x0F, zp_packed >> 4], axis=-1).reshape(n, -1)[:, :q.k_blocks]
    else:
        zeros = zp_packed
    values = q.scales[:, :, None] * (codes.reshape(n, q.k_blocks, q.block).astype(np.float32)
                                     - zeros.astype(np.float32)[:, :, None])
    if q.offsets is not None:
        values = values + q.offsets[:, :, None]
    return values.reshape(n, -1)[:, :k]


@pytest.mark.parametrize("type_name", SIMPLE_TYPES + K_TYPES)
def test_gguf_blocks_map_exactly(type_name: str) -> None:
    raw = _gguf_blocks(type_name)
    rows, cols = raw.shape[0], 512
    expected = gguf.quants.dequantize(raw, QT[type_name]).astype(np.float32)
    q = from_gguf(raw, type_name, (rows, cols))
    assert q is not None
    assert q.bits == (4 if type_name.startswith("Q4") else 8)
    assert np.array_equal(q.dequantize().view(np.uint32), expected.view(np.uint32))
    assert np.array_equal(_unpack_matmulnbits(q).view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q8_0"])
def test_gguf_codes_and_scales_are_the_files_own(type_name: str) -> None:
    """Re-encoding the BlockQuant as GGUF blocks gives back the original bytes: nothing was requantized."""
    raw = _gguf_blocks(type_name)
    q = from_gguf(raw, type_name, (raw.shape[0], 512))
    assert q is not None
    d = q.scales.astype("<f2").reshape(-1, 1).view(np.uint8)
    codes = q.codes.reshape(-1, 32)
    if type_name == "Q8_0":
        blocks = np.concatenate([d, (codes.astype(np.int16) - 128).astype(np.int8).view(np.uint8)], axis=1)
    else:
        nibbles = codes[:, :16] | (codes[:, 16:] << 4)  # ggml: element j low, j + 16 high
        parts = [d]
        if type_name == "Q4_1":
            assert q.offsets is not None and q.zero_points is not None and not q.zero_points.any()
            parts.append(q.offsets.astype("<f2").reshape(-1, 1).view(np.uint8))
        blocks = np.concatenate([*parts, nibbles], axis=1)
    assert np.array_equal(blocks.reshape(raw.shape), raw)


def test_types_without_exact_form() -> None:
    assert from_gguf(np.zeros((2, 210), np.uint8), "Q6_K", (2, 256)) is None
    assert from_gguf(np.zeros((2, 64), np.uint8), "F16", (2, 32)) is None
    assert from_gguf(np.zeros((2, 18), np.uint8), "Q4_0", (2, 32)) is not None


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("cols", [64, 70])  # 70: a short last block (padded codes, not read)
def test_round_to_nearest_error_is_half_a_step(bits: int, cols: int) -> None:
    w = _weights(9, cols, seed=bits)
    q = quantize(w, bits)
    assert q.codes.max() < (1 << bits) and q.offsets is None
    err = np.abs(q.dequantize() - w).reshape(9, -1)
    kb = q.k_blocks
    step = np.repeat(q.scales, q.block, axis=1)[:, :cols]
    assert (err <= step * 0.5 + 1e-6).all()
    assert q.dequantize()[3].tolist() == [0.0] * cols  # the zero row stays zero
    assert np.array_equal(_unpack_matmulnbits(q), q.dequantize())
    assert q.packed_codes().shape == (9, kb, q.block * bits // 8)


def test_widening_and_concatenation_are_exact() -> None:
    a = from_gguf(_gguf_blocks("Q4_0"), "Q4_0", (6, 512))
    b = from_gguf(_gguf_blocks("Q4_1"), "Q4_1", (6, 512))
    c = from_gguf(_gguf_blocks("Q8_0"), "Q8_0", (6, 512))
    assert a is not None and b is not None and c is not None
    for q in (a, b):
        assert np.array_equal(q.widened(8).dequantize(), q.dequantize())
    fused = concat_rows([a, b, c])
    assert [f.bits for f in fused] == [4, 8]  # the 4-bit neighbours merge, the 8-bit one stays apart
    stacked = np.concatenate([f.dequantize() for f in fused])
    assert np.array_equal(stacked, np.concatenate([a.dequantize(), b.dequantize(), c.dequantize()]))
    order = np.array([5, 0, 4, 1, 3, 2])
    assert np.array_equal(b.take_rows(order).dequantize(), b.dequantize()[order])


def test_storage_choice() -> None:
    q4 = from_gguf(_gguf_blocks("Q4_1"), "Q4_1", (6, 512))
    q8 = from_gguf(_gguf_blocks("Q8_0"), "Q8_0", (6, 512))
    assert storage_for("float32", q4, True, False) is None
    assert storage_for("q4", q4, True, False) == 4 and storage_for("q4", q8, True, True) == 8
    assert storage_for("q4", None, False, False) == 4  # float layers: 4-bit round to nearest
    assert storage_for("q4", None, False, True) == 8  # float head: 8 bits
    assert storage_for("q4", None, True, False) == 8  # Q6_K & co.: no second 4-bit rounding
    assert storage_for("int8", q4, True, False) == 8


def _linear_session(q: BlockQuant) -> ort.InferenceSession:
    n, k = q.shape
    g = _Graph()
    g.linear("x", q, None, "lin", out="y")
    graph = helper.make_graph(g.nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "S", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "S", n])],
                              initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("kind", ["Q4_1", "Q4_0", "Q8_0", "Q5_1", "rtn4", "rtn8"])
@pytest.mark.parametrize("rows", [1, 5])
def test_matmulnbits_products_match_numpy(kind: str, rows: int) -> None:
    """4-bit: the fp32 kernel (exact up to summation order); 8-bit: the int8 kernel on the split input."""
    if kind.startswith("rtn"):
        q = quantize(_weights(48, 70, seed=1), int(kind[3:]))
    else:
        q = from_gguf(_gguf_blocks(kind, rows=48, cols=512), kind, (48, 512))
    assert q is not None
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((1, rows, q.shape[1])).astype(np.float32)
    x[..., 5] *= 40  # an outlier channel, as real activations have: plain int8 inputs would lose ~1e-2
    (y,) = _linear_session(q).run(None, {"x": x})
    ref = x.astype(np.float64) @ q.dequantize().T.astype(np.float64)
    err = np.abs(y - ref).max() / np.abs(ref).max()
    # 8-bit worst case (Q5_1, 5 rows): 1.9e-4 on x86-64, 2.2e-4 on aarch64 (onnxruntime 1.32, its NEON kernels
    # sum in another order; docs/hardware.md). Without the split input it would be ~5e-3.
    assert err < (1e-5 if q.bits == 4 else 3e-4), err


# ----------------------------------------------------------------------------- whole twins


def _logits(twin_dir: Path, ids: np.ndarray, prompt: int) -> np.ndarray:
    twin = TwinRunner(twin_dir)
    hidden = [twin.prefill(ids[:prompt])]
    hidden += [twin.decode(int(t), prompt + i)[None] for i, t in enumerate(ids[prompt:])]
    return twin.logits(np.concatenate(hidden))


def _ops(model_path: Path) -> list[onnx.NodeProto]:
    return [n for n in onnx.load(str(model_path)).graph.node if n.op_type == "MatMulNBits"]


def _attrs(node: onnx.NodeProto) -> dict[str, int]:
    return {a.name: a.i for a in node.attribute}


def _dequantized_copy(src: Path, dest: Path) -> Path:
    """The checkpoint with every projection replaced by what weights="q4" stores (4-bit layers, 8-bit head), in F32."""
    dest.mkdir()
    source = SafetensorsSource(src)
    config = json.loads((src / "config.json").read_text())
    tensors = {}
    for name in source._index:
        w = source.tensor(name)
        is_projection = w.ndim == 2 and name.startswith("model.layers.")
        tensors[name] = quantize(w, 4).dequantize() if is_projection else w
    head = source.tensor("lm_head.weight" if source.has("lm_head.weight") else "model.embed_tokens.weight")
    tensors["lm_head.weight"] = quantize(head, 8).dequantize()
    config["tie_word_embeddings"] = False  # the embedding table stays unquantized, the head does not
    source.close()
    write_safetensors(dest / "model.safetensors", tensors, "F32")
    (dest / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(src / name, dest / name)
    return dest


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_forced_q4_on_a_float_checkpoint(tmp_path: Path, family: str) -> None:
    """A BF16/F16/F32 checkpoint stays float32 by default; weights="q4" rounds it to 4 bits (8 for the head).

    The q4 twin computes what the float twin of the rounded weights computes; against the float twin of the
    original it only agrees roughly (random tiny weights at 4 bits per 32-value block).
    """
    src = make_tiny_hf_model(tmp_path / "src", family)
    float_twin = convert(src, tmp_path / "f32", **GEOMETRY)
    q4_twin = convert(src, tmp_path / "q4", weights="q4", **GEOMETRY)
    assert not _ops(next(float_twin.glob("*_l0_together.onnx")))
    layer_bits = [_attrs(n)["bits"] for n in _ops(next(q4_twin.glob("*_l0_together.onnx")))]
    assert layer_bits == [4, 4, 4, 4]  # q|k|v, o, gate|up, down
    assert [_attrs(n)["bits"] for n in _ops(next(q4_twin.glob("*_post.onnx")))] == [8]
    dtype = {"llama": "BF16", "qwen2": "F16", "qwen3": "F32"}[family]
    assert json.loads((float_twin / "ax_model.json").read_text())["quantization"] == dtype
    assert json.loads((q4_twin / "ax_model.json").read_text())["quantization"] == f"q4 (from {dtype})"
    rounded_twin = convert(_dequantized_copy(src, tmp_path / "rounded"), tmp_path / "rounded-f32", **GEOMETRY)

    ids = np.random.default_rng(5).integers(0, 300, 30)
    got = _logits(q4_twin, ids, 21)
    exact = cosine_rows(got, _logits(rounded_twin, ids, 21))
    assert exact.min() >= 0.9999, f"q4 twin vs float twin of the rounded weights: cosine {exact.min():.6f}"
    rough = cosine_rows(got, _logits(float_twin, ids, 21))
    assert rough.mean() >= 0.95 and rough.min() >= 0.85, f"cosine mean {rough.mean():.4f} min {rough.min():.4f}"


def test_forced_int8_on_a_float_checkpoint(tmp_path: Path) -> None:
    src = make_tiny_hf_model(tmp_path / "src", "qwen2")
    float_twin = convert(src, tmp_path / "f32", **GEOMETRY)
    int8_twin = convert(src, tmp_path / "int8", weights="int8", **GEOMETRY)
    assert {_attrs(n)["bits"] for n in _ops(next(int8_twin.glob("*_l1_together.onnx")))} == {8}
    ids = np.random.default_rng(5).integers(0, 300, 30)
    got, expected = _logits(int8_twin, ids, 21), _logits(float_twin, ids, 21)
    assert cosine_rows(got, expected).min() >= 0.999
    assert (got.argmax(-1) == expected.argmax(-1)).all()


def test_q8_0_gguf_stays_float_by_default_and_converts_exactly_on_request(tmp_path: Path) -> None:
    src = make_tiny_gguf(tmp_path)  # llama, Q8_0, permuted Q/K
    source = GGUFSource(src)
    try:
        assert source.default_weights() == "float32"
        for name in ("model.layers.1.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                     "model.layers.0.mlp.down_proj.weight", "lm_head.weight"):
            q = source.block_quant(name)
            assert q is not None and q.bits == 8
            assert np.array_equal(q.dequantize(), source.tensor(name))  # un-permuted rows included
    finally:
        source.close()
    float_twin = convert(src, tmp_path / "f32", **GEOMETRY)
    int8_twin = convert(src, tmp_path / "int8", weights="int8", **GEOMETRY)
    assert not _ops(next(float_twin.glob("*_l0_together.onnx")))
    ids = np.random.default_rng(2).integers(0, 300, 30)
    cos = cosine_rows(_logits(int8_twin, ids, 21), _logits(float_twin, ids, 21))
    assert cos.min() >= 0.99999  # same weights; only the int8 kernel's ~1e-5 input rounding differs


def test_unknown_weight_format_is_refused(tmp_path: Path) -> None:
    src = make_tiny_hf_model(tmp_path / "src", "llama")
    with pytest.raises(ConversionError, match="weights must be one of float32, q4, int8"):
        convert(src, tmp_path / "twin", weights="q3")  # type: ignore[arg-type]
    assert not (tmp_path / "twin").exists()


class _Source:
    def __init__(self, default: str) -> None:
        self._default = default

    def default_weights(self) -> str:
        return self._default


def test_weight_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    from ax_llm_provider.convert import pipeline

    monkeypatch.setattr(pipeline, "_onnxruntime_version", lambda: "1.32.0")
    assert pipeline.resolve_weights(_Source("q4"), None) == "q4"
    assert pipeline.resolve_weights(_Source("float32"), None) == "float32"
    assert pipeline.resolve_weights(object(), None) == "float32"  # a source without an opinion (safetensors)
    assert pipeline.resolve_weights(_Source("float32"), "int8") == "int8"
    # An onnxruntime without 8-bit MatMulNBits kernels: the default stays float32, an explicit choice is kept.
    monkeypatch.setattr(pipeline, "_onnxruntime_version", lambda: "1.20.1")
    assert pipeline.resolve_weights(_Source("q4"), None) == "float32"
    assert pipeline.resolve_weights(_Source("q4"), "q4") == "q4"
    monkeypatch.setattr(pipeline, "_onnxruntime_version", lambda: None)  # converting for another machine
    assert pipeline.resolve_weights(_Source("q4"), None) == "q4"
