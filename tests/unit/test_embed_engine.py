"""run_embed through a real Engine and Client on a tiny synthetic embedding model (no download).

The model: a WordLevel tokenizer ([CLS] words [SEP]) and an ONNX graph whose hidden state is a row
lookup in a fixed table, so every expected vector is a mean of known rows. The padding row is huge:
a pooling that let padding in would show at once.
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import ollama
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from ax_llm_provider.engine.embedder import MAX_CACHED, run_embed
from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.engine.errors import CapabilityError, InvalidRequestError
from ax_llm_provider.engine.options import parse_options
from ax_llm_provider.engine.requests import EmbedRequest
from ax_llm_provider.model.embedding_model import (
    EMBED_FORMAT,
    EmbeddingManifest,
    EmbeddingModel,
    install_embedding_model,
    l2_normalize,
    read_embedding_manifest,
)
from ax_llm_provider.model.errors import ModelDirectoryError, ModelError
from ax_llm_provider.model.store import ModelStore
from ax_llm_provider.ollama.client import AsyncClient, Client

WORDS = ["a", "b", "c", "d", "e", "f"]
VOCAB = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: 4 + i for i, w in enumerate(WORDS)}}
DIM, MAX_LEN = 4, 6
TABLE = np.random.default_rng(0).normal(size=(len(VOCAB), DIM)).astype(np.float32)
TABLE[0] = 1e4  # [PAD]


def _tokenizer() -> Tokenizer:
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.enable_truncation(3)  # settings of the file that the model must ignore (all-MiniLM's say 128)
    tok.enable_padding(length=8, pad_id=0, pad_token="[PAD]")
    return tok


def _graph(path: Path, width: int = DIM) -> Path:
    ints = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
            for n in ("input_ids", "attention_mask", "token_type_ids")]
    out = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", width])
    table = TABLE if width == DIM else np.zeros((len(VOCAB), width), np.float32)
    graph = helper.make_graph([helper.make_node("Gather", ["table", "input_ids"], ["last_hidden_state"], axis=0)],
                              "lookup", ints, [out], [numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def make_embedding_dir(path: Path, *, width: int = DIM, **manifest: object) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    _graph(path / "model.onnx", width)
    _tokenizer().save(str(path / "tokenizer.json"))
    fields = {"format": EMBED_FORMAT, "name": "tiny-embed", "dimension": DIM, "max_seq_length": MAX_LEN} | manifest
    (path / "ax_model.json").write_text(EmbeddingManifest(**fields).model_dump_json(), encoding="utf-8")  # type: ignore[arg-type]
    return path


def expected(text: str, limit: int = MAX_LEN) -> np.ndarray:
    words = text.split()[: limit - 2]
    ids = [2, *(VOCAB.get(w, 1) for w in words), 3]
    return TABLE[ids].mean(axis=0)


@pytest.fixture()
def store(tmp_path: Path) -> ModelStore:
    store = ModelStore(tmp_path / "store")
    make_embedding_dir(store.path_for("tiny-embed:latest"))
    llm = store.path_for("tiny-llm:latest")
    llm.mkdir(parents=True)
    (llm / "ax_model.json").write_text(json.dumps({"format": "ax-llm-twin/1", "architecture": "llama"}))
    return store


@pytest.fixture()
def engine(store: ModelStore) -> Iterator[Engine]:
    engine = Engine(store, backend="onnx", auto_pull=False)
    yield engine
    engine.close()


def _vectors(result: dict) -> np.ndarray:
    return np.array(result["embeddings"], dtype=np.float64)


def test_vectors_are_normalized_mean_pools_in_input_order(engine: Engine) -> None:
    texts = ["a b c", "d", "e f a b", "zzz"]  # different lengths: one padded batch
    result = engine.embed({"model": "tiny-embed", "input": texts})
    want = l2_normalize(np.stack([expected(t) for t in texts]))
    np.testing.assert_allclose(_vectors(result), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(_vectors(result), axis=1), 1.0, rtol=1e-6)
    assert result["model"] == "tiny-embed"
    assert result["prompt_eval_count"] == 5 + 3 + 6 + 3  # special tokens included
    assert isinstance(result["total_duration"], int) and result["total_duration"] > 0
    assert isinstance(result["load_duration"], int) and 0 < result["load_duration"] <= result["total_duration"]
    assert result["ax"] == {"backend": "onnx-cpu"}


def test_single_string_and_second_call_has_no_load(engine: Engine) -> None:
    engine.embed({"model": "tiny-embed", "input": "a"})
    result = engine.embed({"model": "tiny-embed", "input": "b c"})
    assert len(result["embeddings"]) == 1 and "load_duration" not in result  # Ollama omits zero counters
    np.testing.assert_allclose(_vectors(result)[0], l2_normalize(expected("b c")[None])[0], rtol=1e-5)


@pytest.mark.parametrize("value", ["", []])
def test_empty_input_gives_no_embeddings(engine: Engine, value: object) -> None:
    result = engine.embed({"model": "tiny-embed", "input": value})
    assert result["embeddings"] == [] and "prompt_eval_count" not in result


def test_empty_string_inside_a_list_is_embedded(engine: Engine) -> None:
    result = engine.embed({"model": "tiny-embed", "input": [""]})
    np.testing.assert_allclose(_vectors(result)[0], l2_normalize(expected("")[None])[0], rtol=1e-5)
    assert result["prompt_eval_count"] == 2


def test_truncate_cuts_at_max_length_and_reports(engine: Engine) -> None:
    text = "a b c d e f a b"  # 8 words + 2 specials = 10 tokens > 6
    result = engine.embed({"model": "tiny-embed", "input": ["a", text]})
    assert result["prompt_eval_count"] == 3 + MAX_LEN
    np.testing.assert_allclose(_vectors(result)[1], l2_normalize(expected(text)[None])[0], rtol=1e-5)
    assert result["ax"]["truncation"] == {"limit": MAX_LEN, "inputs": [{"index": 1, "tokens": 10, "kept": MAX_LEN}],
                                          "truncated_tokens": 4}


def test_truncate_false_refuses_too_long_input_only(engine: Engine) -> None:
    fits = "a b c d"  # exactly MAX_LEN tokens
    assert engine.embed({"model": "tiny-embed", "input": fits, "truncate": False})["prompt_eval_count"] == MAX_LEN
    with pytest.raises(InvalidRequestError, match="the input length exceeds the context length: input 1 is 7 tokens"):
        engine.embed({"model": "tiny-embed", "input": [fits, fits + " e"], "truncate": False})


def test_num_ctx_lowers_the_limit_never_raises_it(engine: Engine) -> None:
    low = engine.embed({"model": "tiny-embed", "input": "a b c d", "options": {"num_ctx": 4}})
    assert low["prompt_eval_count"] == 4
    np.testing.assert_allclose(_vectors(low)[0], l2_normalize(expected("a b c d", 4)[None])[0], rtol=1e-5)
    high = engine.embed({"model": "tiny-embed", "input": "a b c d e f", "options": {"num_ctx": 1000}})
    assert high["prompt_eval_count"] == MAX_LEN


def test_dimensions_truncates_and_renormalizes(engine: Engine) -> None:
    result = engine.embed({"model": "tiny-embed", "input": ["a b", "c"], "dimensions": 2})
    want = l2_normalize(np.stack([expected("a b")[:2], expected("c")[:2]]))
    np.testing.assert_allclose(_vectors(result), want, rtol=1e-5)
    wide = engine.embed({"model": "tiny-embed", "input": "a", "dimensions": 99})
    assert len(wide["embeddings"][0]) == DIM
    with pytest.raises(InvalidRequestError, match="dimensions"):
        engine.embed({"model": "tiny-embed", "input": "a", "dimensions": 0})


def test_bad_options_and_keep_alive_are_request_errors(engine: Engine) -> None:
    with pytest.raises(InvalidRequestError, match="num_ctx"):
        engine.embed({"model": "tiny-embed", "input": "a", "options": {"num_ctx": "many"}})
    with pytest.raises(InvalidRequestError, match="keep_alive"):
        engine.embed({"model": "tiny-embed", "input": "a", "keep_alive": "soon"})
    result = engine.embed({"model": "tiny-embed", "input": "a", "options": {"max_tokens": 3}})
    assert result["ax"]["warnings"]


def test_llm_directory_is_a_capability_error(engine: Engine) -> None:
    with pytest.raises(CapabilityError, match="tiny-llm:latest does not support embedding.*hidden states"):
        engine.embed({"model": "tiny-llm", "input": "a"})
    assert engine.slots.embedders == {}


def test_keep_alive_zero_unloads_finite_expires_forever_keeps(engine: Engine) -> None:
    engine.embed({"model": "tiny-embed", "input": "a", "keep_alive": 0})
    assert engine.slots.embedders == {}
    engine.embed({"model": "tiny-embed", "input": "a", "keep_alive": "1h"})
    entry = engine.slots.embedders["tiny-embed:latest"]
    assert entry.expires_at is not None and entry.expires_at > time.time() + 3000
    entry.expires_at = time.time() - 1  # the deadline passed: the next call loads it again
    assert "load_duration" in engine.embed({"model": "tiny-embed", "input": "a", "keep_alive": -1})
    assert engine.slots.embedders["tiny-embed:latest"].expires_at is None
    assert "load_duration" not in engine.embed({"model": "tiny-embed", "input": "a"})


def test_keep_alive_zero_unloads_even_when_the_request_fails(engine: Engine) -> None:
    engine.embed({"model": "tiny-embed", "input": "a"})
    with pytest.raises(InvalidRequestError):
        engine.embed({"model": "tiny-embed", "input": "a b c d e f", "truncate": False, "keep_alive": 0})
    assert engine.slots.embedders == {}


def test_cache_is_bounded_and_evicts_least_recently_used(engine: Engine, store: ModelStore) -> None:
    names = [f"tiny-embed{i}:latest" for i in range(MAX_CACHED + 1)]
    for name in names:
        make_embedding_dir(store.path_for(name))
        engine.embed({"model": name, "input": "a"})
    assert list(engine.slots.embedders) == names[1:]
    assert engine.worker.call(lambda: engine.slots.unload_embedders()) == MAX_CACHED
    assert engine.slots.embedders == {}


def test_legacy_request_is_not_normalized(engine: Engine) -> None:
    from ax_llm_provider.engine.embedder import LegacyEmbeddingsRequest

    req = LegacyEmbeddingsRequest(model="tiny-embed", input=["a b"], dimensions=2)
    result = engine.embed(req)
    np.testing.assert_allclose(_vectors(result)[0], expected("a b"), rtol=1e-5)  # raw mean, full width


def test_run_embed_directly_with_a_request_object(engine: Engine) -> None:
    req = EmbedRequest(model="tiny-embed", input="a")
    opts, warnings = parse_options(None)
    result = engine.worker.call(lambda: run_embed(engine.slots, req, name=engine.resolve(req.model), opts=opts,
                                                  warnings=warnings, keep_alive=math.inf))
    assert len(result["embeddings"]) == 1


def test_list_and_show_describe_the_embedding_model(engine: Engine) -> None:
    models = {m["name"]: m for m in engine.list()["models"]}
    assert models["tiny-embed:latest"]["details"]["format"] == "onnx"
    shown = engine.show("tiny-embed")
    assert shown["capabilities"] == ["embedding"]
    assert shown["model_info"]["bert.embedding_length"] == DIM
    assert shown["model_info"]["bert.context_length"] == MAX_LEN


# ---- the Client / AsyncClient -------------------------------------------------------------------


def test_client_embed_and_legacy_embeddings(engine: Engine) -> None:
    client = Client(engine=engine)
    response = client.embed("tiny-embed", ("a b", "c"), dimensions=3)
    assert isinstance(response, ollama.EmbedResponse)
    assert [len(v) for v in response.embeddings] == [3, 3] and response.prompt_eval_count == 7
    legacy = client.embeddings("tiny-embed", "a b")
    assert isinstance(legacy, ollama.EmbeddingsResponse)
    np.testing.assert_allclose(legacy.embedding, expected("a b"), rtol=1e-5)
    assert client.embeddings("tiny-embed", "").embedding == []


def test_client_errors_are_ollama_errors(engine: Engine) -> None:
    client = Client(engine=engine)
    with pytest.raises(ollama.ResponseError) as info:
        client.embed("tiny-llm", "a")
    assert info.value.status_code == 400 and "does not support embedding" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        client.embed("missing-model", "a")
    assert info.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as info:
        client.embed("tiny-embed", "a b c d e f", truncate=False)
    assert info.value.status_code == 400 and "exceeds the context length" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        client.embeddings("tiny-llm", "a")
    assert info.value.status_code == 400
    with pytest.raises(ollama.RequestError):
        client.embed("", "a")


def test_async_client(engine: Engine) -> None:
    client = AsyncClient(engine=engine)

    async def main() -> tuple[ollama.EmbedResponse, ollama.EmbeddingsResponse]:
        return await client.embed("tiny-embed", ["a", "b"]), await client.embeddings("tiny-embed", "a")

    response, legacy = asyncio.run(main())
    assert len(response.embeddings) == 2 and len(legacy.embedding) == DIM
    with pytest.raises(ollama.ResponseError):
        asyncio.run(client.embed("tiny-llm", "a"))


# ---- the model directory -------------------------------------------------------------------------


def test_model_checks_graph_width_and_files(tmp_path: Path) -> None:
    with pytest.raises(ModelDirectoryError, match="outputs 5-d states"):
        EmbeddingModel(make_embedding_dir(tmp_path / "wide", width=5))
    broken = make_embedding_dir(tmp_path / "no-tok")
    (broken / "tokenizer.json").unlink()
    with pytest.raises(ModelDirectoryError, match="tokenizer.json"):
        EmbeddingModel(broken)
    with pytest.raises(ModelDirectoryError, match="not an embedding model"):
        EmbeddingModel(tmp_path)


def _safetensors(shapes: dict[str, list[int]]) -> bytes:
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape)) * 4
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(offset)


def _bundle(path: Path, prefix: str = "", pooling: str = "mean_tokens", st_max: int = 16) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(prefix + "tokenizer.json", _tokenizer().to_str())
        z.writestr(prefix + "config.json", json.dumps({"hidden_size": DIM, "max_position_embeddings": 8}))
        z.writestr(prefix + "sentence_bert_config.json", json.dumps({"max_seq_length": st_max}))
        z.writestr(prefix + "modules.json", json.dumps([{"type": "sentence_transformers.models.Transformer"},
                                                        {"type": "sentence_transformers.models.Normalize"}]))
        z.writestr(prefix + "1_Pooling/config.json", json.dumps(
            {"word_embedding_dimension": DIM, f"pooling_mode_{pooling}": True}))
        z.writestr(prefix + "model.safetensors", _safetensors(
            {"embeddings.position_ids": [1, 8], "embeddings.word_embeddings.weight": [10, DIM], "pooler.bias": [DIM]}))
    return path


@pytest.mark.parametrize("prefix", ["", "all-MiniLM-L6-v2/"])
def test_install_embedding_model_from_a_bundle(tmp_path: Path, prefix: str) -> None:
    graph = _graph(tmp_path / "g.onnx")
    dest = install_embedding_model(graph, _bundle(tmp_path / "b.zip", prefix), tmp_path / "store" / "m" / "t",
                                   name="m:t", quantization="int8", source="test")
    manifest = read_embedding_manifest(dest)
    assert manifest is not None
    assert (manifest.dimension, manifest.max_seq_length, manifest.pooling, manifest.normalize) == (DIM, 8, "mean", True)
    assert manifest.parameter_count == 10 * DIM + DIM  # position_ids are not parameters
    assert json.loads((dest / "config.json").read_text())["hidden_size"] == DIM  # not 1_Pooling/config.json
    assert sorted(p.name for p in dest.parent.iterdir()) == ["t"]  # no temporary directory left behind
    with pytest.raises(ModelError, match="already exists"):
        install_embedding_model(graph, tmp_path / "b.zip", dest, name="m:t")


def test_install_refuses_unsupported_pooling(tmp_path: Path) -> None:
    with pytest.raises(ModelDirectoryError, match="pooling"):
        install_embedding_model(_graph(tmp_path / "g.onnx"), _bundle(tmp_path / "b.zip", pooling="weightedmean_tokens"),
                                tmp_path / "m", name="m:t")
    assert not (tmp_path / "m").exists()
