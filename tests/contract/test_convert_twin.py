"""The converter's output honours docs/cpu-twin.md and computes what the reference forward computes.

Tiny random checkpoints of every family (and a llama GGUF with permuted Q/K in Q8_0) are converted, then
driven through the vendor contract (runtime.contract masks/indices, group shapes, host KV cache) and
compared position by position with tests/reference_forward.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from ax_llm_provider.convert import ConversionError, convert
from tests.fixtures.tiny_models import (
    SPECIAL_TOKENS,
    make_tiny_gguf,
    make_tiny_hf_model,
    train_tiny_tokenizer,
)
from tests.fixtures.twin_runner import TwinRunner, cosine_rows
from tests.reference_forward import (
    ReferenceModel,
    bf16_round,
    forward,
    load_gguf_reference,
    load_hf_reference,
)

GEOMETRY = {"decode_capacity": 63, "prefill_chunk": 8, "prefill_histories": (0, 8, 16, 24)}
EXPECTED_GROUPS = [
    {"tokens": 1, "history": 63, "kv_rows": 63},
    {"tokens": 8, "history": 0, "kv_rows": 1},
    {"tokens": 8, "history": 8, "kv_rows": 8},
    {"tokens": 8, "history": 16, "kv_rows": 16},
    {"tokens": 8, "history": 24, "kv_rows": 24},
]
KINDS = ["llama", "qwen2", "qwen3", "gguf", "gguf-qwen2", "gguf-qwen3"]
ARCH = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gguf": "llama", "gguf-qwen2": "qwen2",
        "gguf-qwen3": "qwen3"}
COSINE = 0.9999


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, ReferenceModel]]:
    """kind -> (source checkpoint, converted twin, reference model)."""
    root = tmp_path_factory.mktemp("convert")
    out: dict[str, tuple[Path, Path, ReferenceModel]] = {}
    for kind in KINDS:
        is_gguf = kind.startswith("gguf")
        src = make_tiny_gguf(root, family=ARCH[kind]) if is_gguf else make_tiny_hf_model(root, kind)
        twin = convert(src, root / f"twin-{kind}", **GEOMETRY)
        ref = load_gguf_reference(src) if is_gguf else load_hf_reference(src)
        out[kind] = (src, twin, ref)
    return out


def _ids(ref: ReferenceModel, n: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, ref.embed.shape[0], n)


def _assert_matches(twin_logits: np.ndarray, ref_logits: np.ndarray) -> None:
    cos = cosine_rows(twin_logits, ref_logits)
    assert cos.min() >= COSINE, f"worst position {int(cos.argmin())}: cosine {cos.min():.6f}"
    mismatch = np.flatnonzero(twin_logits.argmax(-1) != ref_logits.argmax(-1))
    assert mismatch.size == 0, f"argmax differs at positions {mismatch.tolist()}"


# ----------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("prompt", [21, 37])
def test_chunked_prefill_then_decode_matches_reference(models, kind: str, prompt: int) -> None:
    _, twin_dir, ref = models[kind]
    ids = _ids(ref, prompt + 8)
    expected = forward(ref, ids)
    twin = TwinRunner(twin_dir)
    hidden = [twin.prefill(ids[:prompt])]
    hidden += [twin.decode(int(t), prompt + i)[None] for i, t in enumerate(ids[prompt:])]
    _assert_matches(twin.logits(np.concatenate(hidden)), expected)
    # 21: chunks 8+8+5 (padded last chunk); 37: every prefill group, then decode-group fallback past 24.
    assert {1, 2, 0} <= set(twin.calls)
    if prompt == 37:
        assert set(twin.calls) == {0, 1, 2, 3, 4}


@pytest.mark.parametrize("kind", KINDS)
def test_prefill_continuing_unaligned_history_matches_reference(models, kind: str) -> None:
    """A second turn starting at position 10 uses a prefill group whose window (16) exceeds the history."""
    _, twin_dir, ref = models[kind]
    ids = _ids(ref, 30, seed=3)
    twin = TwinRunner(twin_dir)
    first = twin.prefill(ids[:10])
    second = twin.prefill(ids[10:], start=10)
    _assert_matches(twin.logits(np.concatenate([first, second])), forward(ref, ids))
    assert 3 in twin.calls  # history 10 went through the 16-row group with 6 blocked columns


@pytest.mark.parametrize("kind", KINDS)
def test_token_by_token_decode_matches_reference(models, kind: str) -> None:
    _, twin_dir, ref = models[kind]
    ids = _ids(ref, 30, seed=11)
    twin = TwinRunner(twin_dir)
    hidden = np.stack([twin.decode(int(t), pos) for pos, t in enumerate(ids)])
    _assert_matches(twin.logits(hidden), forward(ref, ids))
    assert set(twin.calls) == {0}


def test_gguf_without_unpermute_would_be_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The numerics tests can fail: leaving llama.cpp's Q/K row order in place breaks the match."""
    from ax_llm_provider.convert import gguf_source

    src = make_tiny_gguf(tmp_path)
    monkeypatch.setattr(gguf_source, "unpermute_rows", lambda w, n: w)
    twin_dir = convert(src, tmp_path / "twin", **GEOMETRY)
    ref = load_gguf_reference(src)
    ids = _ids(ref, 16)
    twin = TwinRunner(twin_dir)
    cos = cosine_rows(twin.logits(twin.prefill(ids)), forward(ref, ids))
    assert cos[1:].min() < COSINE  # position 0 has no rotation, later ones must differ


