"""Pure parts of the converter: bf16 rounding, the safetensors parser, Q/K un-permute, config parsing."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ax_llm_provider.convert import ConversionError
from ax_llm_provider.convert.families import config_from_hf, default_inv_freq
from ax_llm_provider.convert.gguf_source import unpermute_rows
from ax_llm_provider.convert.graph import shape_groups
from ax_llm_provider.convert.safetensors_source import SafetensorsFile
from ax_llm_provider.convert.writer import float32_to_bf16_bits

float32s = hnp.arrays(np.float32, hnp.array_shapes(max_dims=2, max_side=16),
                      elements=st.floats(width=32, allow_nan=True, allow_infinity=True))


@given(float32s)
def test_bf16_rounding_matches_ml_dtypes(values: np.ndarray) -> None:
    ours = float32_to_bf16_bits(values)
    theirs = values.astype(ml_dtypes.bfloat16).view(np.uint16)
    finite = ~np.isnan(values)
    assert np.array_equal(ours[finite], theirs[finite])
    assert np.isnan((ours[~finite].astype(np.uint32) << 16).view(np.float32)).all()


def test_bf16_ties_go_to_even() -> None:
    # 1 + 2^-8 sits halfway between bf16 1.0 and 1 + 2^-7: the even mantissa (1.0) wins.
    assert float32_to_bf16_bits(np.array([1 + 2**-8], np.float32))[0] == 0x3F80
    assert float32_to_bf16_bits(np.array([1 + 3 * 2**-8], np.float32))[0] == 0x3F82
    assert float32_to_bf16_bits(np.array([np.finfo(np.float32).max], np.float32))[0] == 0x7F80  # rounds to inf


def _safetensors(path: Path, entries: dict[str, tuple[str, list[int], bytes]]) -> Path:
    header, blob = {}, b""
    for name, (dtype, shape, raw) in entries.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(raw)]}
        blob += raw
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + blob)
    return path


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=8),
                  elements=st.floats(-1e4, 1e4, width=32)))
def test_safetensors_round_trip(tmp_path_factory: pytest.TempPathFactory, values: np.ndarray) -> None:
    path = tmp_path_factory.mktemp("st") / "x.safetensors"
    bf16 = values.astype(ml_dtypes.bfloat16)
    f16 = values.astype(np.float16)
    sf = SafetensorsFile(_safetensors(path, {
        "f32": ("F32", list(values.shape), values.astype("<f4").tobytes()),
        "f16": ("F16", list(values.shape), f16.astype("<f2").tobytes()),
        "bf16": ("BF16", list(values.shape), bf16.view("<u2").tobytes()),
    }))
    assert np.array_equal(sf.read("f32"), values)
    assert np.array_equal(sf.read("f16"), f16.astype(np.float32))
    assert np.array_equal(sf.read("bf16"), bf16.astype(np.float32))
    assert sf.read("f32").dtype == np.float32


def test_safetensors_rejects_bad_offsets(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    text = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 32]}}).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"\0" * 16)
    with pytest.raises(ConversionError, match="truncated or corrupt"):
        SafetensorsFile(path)
    text = json.dumps({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"\0" * 16)
    with pytest.raises(ConversionError, match="does not match its shape"):
        SafetensorsFile(path)
    path.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(ConversionError, match="corrupt safetensors header"):
        SafetensorsFile(path)


@given(st.integers(1, 6), st.sampled_from([2, 4, 8, 64]), st.integers(1, 5))
def test_unpermute_inverts_llama_cpp_permutation(n_head: int, head_dim: int, cols: int) -> None:
    w = np.arange(n_head * head_dim * cols, dtype=np.float32).reshape(n_head * head_dim, cols)
    # llama.cpp convert_hf_to_gguf: halves of each head -> interleaved pairs.
    permuted = w.reshape(n_head, 2, head_dim // 2, cols).swapaxes(1, 2).reshape(w.shape)
    assert np.array_equal(unpermute_rows(permuted, n_head), w)
    bias = w[:, 0].copy()
    assert np.array_equal(unpermute_rows(permuted[:, 0].copy(), n_head), bias)


def test_shape_groups_follow_the_doc() -> None:
    assert shape_groups(2047, 128, (0, 128, 1536)) == [
        {"tokens": 1, "history": 2047, "kv_rows": 2047},
        {"tokens": 128, "history": 0, "kv_rows": 1},
        {"tokens": 128, "history": 128, "kv_rows": 128},
        {"tokens": 128, "history": 1536, "kv_rows": 1536},
    ]


BASE_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"], "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 32, "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 100,
}


def test_config_reads_transformers5_rope_parameters() -> None:
    cfg = config_from_hf({**BASE_CONFIG, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}})
    assert np.allclose(cfg.inv_freq, default_inv_freq(5e5, 32))
    assert cfg.qk_norm and cfg.attn_biases == () and cfg.q_dim == 128 and cfg.kv_dim == 64


def test_config_llama3_rope_scaling() -> None:
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    cfg = config_from_hf({**BASE_CONFIG, "architectures": ["LlamaForCausalLM"], "rope_theta": 10000.0,
                          "rope_scaling": scaling})
    base = default_inv_freq(10000.0, 32)
    assert cfg.inv_freq[0] == pytest.approx(base[0])  # high frequency: untouched
    assert cfg.inv_freq[-1] == pytest.approx(base[-1] / 8.0)  # low frequency: divided by the factor
    assert cfg.attn_biases == () and not cfg.qk_norm


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"architectures": ["MambaForCausalLM"], "model_type": "mamba"}, "unsupported architecture"),
        ({"num_key_value_heads": 3}, "not a multiple"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope scaling 'yarn'"),
        ({"hidden_size": None}, "hidden_size"),
    ],
)
def test_config_errors(change: dict[str, object], fragment: str) -> None:
    config = {**BASE_CONFIG, **change}
    config = {k: v for k, v in config.items() if v is not None}
    with pytest.raises(ConversionError, match=fragment):
        config_from_hf(config)
