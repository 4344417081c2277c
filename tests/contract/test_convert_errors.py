"""Corrupt or unsupported inputs give a ConversionError that says what is wrong and what to do."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from ax_llm_provider.convert import ConversionError, convert
from tests.fixtures.tiny_models import make_tiny_gguf, make_tiny_hf_model
from tests.reference_forward import _read_safetensors

GEOMETRY = {"decode_capacity": 63, "prefill_chunk": 8, "prefill_histories": (0, 8, 16, 24)}


def _rewrite_safetensors(path: Path, drop: str | None = None, retype: str | None = None) -> None:
    """Rewrite model.safetensors without tensor `drop`, or with `retype` stored as I8."""
    tensors = _read_safetensors(path)
    header: dict[str, dict[str, object]] = {}
    blobs: list[bytes] = []
    offset = 0
    for name, array in tensors.items():
        if name == drop:
            continue
        if name == retype:
            raw, dtype = np.clip(array, -127, 127).astype(np.int8).tobytes(), "I8"
        else:
            raw, dtype = array.astype("<f4").tobytes(), "F32"
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def _expect(src: Path, dest: Path, *fragments: str) -> ConversionError:
    with pytest.raises(ConversionError) as info:
        convert(src, dest, **GEOMETRY)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    assert not dest.exists()
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}")]
    return info.value


def test_conversion_error_is_a_value_error() -> None:
    assert issubclass(ConversionError, ValueError)


def test_unknown_hf_architecture(tmp_path: Path) -> None:
    src = make_tiny_hf_model(tmp_path, "llama")
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(architectures=["GPT2LMHeadModel"], model_type="gpt2")
    (src / "config.json").write_text(json.dumps(cfg))
    _expect(src, tmp_path / "twin", "GPT2LMHeadModel", "LlamaForCausalLM")


def test_missing_layer_tensor(tmp_path: Path) -> None:
    src = make_tiny_hf_model(tmp_path, "qwen2")
    _rewrite_safetensors(src / "model.safetensors", drop="model.layers.1.self_attn.k_proj.bias")
    _expect(src, tmp_path / "twin", "model.layers.1.self_attn.k_proj.bias", "missing")


def test_missing_lm_head_when_untied(tmp_path: Path) -> None:
    src = make_tiny_hf_model(tmp_path, "llama")
    _rewrite_safetensors(src / "model.safetensors", drop="lm_head.weight")
    _expect(src, tmp_path / "twin", "lm_head.weight")


def test_unsupported_safetensors_dtype(tmp_path: Path) -> None:
    src = make_tiny_hf_model(tmp_path, "llama")
    _rewrite_safetensors(src / "model.safetensors", retype="model.layers.0.mlp.up_proj.weight")
    _expect(src, tmp_path / "twin", "dtype I8", "F32, F16 and BF16")


def test_truncated_safetensors(tmp_path: Path) -> None:
    src = make_tiny_hf_model(tmp_path, "qwen3")
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) // 2])
    _expect(src, tmp_path / "twin", "truncated or corrupt")


def test_garbage_safetensors_header(tmp_path: Path) -> None:
    src = make_tiny_hf_model(tmp_path, "qwen3")
    (src / "model.safetensors").write_bytes(struct.pack("<Q", 12) + b"{not json!!}" + b"\0" * 64)
    _expect(src, tmp_path / "twin", "corrupt safetensors header")


def test_mismatched_config_shape(tmp_path: Path) -> None:
    src = make_tiny_hf_model(tmp_path, "llama")
    cfg = json.loads((src / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (src / "config.json").write_text(json.dumps(cfg))
    _expect(src, tmp_path / "twin", "mlp.gate_proj.weight", "config implies")


def test_missing_tokenizer_json(tmp_path: Path) -> None:
    src = make_tiny_hf_model(tmp_path, "llama")
    (src / "tokenizer.json").unlink()
    _expect(src, tmp_path / "twin", "no tokenizer.json")


def test_directory_without_config(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _expect(tmp_path / "empty", tmp_path / "twin", "config.json")


def test_not_a_gguf_file(tmp_path: Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"PK\x03\x04 this is a zip")
    _expect(bogus, tmp_path / "twin", "not a GGUF file")


def test_missing_source(tmp_path: Path) -> None:
    _expect(tmp_path / "nope.gguf", tmp_path / "twin", "does not exist")


def test_unknown_gguf_architecture(tmp_path: Path) -> None:
    src = make_tiny_gguf(tmp_path, architecture="gpt2")
    _expect(src, tmp_path / "twin", "'gpt2' is not supported", "llama, qwen2, qwen3")


def test_unsupported_gguf_quant_type(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "int.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_embedding_length(32)
    w.add_feed_forward_length(64)
    w.add_head_count(2)
    w.add_tensor("token_embd.weight", np.zeros((16, 32), dtype=np.int32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _expect(path, tmp_path / "twin", "quant type I32", "re-quantize")


def test_dest_exists_without_overwrite(tmp_path: Path) -> None:
    src = make_tiny_hf_model(tmp_path, "llama")
    (tmp_path / "twin").mkdir()
    with pytest.raises(ConversionError, match="overwrite=True"):
        convert(src, tmp_path / "twin", **GEOMETRY)


@pytest.mark.parametrize(
    ("geometry", "fragment"),
    [
        ({"decode_capacity": 0}, "decode capacity"),
        ({"prefill_chunk": 1}, "prefill chunk"),
        ({"prefill_histories": (0, 60)}, "does not fit"),
        ({"prefill_histories": (0, 8, 8)}, "distinct"),
    ],
)
def test_bad_geometry_is_rejected_before_work(tmp_path: Path, geometry: dict[str, object], fragment: str) -> None:
    args = {**GEOMETRY, **geometry}
    with pytest.raises(ConversionError, match=fragment):
        convert(tmp_path / "never-read", tmp_path / "twin", **args)  # type: ignore[arg-type]