@pytest.mark.parametrize("kind", KINDS)
def test_embedding_table_is_rounded_bf16(models, kind: str) -> None:
    _, twin_dir, ref = models[kind]
    bits = np.fromfile(twin_dir / "model.embed_tokens.weight.bfloat16.bin", dtype="<u2")
    assert bits.size == ref.embed.size
    import ml_dtypes

    expected = ref.embed.astype(np.float32).astype(ml_dtypes.bfloat16).view(np.uint16).reshape(-1)
    assert np.array_equal(bits, expected)
    assert np.array_equal((bits.astype(np.uint32) << 16).view(np.float32), bf16_round(ref.embed).reshape(-1))


# ----------------------------------------------------------------------------- format


@pytest.mark.parametrize("kind", KINDS)
def test_layer_graphs_follow_the_twin_format(models, kind: str) -> None:
    _, twin_dir, ref = models[kind]
    arch = ARCH[kind]
    manifest = json.loads((twin_dir / "ax_model.json").read_text())
    hidden, kv_dim = manifest["hidden"], manifest["kv_dim"]
    assert kv_dim == ref.n_kv_heads * ref.head_dim
    for layer in range(manifest["layers"]):
        path = twin_dir / f"{arch}_p8_l{layer}_together.onnx"
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        props = {p.key: p.value for p in model.metadata_props}
        assert props["ax.format"] == "ax-llm-twin/1"
        assert props["ax.layer"] == str(layer)
        assert json.loads(props["ax.shape_groups"]) == EXPECTED_GROUPS

        def sig(values: list[onnx.ValueInfoProto]) -> list[tuple[str, int, list[int | str]]]:
            return [(v.name, v.type.tensor_type.elem_type,
                     [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in values]

        f32, u32 = onnx.TensorProto.FLOAT, onnx.TensorProto.UINT32
        assert sig(list(model.graph.input)) == [
            ("input", f32, [1, "S", hidden]),
            ("indices", u32, [1, "S"]),
            ("mask", f32, [1, "S", "M"]),
            ("K_cache", f32, [1, "R", kv_dim]),
            ("V_cache", f32, [1, "R", kv_dim]),
        ]
        assert sig(list(model.graph.output)) == [
            ("K_cache_out", f32, [1, "S", kv_dim]),
            ("V_cache_out", f32, [1, "S", kv_dim]),
            ("output", f32, [1, "S", hidden]),
        ]
        assert all(t.data_type == onnx.TensorProto.FLOAT for t in model.graph.initializer
                   if t.dims and len(t.dims) == 2)


@pytest.mark.parametrize("kind", KINDS)
def test_post_graph_and_manifest(models, kind: str) -> None:
    src, twin_dir, ref = models[kind]
    arch = ARCH[kind]
    post = onnx.load(str(twin_dir / f"{arch}_post.onnx"))
    onnx.checker.check_model(post)
    vocab = ref.embed.shape[0]
    assert [(v.name, [d.dim_value for d in v.type.tensor_type.shape.dim]) for v in post.graph.input] == [
        ("input", [1, 1, ref.embed.shape[1]])]
    assert [(v.name, [d.dim_value for d in v.type.tensor_type.shape.dim]) for v in post.graph.output] == [
        ("output", [1, 1, vocab])]
    manifest = json.loads((twin_dir / "ax_model.json").read_text())
    documented = {"format", "name", "architecture", "layers", "hidden", "kv_dim", "vocab", "context_length",
                  "quantization", "tokenizer_dir", "eos_token_ids", "parameter_count", "source"}
    assert set(manifest) <= documented
    assert manifest["format"] == "ax-llm-twin/1"
    assert manifest["architecture"] == arch
    assert manifest["layers"] == ref.n_layers and manifest["vocab"] == vocab
    assert manifest["tokenizer_dir"] == f"{arch}_tokenizer"
    assert manifest["source"] == src.name
    assert manifest["context_length"] == 256
    if kind.startswith("gguf"):
        assert manifest["quantization"] == "Q8_0"
        assert manifest["eos_token_ids"] == [2]
        assert manifest["name"] == f"tiny-{arch}:1m"
    else:
        assert manifest["quantization"] == {"llama": "BF16", "qwen2": "F16", "qwen3": "F32"}[kind]
        assert manifest["eos_token_ids"] == [2, 0]  # config.json, generation_config.json, then eos_token
        assert manifest["name"] == f"tiny-{kind}"
    assert not [p for p in twin_dir.parent.iterdir() if p.name.startswith(".")]  # no leftovers


# ----------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize("kind", KINDS)
def test_tokenizer_dir_loads_with_autotokenizer(models, kind: str) -> None:
    transformers = pytest.importorskip("transformers")
    _, twin_dir, _ = models[kind]
    tok = transformers.AutoTokenizer.from_pretrained(str(twin_dir / f"{ARCH[kind]}_tokenizer"))
    assert tok.eos_token == "<|im_end|>"
    messages = [{"role": "user", "content": "What is 2024 + 42?"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 2  # specials are never split
    assert tok.decode(ids) == text


@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
def test_qwen_template_renders_tools(models, kind: str) -> None:
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(models[kind][1] / f"{kind}_tokenizer"))
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "21 C"},
    ]
    text = tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    assert "<tools>" in text and '"get_weather"' in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert "<tool_response>\n21 C\n</tool_response>" in text
    assert tok.convert_tokens_to_ids("<tool_call>") in tok(text)["input_ids"]


def test_gguf_tokenizer_rebuild_matches_the_original_bpe(models) -> None:
    transformers = pytest.importorskip("transformers")
    original = train_tiny_tokenizer()
    tok = transformers.AutoTokenizer.from_pretrained(str(models["gguf"][1] / "llama_tokenizer"))
    samples = ["Hello, world!  Two  spaces\n\nand numbers",
               "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n",
               "def add(a, b):\n    return a + b\n", "tab\there, café ünïcode 🙂"]
    for text in samples:
        assert tok(text, add_special_tokens=False)["input_ids"] == original.encode(text).ids, text
    # The GGUF says pre-tokenizer "smollm": llama.cpp isolates every digit before the GPT-2 regex, so
    # " 2024" is "Ġ" "2" "0" "2" "4" even though the fixture's own BPE learned digit merges ("20", ...).
    digits = tok(" 2024", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(digits) == ["Ġ", "2", "0", "2", "4"]
    assert len(original.encode(" 2024").ids) < 5
    assert tok.bos_token == "<|im_start|>" and tok.unk_token == "<|endoftext|>" and tok.pad_token == "<|im_end|>"
    assert tok.all_special_tokens and set(SPECIAL_TOKENS) <= set(tok.all_special_tokens)


# ----------------------------------------------------------------------------- writing


def test_progress_overwrite_and_dest_exists(tmp_path: Path) -> None:
    src = make_tiny_hf_model(tmp_path, "llama")
    calls: list[tuple[str, int, int]] = []
    dest = convert(src, tmp_path / "twin", progress=lambda *a: calls.append(a), **GEOMETRY)
    done = [d for _, d, _ in calls]
    assert done == sorted(done) and calls[-1][1] == calls[-1][2] == 2 + 3
    assert any(stage.startswith("layer") for stage, _, _ in calls)
    with pytest.raises(ConversionError, match="already exists"):
        convert(src, dest, **GEOMETRY)
    (dest / "stale.txt").write_text("old")
    convert(src, dest, overwrite=True, **GEOMETRY)
    assert not (dest / "stale.txt").exists() and (dest / "ax_model.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-llama", "twin"]


def test_failed_conversion_leaves_no_directory(tmp_path: Path) -> None:
    """The tokenizer fails after every graph is written: nothing may remain."""
    src = make_tiny_gguf(tmp_path, pre="no-such-pre-tokenizer")
    with pytest.raises(ConversionError, match="pre-tokenizer 'no-such-pre-tokenizer'"):
        convert(src, tmp_path / "twin", **GEOMETRY)
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


def test_large_graphs_use_external_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Graphs above the protobuf limit keep their weights in `<file>.data`; the twin still computes the same."""
    from ax_llm_provider.convert import writer

    monkeypatch.setattr(writer, "EXTERNAL_DATA_THRESHOLD", 0)
    src = make_tiny_hf_model(tmp_path, "qwen3")
    twin_dir = convert(src, tmp_path / "twin", **GEOMETRY)
    assert (twin_dir / "qwen3_p8_l0_together.onnx.data").is_file()
    assert (twin_dir / "qwen3_post.onnx.data").is_file()
    ref = load_hf_reference(src)
    ids = _ids(ref, 12)
    twin = TwinRunner(twin_dir)
    _assert_matches(twin.logits(twin.prefill(ids)), forward(ref, ids))


def test_chat_template_from_jinja_file_is_inlined(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    src = make_tiny_hf_model(tmp_path, "qwen2")
    config = json.loads((src / "tokenizer_config.json").read_text())
    (src / "chat_template.jinja").write_text(config.pop("chat_template"))
    (src / "tokenizer_config.json").write_text(json.dumps(config))
    twin_dir = convert(src, tmp_path / "twin", **GEOMETRY)
    written = json.loads((twin_dir / "qwen2_tokenizer" / "tokenizer_config.json").read_text())
    assert "<tool_call>" in written["chat_template"]
    tok = transformers.AutoTokenizer.from_pretrained(str(twin_dir / "qwen2_tokenizer"))
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).startswith("<|im_start|>user")
