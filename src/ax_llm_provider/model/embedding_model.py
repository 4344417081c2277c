"""Sentence-embedding models (Ollama's /api/embed) run on the host CPU through onnxruntime.

Note for the card: no AXERA embedding bundle is in scope. Embeddings run on the Pi's CPU (or any CPU)
through this same ONNX path, on every backend, while the NPU keeps serving the LLM. The model that
ships for it, all-MiniLM-L6-v2, is small enough for that: about 22.7M parameters (23 MB of int8
weights), 6 layers of hidden size 384.

A model directory, as `ax-llm pull all-minilm` assembles it in the store:

    ax_model.json                 {"format": "ax-llm-embed/1", "dimension": 384, "max_seq_length": 256,
                                   "pooling": "mean", "normalize": true, "graph": "model.onnx", ...}
    model.onnx                    input_ids, attention_mask[, token_type_ids]: int64 [batch, seq]
                                  -> last_hidden_state: float32 [batch, seq, dimension]
    tokenizer.json                the Hugging Face `tokenizers` file (its own truncation/padding are ignored)
    config.json, sentence_bert_config.json, modules.json, 1_Pooling/config.json   as shipped, for reference

Data flows: texts -> token ids (special tokens added, cut at max_seq_length) -> padded batch with an
attention mask -> graph -> pooled over the real tokens -> (engine/embedder.py) L2 norm, `dimensions`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .checksums import check_before_load, record_checksums
from .durable import durable_rename
from .errors import ModelDirectoryError, ModelError
from .layout import MANIFEST_NAME

log = logging.getLogger(__name__)

EMBED_FORMAT = "ax-llm-embed/1"
THREADS_ENV = "AX_LLM_EMBED_THREADS"  # onnxruntime intra-op threads for embeddings (default: its own choice)
BATCH_TOKENS = 4096  # padded tokens per graph run: bounds the attention scratch (batch x 12 x seq^2 floats)
Pooling = Literal["mean", "cls", "max"]
# Files kept from the sentence-transformers bundle (the safetensors weights are not: the graph has them).
BUNDLE_FILES = ("tokenizer.json", "config.json", "sentence_bert_config.json", "modules.json", "1_Pooling/config.json")


class EmbeddingManifest(BaseModel):
    """`ax_model.json` of an embedding model directory."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["ax-llm-embed/1"]
    name: str | None = None
    architecture: str = "bert"
    dimension: int = Field(gt=0, description="width of the pooled vector")
    max_seq_length: int = Field(gt=0, description="tokens per input, special tokens included; longer inputs are cut")
    pooling: Pooling = "mean"
    normalize: bool = Field(True, description="the model ends in L2 normalization (sentence-transformers Normalize)")
    graph: str = "model.onnx"
    tokenizer: str = "tokenizer.json"
    output: str | None = Field(None, description="graph output to pool; default the first one")
    quantization: str | None = None
    parameter_count: int | None = Field(None, gt=0)
    source: str | None = None


def read_embedding_manifest(model_dir: str | Path) -> EmbeddingManifest | None:
    """The manifest of an embedding model directory, or None for any other directory (an LLM twin or bundle)."""
    path = Path(model_dir) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelDirectoryError(f"{path} is not valid JSON ({exc}); fix or delete it") from exc
    if not isinstance(data, dict) or data.get("format") != EMBED_FORMAT:
        return None
    try:
        return EmbeddingManifest.model_validate(data)
    except ValidationError as exc:
        raise ModelDirectoryError(f"{path} has invalid fields for an embedding model: {exc}") from exc


def is_embedding_model_dir(model_dir: str | Path) -> bool:
    return read_embedding_manifest(model_dir) is not None


def assert_not_embedding_model(model_dir: str | Path, name: str) -> None:
    """Refuse chat/generate on an embedding model before the LLM loader tries (and fails) to open it."""
    if is_embedding_model_dir(model_dir):
        # Imported here: the model layer does not depend on the engine at import time.
        from ..engine.errors import CapabilityError

        raise CapabilityError(
            f"{name} does not support completion: it is an embedding model; use it with embed() "
            "(/api/embed, OllamaEmbeddings) and a chat model such as smollm2:135m for chat/generate"
        )


# ---- pure helpers (unit-tested) ---------------------------------------------------------------


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ids and the attention mask, both int64 [batch, longest]."""
    longest = max((len(s) for s in sequences), default=0)
    ids = np.full((len(sequences), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), longest), dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return ids, mask


def pool(hidden: np.ndarray, mask: np.ndarray, mode: Pooling = "mean") -> np.ndarray:
    """[batch, seq, dim] hidden states -> [batch, dim], over the positions where mask is 1 (padding ignored)."""
    if mode == "cls":
        return hidden[:, 0, :].astype(np.float32)
    m = mask.astype(np.float32)[:, :, None]
    if mode == "max":
        return np.where(m > 0, hidden, -np.inf).max(axis=1).astype(np.float32)
    # sentence-transformers: sum of the real tokens / their count (count clamped at 1e-9)
    return ((hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)).astype(np.float32)


def l2_normalize(vectors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), as Ollama's normalize()."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, eps)).astype(np.float32)


def truncate_dimensions(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Ollama's `dimensions`: keep the first d components and re-normalize; d >= the width changes nothing."""
    if not dimensions or dimensions >= vectors.shape[-1]:
        return vectors
    return l2_normalize(vectors[..., :dimensions])


