"""langchain-tests' EmbeddingsIntegrationTests for AXOllamaEmbeddings on all-minilm (all-MiniLM-L6-v2).

The model is pulled once per machine into the default store, as `ax-llm pull all-minilm` does.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator

import pytest
from langchain_core.embeddings import Embeddings
from langchain_tests.integration_tests import EmbeddingsIntegrationTests

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.integrations.langchain import AXOllamaEmbeddings
from ax_llm_provider.model.store import ModelStore

MODEL = "all-minilm:l6-v2"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ax_llm_provider.engine.embedder") is None,
                                reason="the engine has no embed implementation yet (engine/embedder.py)")


@pytest.fixture(scope="module")
def minilm_engine(model_store: ModelStore) -> Iterator[Engine]:
    from ax_llm_provider.model.pull import pull

    pull(MODEL, model_store)
    engine = Engine(model_store, backend="onnx", keep_alive=-1, auto_pull=False)
    yield engine
    engine.close()


class TestAXOllamaEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[AXOllamaEmbeddings]:
        return AXOllamaEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, str]:
        return {"model": MODEL}

    @pytest.fixture
    def model(self, minilm_engine: Engine) -> Embeddings:
        return self.embeddings_class(**self.embedding_model_params, engine=minilm_engine)


for _name in ("test_aembed_query", "test_aembed_documents"):  # pytest-asyncio runs in strict mode here
    pytest.mark.asyncio(getattr(EmbeddingsIntegrationTests, _name))


def test_vectors_are_normalized_and_dimensions_truncate(minilm_engine: Engine) -> None:
    full = AXOllamaEmbeddings(model=MODEL, engine=minilm_engine).embed_documents(["a cat", "a kitten"])
    assert len(full) == 2 and len(full[0]) == 384
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, abs_tol=1e-4) for v in full)
    short = AXOllamaEmbeddings(model=MODEL, dimensions=64, engine=minilm_engine).embed_query("a cat")
    assert len(short) == 64 and math.isclose(math.fsum(x * x for x in short), 1.0, abs_tol=1e-4)


def test_similar_texts_are_closer(minilm_engine: Engine) -> None:
    emb = AXOllamaEmbeddings(model=MODEL, engine=minilm_engine)
    cat, kitten, invoice = emb.embed_documents(["a small cat", "a little kitten", "the quarterly tax invoice"])
    dot = lambda u, v: math.fsum(a * b for a, b in zip(u, v, strict=True))  # noqa: E731
    assert dot(cat, kitten) > dot(cat, invoice)
