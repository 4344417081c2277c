"""Loaded-model bookkeeping and the model descriptions behind list / show / ps."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..model.embedding_model import EmbeddingManifest, read_embedding_manifest
from ..model.layout import MANIFEST_NAME
from ..model.manifest import ModelManifest, read_manifest
from .prompt import template_supports_thinking, template_supports_tools, tool_format

if TYPE_CHECKING:
    from .runner import ModelRunner


@dataclass
class LoadedEntry:
    runner: ModelRunner
    path: Path
    expires_at: float | None = None  # unix time; None = kept forever


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _parameter_size(count: int | None) -> str:
    if not count:
        return ""
    return f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.0f}M"


@dataclass
class ModelInfo:
    name: str
    path: Path
    manifest: ModelManifest | None
    runner: ModelRunner | None = None
    embedding: EmbeddingManifest | None = None  # set for an embedding model (all-minilm), None for an LLM

    @classmethod
    def from_path(cls, name: str, path: Path, runner: ModelRunner | None = None) -> ModelInfo:
        embedding = read_embedding_manifest(path)
        if embedding is not None:
            common = ModelManifest.model_validate(
                embedding.model_dump(include={"format", "name", "architecture", "quantization", "parameter_count",
                                              "source"}))
            return cls(name, path, common, runner, embedding)
        manifest_path = path / MANIFEST_NAME
        manifest = read_manifest(manifest_path) if manifest_path.is_file() else None
        return cls(name, path, manifest, runner)

    @property
    def files(self) -> list[Path]:
        return sorted(p for p in self.path.rglob("*") if p.is_file())

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.files)

    @property
    def modified(self) -> float:
        return max((p.stat().st_mtime for p in self.files), default=0.0)

    @property
    def digest(self) -> str:
        """A stable id of the directory's contents (names, sizes, times; hashing gigabytes would be slow)."""
        h = hashlib.sha256()
        for p in self.files:
            st = p.stat()
            h.update(f"{p.relative_to(self.path)}:{st.st_size}:{int(st.st_mtime)}".encode())
        return h.hexdigest()

    @property
    def format(self) -> str:
        return "onnx" if any(p.suffix == ".onnx" for p in self.files) else "axmodel"

    def details(self) -> dict[str, Any]:
        m = self.manifest
        family = (m.architecture if m else None) or ""
        return {"parent_model": "", "format": self.format, "family": family, "families": [family] if family else None,
                "parameter_size": _parameter_size(m.parameter_count if m else None),
                "quantization_level": (m.quantization if m else None) or ""}

    def list_entry(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.name, "modified_at": _iso(self.modified), "size": self.size,
                "digest": self.digest, "details": self.details()}

    def capabilities(self) -> list[str]:
        if self.embedding is not None:
            return ["embedding"]
        caps = ["completion"]
        if self.runner is not None:
            tok = self.runner.model.tokenizer
            if template_supports_tools(tok):
                caps.append("tools")
            if template_supports_thinking(tok):
                caps.append("thinking")
        return caps

    def model_info(self) -> dict[str, Any]:
        m = self.manifest
        arch = (m.architecture if m else None) or "unknown"
        info: dict[str, Any] = {"general.architecture": arch}
        if self.embedding is not None:  # Ollama's keys for a BERT embedding model
            info |= {f"{arch}.context_length": self.embedding.max_seq_length,
                     f"{arch}.embedding_length": self.embedding.dimension,
                     f"{arch}.pooling_type": self.embedding.pooling, "ax.backend": "onnx-cpu"}
        if self.runner is not None:
            spec = self.runner.model.stack.spec
            # The usable context is the compiled KV capacity, not the trained length (llama-index reads this key).
            info |= {f"{arch}.context_length": spec.decode_capacity, f"{arch}.block_count": spec.layers,
                     f"{arch}.embedding_length": spec.hidden, "general.vocab_size": spec.vocab,
                     "ax.backend": self.runner.model.backend, "ax.prefill_chunk": spec.prefill_chunk,
                     # i16: tools rendered by the model's template, or by the generic tools prompt
                     "ax.tool_format": tool_format(self.runner.model.tokenizer)}
        if m and m.context_length:
            info[f"{arch}.trained_context_length"] = m.context_length
        if m and m.parameter_count:
            info["general.parameter_count"] = m.parameter_count
        return info

    def show(self) -> dict[str, Any]:
        template = self.runner.model.tokenizer.chat_template if self.runner else None
        if template is None:
            config = next(self.path.rglob("tokenizer_config.json"), None)
            if config is not None:
                template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        return {"modelfile": f"# in-process model directory\nFROM {self.path}\n", "parameters": "",
                "template": template or "", "details": self.details(), "model_info": self.model_info(),
                "capabilities": self.capabilities(), "modified_at": _iso(self.modified)}

    def ps_entry(self, expires_at: float | None) -> dict[str, Any]:
        context = self.runner.model.stack.spec.decode_capacity if self.runner else None
        forever = 4102444800.0  # 2100-01-01: what "kept forever" looks like in a timestamp field
        return {"name": self.name, "model": self.name, "size": self.size, "digest": self.digest,
                "details": self.details(), "expires_at": _iso(expires_at if expires_at is not None else forever),
                "size_vram": self.size if self.runner and self.runner.model.backend != "onnx" else 0,
                "context_length": context}