def length_batches(lengths: Sequence[int], budget: int = BATCH_TOKENS) -> list[list[int]]:
    """Indices grouped into runs of similar length whose padded size (count x longest) stays within budget."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:  # ascending, so the newest index is the longest of its batch
        if current and (len(current) + 1) * lengths[i] > budget:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


# ---- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tokenized:
    ids: list[int]  # what the graph sees: special tokens included, cut at the limit
    type_ids: list[int]
    length: int  # tokens of the whole input before any cut (special tokens included)

    @property
    def truncated(self) -> bool:
        return self.length > len(self.ids)


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ModelError("embeddings run on onnxruntime, which is not installed: "
                         "pip install 'ax-llm-provider[cpu]'") from exc
    return onnxruntime


class EmbeddingModel:
    """One embedding model ready to run: tokenizer + onnxruntime session. Owns the session; call close()."""

    def __init__(self, path: str | Path, *, name: str | None = None, threads: int | None = None) -> None:
        started = time.perf_counter()
        self.path = Path(path).expanduser()
        manifest = read_embedding_manifest(self.path)
        if manifest is None:
            raise ModelDirectoryError(f"{self.path} is not an embedding model: {MANIFEST_NAME} with "
                                      f'"format": "{EMBED_FORMAT}" is missing')
        self.manifest = manifest
        self.name = name or manifest.name or self.path.name
        check_before_load(self.path, name)  # sizes and a sample of each file against ax_checksums.json
        self._tokenizer, self.pad_id, self._specials = self._load_tokenizer(self.path / manifest.tokenizer)
        self._session = self._open_session(self.path / manifest.graph, threads)
        self.load_seconds = time.perf_counter() - started
        log.info("loaded embedding model %s (%d-d, %s pooling) in %.2f s", self.name, self.dimension,
                 manifest.pooling, self.load_seconds)

    @property
    def dimension(self) -> int:
        return self.manifest.dimension

    @property
    def max_length(self) -> int:
        return self.manifest.max_seq_length

    @staticmethod
    def _load_tokenizer(path: Path) -> tuple[Any, int, int]:
        from tokenizers import Tokenizer

        if not path.is_file():
            raise ModelDirectoryError(f"{path} is missing: the embedding model needs its tokenizer.json")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception on bad files
            raise ModelDirectoryError(f"cannot load {path}: {exc}") from exc
        pad_id = int((tok.padding or {}).get("pad_id", 0))
        tok.no_truncation()  # the file may carry its own (all-MiniLM's says 128, padded to 128): we cut and pad
        tok.no_padding()
        return tok, pad_id, tok.num_special_tokens_to_add(False)

    def _open_session(self, graph: Path, threads: int | None) -> Any:
        if not graph.is_file():
            raise ModelDirectoryError(f"{graph} is missing: the embedding model's ONNX graph ({MANIFEST_NAME} 'graph')")
        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        threads = threads if threads is not None else int(os.environ.get(THREADS_ENV, "0") or 0)
        if threads > 0:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - set(inputs)
        if missing:
            raise ModelDirectoryError(f"{graph} lacks the inputs {sorted(missing)}; expected input_ids, "
                                      "attention_mask and optionally token_type_ids")
        self._int_types = {n: np.int32 if i.type == "tensor(int32)" else np.int64 for n, i in inputs.items()}
        outputs = [o.name for o in session.get_outputs()]
        self._output = self.manifest.output or outputs[0]
        if self._output not in outputs:
            raise ModelDirectoryError(f"{graph} has no output {self._output!r} (it has {outputs})")
        width = next(o.shape[-1] for o in session.get_outputs() if o.name == self._output)
        if isinstance(width, int) and width != self.dimension:
            raise ModelDirectoryError(f"{graph} outputs {width}-d states but {MANIFEST_NAME} says dimension "
                                      f"{self.dimension}; fix or delete the manifest")
        return session

    def clamp_limit(self, limit: int | None) -> int:
        """Tokens per input actually allowed: at most max_seq_length, at least the special tokens plus one."""
        return max(min(limit or self.max_length, self.max_length), self._specials + 1)

    def tokenize(self, texts: Sequence[str], limit: int | None = None) -> list[Tokenized]:
        """Token ids of each text with special tokens, cut to `limit` (default max_seq_length) tokens."""
        limit = self.clamp_limit(limit)
        keep = limit - self._specials
        out = []
        for enc in self._tokenizer.encode_batch(list(texts), add_special_tokens=False):
            length = len(enc.ids) + self._specials
            if length > limit:
                enc.truncate(keep)
            full = self._tokenizer.post_process(enc)
            out.append(Tokenized(ids=list(full.ids), type_ids=list(full.type_ids), length=length))
        return out

    def encode(self, inputs: Sequence[Tokenized]) -> np.ndarray:
        """Pooled, not yet normalized vectors float32 [n, dimension], in input order."""
        result = np.zeros((len(inputs), self.dimension), dtype=np.float32)
        for batch in length_batches([len(t.ids) for t in inputs]):
            ids, mask = pad_batch([inputs[i].ids for i in batch], self.pad_id)
            types, _ = pad_batch([inputs[i].type_ids for i in batch], 0)
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            feed = {k: v.astype(self._int_types[k], copy=False) for k, v in feed.items() if k in self._int_types}
            (hidden,) = self._session.run([self._output], feed)
            pooled = hidden if hidden.ndim == 2 else pool(hidden, mask, self.manifest.pooling)
            result[batch] = pooled
        return result

    def close(self) -> None:
        self._session = None

    def __enter__(self) -> EmbeddingModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- assembling a model directory (ax-llm pull) -------------------------------------------------


def _bundle_member(archive: zipfile.ZipFile, name: str) -> str:
    """The zip member for `name`, whether the bundle has its files at the root or under one directory."""
    names = archive.namelist()
    roots = sorted((m[: -len("tokenizer.json")] for m in names if m.rsplit("/", 1)[-1] == "tokenizer.json"), key=len)
    member = (roots[0] if roots else "") + name
    if member not in names:
        raise ModelDirectoryError(f"{archive.filename} has no {member}; expected a sentence-transformers directory")
    return member


def _parameter_count(archive: zipfile.ZipFile) -> int | None:
    """Parameters in the bundle's model.safetensors, from its header alone (the weights are not read)."""
    try:
        member = _bundle_member(archive, "model.safetensors")
    except ModelDirectoryError:
        return None
    with archive.open(member) as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return sum(int(np.prod(v["shape"])) for k, v in header.items()
               if k != "__metadata__" and not k.endswith("position_ids")) or None


