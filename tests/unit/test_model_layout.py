"""Broken model directories give their documented errors, naming the file and the expected layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ax_llm_provider.model.embeddings import EmbeddingTable
from ax_llm_provider.model.errors import ModelDirectoryError, ModelNotFoundError
from ax_llm_provider.model.layout import scan_model_dir
from ax_llm_provider.model.manifest import read_manifest
from ax_llm_provider.model.store import ModelStore, normalize_name
from ax_llm_provider.runtime.bf16 import float32_to_bf16

LFS_POINTER = b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123456\n"


def make_bundle(root: Path, layers: int = 3, ext: str = "axmodel", subdir: str = "qwen3-0.6b-ax650") -> Path:
    """A vendor-shaped directory with placeholder files (content is not read by the scanner)."""
    models = root / subdir if subdir else root
    models.mkdir(parents=True)
    for i in range(layers):
        (models / f"qwen3_p128_l{i}_together.{ext}").write_bytes(b"\0" * 2048)
    (models / f"qwen3_post.{ext}").write_bytes(b"\0" * 2048)
    (models / "model.embed_tokens.weight.bfloat16.bin").write_bytes(b"\0" * 4096)
    tok = root / "qwen3_tokenizer"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    (root / "qwen2.5_tokenizer").mkdir()
    (root / "qwen2.5_tokenizer" / "tokenizer.json").write_text("{}")
    (root / "config.json").write_text("")  # empty in several published bundles
    return root


def test_vendor_bundle_found_in_subdirectory(tmp_path: Path) -> None:
    files = scan_model_dir(make_bundle(tmp_path / "m"))
    assert files.kind == "axmodel" and files.prefix == "qwen3" and files.chunk == 128
    assert [p.name for p in files.layers] == [f"qwen3_p128_l{i}_together.axmodel" for i in range(3)]
    assert files.tokenizer_dir.name == "qwen3_tokenizer"  # matches the prefix, not the qwen2.5 one


def test_twin_at_top_level(tmp_path: Path) -> None:
    files = scan_model_dir(make_bundle(tmp_path / "m", ext="onnx", subdir=""))
    assert files.kind == "onnx" and files.post.name == "qwen3_post.onnx"


def test_missing_layer_is_named(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "m", layers=4)
    (root / "qwen3-0.6b-ax650" / "qwen3_p128_l2_together.axmodel").unlink()
    with pytest.raises(ModelDirectoryError, match=r"missing decoder layer\(s\) \[2\].*qwen3_p128_l2_together.axmodel"):
        scan_model_dir(root)


def test_missing_post_model(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "m")
    (root / "qwen3-0.6b-ax650" / "qwen3_post.axmodel").unlink()
    with pytest.raises(ModelDirectoryError, match="no qwen3_post.axmodel.*expected layout"):
        scan_model_dir(root)


def test_no_layers_at_all(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelDirectoryError, match="no decoder layer files.*expected layout"):
        scan_model_dir(tmp_path / "empty")


def test_lfs_pointer_instead_of_weights(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "m")
    (root / "qwen3-0.6b-ax650" / "qwen3_p128_l1_together.axmodel").write_bytes(LFS_POINTER)
    with pytest.raises(ModelDirectoryError, match="qwen3_p128_l1_together.axmodel is a Git LFS pointer"):
        scan_model_dir(root)


def test_missing_embedding(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "m")
    (root / "qwen3-0.6b-ax650" / "model.embed_tokens.weight.bfloat16.bin").unlink()
    with pytest.raises(ModelDirectoryError, match="no model.embed_tokens.weight.bfloat16.bin"):
        scan_model_dir(root)


def test_missing_tokenizer(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "m")
    for name in ("qwen3_tokenizer", "qwen2.5_tokenizer"):
        (root / name / "tokenizer.json").unlink()
    with pytest.raises(ModelDirectoryError, match="no tokenizer"):
        scan_model_dir(root)


def test_ambiguous_tokenizers_need_the_manifest(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "m")
    (root / "qwen3_tokenizer").rename(root / "other_tokenizer")
    with pytest.raises(ModelDirectoryError, match="several tokenizer directories"):
        scan_model_dir(root)
    assert scan_model_dir(root, tokenizer_hint="other_tokenizer").tokenizer_dir.name == "other_tokenizer"


def test_manifest_typo_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "ax_model.json"
    path.write_text('{"format": "vendor", "layres": 3}')
    with pytest.raises(ModelDirectoryError, match="layres"):
        read_manifest(path)
    path.write_text("{not json")
    with pytest.raises(ModelDirectoryError, match="not valid JSON"):
        read_manifest(path)


def write_embedding(path: Path, table: np.ndarray) -> None:
    path.write_bytes(float32_to_bf16(table).tobytes())


def test_embedding_lookup_is_memory_mapped(tmp_path: Path) -> None:
    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    write_embedding(tmp_path / "e.bin", table)
    emb = EmbeddingTable(tmp_path / "e.bin", hidden=4, vocab=10)
    assert isinstance(emb._rows, np.memmap)
    assert np.array_equal(emb.lookup([3, 0]), table[[3, 0]])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        emb.lookup([10])


def test_embedding_size_mismatch(tmp_path: Path) -> None:
    write_embedding(tmp_path / "e.bin", np.zeros((10, 4), dtype=np.float32))
    with pytest.raises(ModelDirectoryError,
                       match=r"has 10 rows but the model's vocabulary is 12.*12 x 4 x 2 = 96 bytes"):
        EmbeddingTable(tmp_path / "e.bin", hidden=4, vocab=12)
    with pytest.raises(ModelDirectoryError, match="not a whole number of bf16 rows"):
        EmbeddingTable(tmp_path / "e.bin", hidden=3)


def test_store_names_and_not_found_hint(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    assert normalize_name("SmolLM2") == "smollm2:latest"
    with pytest.raises(ValueError, match="invalid model name"):
        normalize_name("bad name!")
    with pytest.raises(ModelNotFoundError, match="ax-llm pull smollm2:135m"):
        store.resolve("smollm2:135m")
    make_bundle(store.path_for("smollm2:135m"), ext="onnx", subdir="")
    assert [m.name for m in store.list()] == ["smollm2:135m"]
    assert store.resolve("smollm2").path == store.path_for("smollm2:135m")  # the only tag of that family
