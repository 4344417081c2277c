"""`convert()`: checkpoint in, CPU twin directory out (docs/cpu-twin.md), written atomically."""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from .errors import ConversionError
from .families import EMBED, FINAL_NORM, LM_HEAD, ModelConfig, layer_tensor
from .graph import TWIN_FORMAT, build_layer_graph, build_post_graph, shape_groups
from .source import CheckpointSource, open_source
from .writer import EMBED_FILE, MANIFEST_FILE, save_onnx, write_bf16_table, write_manifest

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
DEFAULT_HISTORIES = (0, 128, 256, 512, 1024, 1536)


def layer_file(arch: str, prefill_chunk: int, layer: int) -> str:
    return f"{arch}_p{prefill_chunk}_l{layer}_together.onnx"


def post_file(arch: str) -> str:
    return f"{arch}_post.onnx"


def tokenizer_dir(arch: str) -> str:
    return f"{arch}_tokenizer"


def convert(
    src: str | Path,
    dest: str | Path,
    *,
    name: str | None = None,
    decode_capacity: int = 2047,
    prefill_chunk: int = 128,
    prefill_histories: Sequence[int] = DEFAULT_HISTORIES,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a GGUF file or a HF safetensors directory (llama, qwen2, qwen3) into a CPU twin at `dest`.

    The twin is assembled in a hidden sibling directory and renamed into place at the end, so an
    interrupted conversion never leaves a half-written model directory. Returns `dest`.
    """
    src_path, dest_path = Path(src).expanduser(), Path(dest).expanduser()
    histories = _check_geometry(decode_capacity, prefill_chunk, prefill_histories)
    if dest_path.exists() and not dest_path.is_dir():
        raise ConversionError(f"{dest_path} exists and is not a directory; choose another destination")
    if dest_path.exists() and not overwrite:
        raise ConversionError(f"{dest_path} already exists; pass overwrite=True (`ax-llm convert --force`) to replace it")
    started = time.monotonic()
    source = open_source(src_path)
    try:
        if source.config.context_length < decode_capacity:
            log.warning("decode capacity %d exceeds the model's trained context %d",
                        decode_capacity, source.config.context_length)
        dest_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest_path.parent / f".{dest_path.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        done = False
        try:
            groups = shape_groups(decode_capacity, prefill_chunk, histories)
            _write_twin(source, tmp, name or source.default_name(), src_path.name, groups, prefill_chunk,
                        progress or _no_progress)
            _commit(tmp, dest_path)
            done = True
        finally:
            if not done:
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        source.close()
    log.info("converted %s -> %s in %.1f s", src_path, dest_path, time.monotonic() - started)
    return dest_path


def _no_progress(stage: str, done: int, total: int) -> None:
    log.debug("%s (%d/%d)", stage, done, total)


def _check_geometry(capacity: int, chunk: int, histories: Sequence[int]) -> tuple[int, ...]:
    if capacity < 1:
        raise ConversionError(f"decode capacity must be at least 1, got {capacity}")
    if chunk < 2:
        raise ConversionError(f"prefill chunk must be at least 2 tokens (1 is the decode group), got {chunk}")
    unique = tuple(sorted(set(int(h) for h in histories)))
    if len(unique) != len(tuple(histories)):
        raise ConversionError(f"prefill histories must be distinct, got {list(histories)}")
    for h in unique:
        if h < 0 or h + chunk > capacity:
            raise ConversionError(
                f"prefill history {h} + chunk {chunk} does not fit the decode capacity {capacity}; "
                "every prefill group writes its rows into the decode cache"
            )
    return unique


def _expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    h, f, q, kv = cfg.hidden, cfg.ffn, cfg.q_dim, cfg.kv_dim
    return {
        "attn_norm": (h,), "mlp_norm": (h,),
        "q": (q, h), "k": (kv, h), "v": (kv, h), "o": (h, q),
        "q_bias": (q,), "k_bias": (kv,), "v_bias": (kv,), "o_bias": (h,),
        "q_norm": (cfg.head_dim,), "k_norm": (cfg.head_dim,),
        "gate": (f, h), "up": (f, h), "down": (h, f),
    }


def _check_shape(what: str, array: np.ndarray, expected: tuple[int, ...]) -> None:
    if tuple(array.shape) != expected:
        raise ConversionError(
            f"tensor {what} has shape {tuple(array.shape)} but the config implies {expected}; "
            "the checkpoint and its config disagree"
        )
    if not np.isfinite(array).all():
        raise ConversionError(f"tensor {what} contains NaN or infinity; the checkpoint is corrupt")


def _write_twin(source: CheckpointSource, out: Path, name: str, source_name: str,
                groups: list[dict[str, int]], prefill_chunk: int, progress: Progress) -> None:
    cfg = source.config
    arch = cfg.architecture
    total = cfg.layers + 3
    step = 0

    progress("embedding", step, total)
    embed = source.tensor(EMBED)
    vocab = embed.shape[0]
    _check_shape(EMBED, embed, (vocab, cfg.hidden))
    write_bf16_table(out / EMBED_FILE, embed)
    params = embed.size
    step += 1

    progress("post model", step, total)
    norm = source.tensor(FINAL_NORM)
    _check_shape(FINAL_NORM, norm, (cfg.hidden,))
    if cfg.tie_embeddings:
        head = embed
    elif source.has(LM_HEAD):
        head = source.tensor(LM_HEAD)
        _check_shape(LM_HEAD, head, (vocab, cfg.hidden))
    else:
        raise ConversionError(
            f"{source.path}: tensor {LM_HEAD!r} is missing and the config does not tie it to the embedding; "
            "the checkpoint is incomplete"
        )
    save_onnx(build_post_graph(cfg, norm, head), out / post_file(arch))
    params += norm.size + (0 if cfg.tie_embeddings else head.size)
    del embed, head
    step += 1

    expected = _expected_shapes(cfg)
    for layer in range(cfg.layers):
        progress(f"layer {layer + 1}/{cfg.layers}", step, total)
        weights: Mapping[str, np.ndarray] = {p: source.tensor(layer_tensor(layer, p)) for p in cfg.layer_parts()}
        for part, array in weights.items():
            _check_shape(layer_tensor(layer, part), array, expected[part])
            params += array.size
        save_onnx(build_layer_graph(cfg, layer, weights, groups), out / layer_file(arch, prefill_chunk, layer))
        step += 1

    progress("tokenizer", step, total)
    eos_ids = source.write_tokenizer(out / tokenizer_dir(arch))
    step += 1
    write_manifest(out / MANIFEST_FILE, {
        "format": TWIN_FORMAT,
        "name": name,
        "architecture": arch,
        "layers": cfg.layers,
        "hidden": cfg.hidden,
        "kv_dim": cfg.kv_dim,
        "vocab": vocab,
        "context_length": cfg.context_length,
        "quantization": source.quantization,
        "tokenizer_dir": tokenizer_dir(arch),
        "eos_token_ids": eos_ids,
        "parameter_count": int(params),
        "source": source_name,
    })
    progress("done", step, total)


def _commit(tmp: Path, dest: Path) -> None:
    """Move the finished twin into place; an existing `dest` (overwrite=True) is replaced."""
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(dest)