def _pooling_mode(config: dict[str, Any], where: str) -> Pooling:
    modes = [m for m, key in (("mean", "pooling_mode_mean_tokens"), ("cls", "pooling_mode_cls_token"),
                              ("max", "pooling_mode_max_tokens")) if config.get(key)]
    if len(modes) != 1:
        raise ModelDirectoryError(f"{where} asks for pooling {modes or 'none'}; one of mean, cls, max is supported")
    return modes[0]  # type: ignore[return-value]


def install_embedding_model(graph: Path, bundle: Path, dest: Path, *, name: str, architecture: str = "bert",
                            quantization: str | None = None, source: str | None = None,
                            overwrite: bool = False) -> Path:
    """Make an embedding model directory at `dest` from an ONNX graph and a sentence-transformers zip."""
    if dest.exists() and not overwrite:
        raise ModelError(f"{dest} already exists; pass overwrite (ax-llm pull --force) to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.partial-{os.getpid()}-") as tmp:
        work = Path(tmp) / "model"
        work.mkdir()
        with zipfile.ZipFile(bundle) as archive:
            for file in BUNDLE_FILES:
                target = work / file
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(_bundle_member(archive, file)))
            parameters = _parameter_count(archive)
        shutil.copyfile(graph, work / "model.onnx")
        config = json.loads((work / "config.json").read_text(encoding="utf-8"))
        pooling_config = json.loads((work / "1_Pooling/config.json").read_text(encoding="utf-8"))
        st_config = json.loads((work / "sentence_bert_config.json").read_text(encoding="utf-8"))
        modules = json.loads((work / "modules.json").read_text(encoding="utf-8"))
        dimension = int(pooling_config["word_embedding_dimension"])
        if dimension != int(config.get("hidden_size", dimension)):
            raise ModelDirectoryError(f"{bundle}: pooling dimension {dimension} != hidden_size {config['hidden_size']}")
        manifest = EmbeddingManifest.model_validate({
            "format": EMBED_FORMAT, "name": name, "architecture": architecture, "dimension": dimension,
            # sentence-transformers' setting (256 for all-MiniLM-L6-v2), within the position table (512)
            "max_seq_length": min(int(st_config.get("max_seq_length") or 512),
                                  int(config.get("max_position_embeddings", 512))),
            "pooling": _pooling_mode(pooling_config, "1_Pooling/config.json"),
            "normalize": any(str(m.get("type", "")).endswith("Normalize") for m in modules),
            "quantization": quantization, "parameter_count": parameters, "source": source,
        })
        (work / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2, exclude_none=True) + "\n",
                                          encoding="utf-8")
        record_checksums(work)  # verified at load, by doctor and by the next pull
        EmbeddingModel(work, name=name).close()  # refuse to install what would not load
        if dest.exists():
            shutil.rmtree(dest)
        durable_rename(work, dest)
    log.info("installed embedding model %s in %s", name, dest)
    return dest
