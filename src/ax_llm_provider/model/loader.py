"""Open a model directory: files, manifest, tokenizer, embedding table and a decoder stack on a backend."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..runtime.backends import check_backend, open_stack, resolve_backend
from ..runtime.protocol import DecoderStack
from .checksums import check_before_load
from .embeddings import EmbeddingTable
from .errors import ModelDirectoryError
from .layout import MANIFEST_NAME, ModelFiles, scan_model_dir
from .manifest import ModelManifest, read_manifest
from .tokenizer import ChatTokenizer

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """One model ready to run. Owns its decoder stack: call close() (or use it as a context manager)."""

    name: str
    files: ModelFiles
    manifest: ModelManifest | None
    tokenizer: ChatTokenizer
    embeddings: EmbeddingTable
    stack: DecoderStack
    backend: str
    load_seconds: float
    post_config: dict[str, Any] = field(default_factory=dict)

    @property
    def context_length(self) -> int:
        """Usable context: the compiled KV capacity, not the trained context."""
        return self.stack.spec.decode_capacity

    def close(self) -> None:
        self.stack.close()
        self.embeddings.close()

    def __enter__(self) -> LoadedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_manifest_geometry(manifest: ModelManifest | None, model: DecoderStack, root: Path) -> None:
    if manifest is None:
        return
    spec = model.spec
    for field_name in ("layers", "hidden", "kv_dim", "vocab"):
        declared = getattr(manifest, field_name)
        actual = getattr(spec, field_name)
        if declared is not None and declared != actual:
            raise ModelDirectoryError(
                f"{root / MANIFEST_NAME} says {field_name}={declared} but the model files have {actual}; "
                "fix or delete the override"
            )


def _check_bundle_config_geometry(files: ModelFiles, model: DecoderStack) -> None:
    """ax-llm's config.json states layers, vocab and hidden; a bundle whose models disagree is broken."""
    config = files.bundle_config
    if config is None:
        return
    spec = model.spec
    for field_name, declared, actual in (("axmodel_num", config.axmodel_num, spec.layers),
                                         ("tokens_embed_size", config.tokens_embed_size, spec.hidden),
                                         ("tokens_embed_num", config.tokens_embed_num, spec.vocab)):
        if declared != actual:
            raise ModelDirectoryError(
                f"{files.root / 'config.json'} says {field_name}={declared} but the model files have {actual}; "
                "the bundle mixes files of different builds: download it again at one revision"
            )


def check_model_dir(path: str | Path, backend: str = "auto") -> None:
    """What load_model checks before opening anything (manifest, layout, backend), without loading a weight:
    a request for a broken model fails here and leaves the loaded models alone."""
    root = Path(path).expanduser()
    manifest_path = root / MANIFEST_NAME
    manifest = read_manifest(manifest_path) if manifest_path.is_file() else None
    files = scan_model_dir(root, tokenizer_hint=manifest.tokenizer_dir if manifest else None)
    check_backend(files, resolve_backend(files, backend))


def weight_file_bytes(path: str | Path) -> int:
    """Bytes of the compiled layer and post graphs: what a card load places in CMM, read without a device
    (a model file's CMM need is its weights; headers make the file slightly larger, never smaller)."""
    files = scan_model_dir(Path(path).expanduser())
    return sum(p.stat().st_size for p in (*files.layers, files.post))


def load_model(path: str | Path, *, name: str | None = None, backend: str = "auto", device: int = 0,
               threads: int | None = None, axcl: Any | None = None,
               progress: Callable[[int, int], None] | None = None, cmm_floor_mb: int | None = None,
               onnx_layout: str | None = None) -> LoadedModel:
    """Validate and load a model directory. Errors name the file and the expected layout.

    axcl, progress, cmm_floor_mb: passed to the card backends (runtime/backends.py `open_stack`);
    onnx_layout: "fused" or "per-layer" for the onnx backend (default $AX_LLM_ONNX_LAYOUT, else per-layer).
    """
    started = time.perf_counter()
    root = Path(path).expanduser()
    manifest_path = root / MANIFEST_NAME
    manifest = read_manifest(manifest_path) if manifest_path.is_file() else None
    check_before_load(root, name)  # sizes and a sample of each file against ax_checksums.json
    files = scan_model_dir(root, tokenizer_hint=manifest.tokenizer_dir if manifest else None)
    resolved = resolve_backend(files, backend)
    check_backend(files, resolved)
    tokenizer = ChatTokenizer(files.tokenizer_dir, extra_eos_ids=(manifest.eos_token_ids or []) if manifest else [])
    post_config = json.loads(files.post_config.read_text(encoding="utf-8")) if files.post_config else {}
    stack = open_stack(files, resolved, device=device, threads=threads, axcl=axcl, progress=progress,
                       cmm_floor_mb=cmm_floor_mb, onnx_layout=onnx_layout)
    try:
        _check_manifest_geometry(manifest, stack, root)
        _check_bundle_config_geometry(files, stack)
        embeddings = EmbeddingTable(files.embedding, hidden=stack.spec.hidden, vocab=stack.spec.vocab)
    except Exception:
        stack.close()  # never leave a half-loaded model holding the device
        raise
    seconds = time.perf_counter() - started
    log.info("loaded %s (%d layers, capacity %d) on %s in %.2f s", root, stack.spec.layers,
             stack.spec.decode_capacity, resolved, seconds)
    return LoadedModel(
        name=name or (manifest.name if manifest and manifest.name else root.name),
        files=files, manifest=manifest, tokenizer=tokenizer, embeddings=embeddings, stack=stack,
        backend=resolved, load_seconds=seconds, post_config=post_config,
    )
