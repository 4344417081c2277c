"""Golden: SmolLM2-135M Q4_1 converted with 4-bit weights (the default for it) against the float32 twin.

The q4 twin stores the GGUF's own Q4_1 codes, scales and minima for com.microsoft.MatMulNBits (and the
Q8_0 tied embedding as an 8-bit lm head): unpacked from the ONNX initializers as the op's schema says, they
equal the reference loader's dequantized weights bit for bit. Teacher-forced over a long conversation
(three prefill groups and a decode tail), its logits must agree with the float32 twin's.
Figures show with --log-cli-level=INFO.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from ax_llm_provider.convert import convert
from tests.fixtures.twin_runner import TwinRunner, cosine_rows
from tests.golden.test_convert_smollm2 import CONVERSATION
from tests.reference_forward import load_gguf_reference

pytestmark = pytest.mark.golden
log = logging.getLogger(__name__)


def _disk_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


@pytest.fixture(scope="module")
def twins(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("smollm2-weights")
    out = {}
    for label, weights in (("default", None), ("float32", "float32")):
        started = time.monotonic()
        out[label] = convert(smollm2_gguf, root / label, weights=weights)
        log.info("SmolLM2 %s twin: converted in %.1f s, %.0f MB", label, time.monotonic() - started,
                 _disk_mb(out[label]))
    return out


def _dequantized(model: onnx.ModelProto) -> list[tuple[int, np.ndarray]]:
    """(bits, W [N, K]) of every MatMulNBits, from its initializers: W = scale * (code - zero) + offset."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    consumers = {name: n for n in model.graph.node for name in n.input}
    out = []
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: a.i for a in node.attribute}
        n, k, bits, block = attrs["N"], attrs["K"], attrs["bits"], attrs["block_size"]
        packed, scales = inits[node.input[1]], inits[node.input[2]]
        kb = -(-k // block)
        assert packed.shape == (n, kb, block * bits // 8) and scales.shape == (n, kb)
        if bits == 4:
            codes = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, kb, block)
        else:
            codes = packed.reshape(n, kb, block)
        if len(node.input) > 3 and node.input[3]:
            zp = inits[node.input[3]]
            zeros = np.stack([zp & 0x0F, zp >> 4], axis=-1).reshape(n, -1)[:, :kb] if bits == 4 else zp
        else:
            zeros = np.full((n, kb), 1 << (bits - 1), np.uint8)
        w = scales[:, :, None] * (codes.astype(np.float32) - zeros.astype(np.float32)[:, :, None])
        add = consumers.get(node.output[0])
        if add is not None and add.op_type == "Add":  # + block sums @ offsets.T
            shift = next(m for m in model.graph.node if m.output[0] in add.input and m.op_type == "MatMul")
            w = w + inits[shift.input[1]].T[:, :, None]
        out.append((bits, w.reshape(n, -1)[:, :k]))
    return out


def test_default_for_a_q4_gguf_is_the_exact_4bit_twin(twins: dict[str, Path], smollm2_gguf: Path) -> None:
    twin = twins["default"]
    manifest = json.loads((twin / "ax_model.json").read_text())
    assert manifest["quantization"] == "Q4_1" and set(manifest) == set(
        json.loads((twins["float32"] / "ax_model.json").read_text()))
    ref = load_gguf_reference(smollm2_gguf)
    for layer in (0, 17, 29):
        model = onnx.load(str(twin / f"llama_p128_l{layer}_together.onnx"))
        assert [(o.domain, o.version) for o in model.opset_import] == [("", 17), ("com.microsoft", 1)]
        b = ref.blocks[layer]
        expected = [np.concatenate([b["wq"], b["wk"], b["wv"]]), b["wo"], np.concatenate([b["wg"], b["wu"]]), b["wd"]]
        got = _dequantized(model)
        assert [bits for bits, _ in got] == [4, 4, 4, 4]
        for (_, w), e in zip(got, expected, strict=True):
            assert np.array_equal(w.view(np.uint32), e.astype(np.float32).view(np.uint32))
    ((bits, head),) = _dequantized(onnx.load(str(twin / "llama_post.onnx")))
    assert bits == 8 and np.array_equal(head.view(np.uint32), ref.lm_head.astype(np.float32).view(np.uint32))
    size, float_size = _disk_mb(twin), _disk_mb(twins["float32"])
    log.info("SmolLM2 twin size: q4 %.0f MB, float32 %.0f MB (%.2fx)", size, float_size, size / float_size)
    assert size < 0.35 * float_size


def test_q4_twin_agrees_with_float32_twin_teacher_forced(twins: dict[str, Path]) -> None:
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(twins["float32"] / "llama_tokenizer"))
    ids = tok(tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True))["input_ids"]
    assert len(ids) > 256
    split = len(ids) - 32
    logits = {}
    for label, path in twins.items():
        twin = TwinRunner(path)
        hidden = [twin.prefill(ids[:split])] + [twin.decode(t, split + i)[None] for i, t in enumerate(ids[split:])]
        logits[label] = twin.logits(np.concatenate(hidden))
        assert {0, 1, 2, 3} <= set(twin.calls)
    cos = cosine_rows(logits["default"], logits["float32"])
    top1 = float((logits["default"].argmax(-1) == logits["float32"].argmax(-1)).mean())
    diff = float(np.abs(logits["default"] - logits["float32"]).max())
    summary = (f"SmolLM2 q4 twin vs float32 twin, {len(ids)} positions: top-1 {top1:.4f}, cosine min {cos.min():.9f} "
               f"mean {cos.mean():.9f}, max |logit diff| {diff:.2e}")
    log.info(summary)
    assert top1 >= 0.99, summary
    assert cos.min() >= 0.9999, summary
