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

from ..model.checksums import record_checksums
from ..model.durable import durable_rename
from .errors import ConversionError
from .families import EMBED, FINAL_NORM, LM_HEAD, ModelConfig, layer_tensor
from .graph import TWIN_FORMAT, build_layer_graph, build_post_graph, shape_groups
from .quant import WEIGHT_FORMATS, BlockQuant, WeightFormat, quantize, storage_for
from .source import CheckpointSource, open_source
from .writer import (
    EMBED_FILE,
    MANIFEST_FILE,
    save_onnx,
    write_bf16_table,
    write_error_message,
    write_manifest,
)

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
DEFAULT_HISTORIES = (0, 128, 256, 512, 1024, 1536)
# Projections that become MatMulNBits under weights="q4"/"int8"; norms and biases stay float32.
PROJECTIONS = frozenset({"q", "k", "v", "o", "gate", "up", "down"})
MIN_ONNXRUNTIME = (1, 23)  # 8-bit MatMulNBits CPU kernels: x86-64 since 1.22, ARM64 since 1.23
FLOAT_TYPES = frozenset({"F32", "F16", "BF16", "F64", "ALL_F32"})  # unquantized storage (GGUF, safetensors)


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
    weights: WeightFormat | None = None,
) -> Path:
    """Convert a GGUF file or a HF safetensors directory (llama, qwen2, qwen3) into a CPU twin at `dest`.

    `weights` chooses how the projections and the lm head are stored: "float32" (MatMul), or block
    quantized for onnxruntime's MatMulNBits, "q4" (4-bit codes; 8-bit for the head and for GGUF tensors
    of more than 4 bits) or "int8" (8-bit codes). GGUF Q4_0/Q4_1/Q4_K/Q5_0/Q5_1/Q5_K/Q8_0 tensors keep
    their exact codes and scales; other tensors are rounded to nearest per block of 32. None (default):
    "q4" for a GGUF whose layers are 4-bit block quants, where it is exact, "float32" otherwise.

    The twin is assembled in a hidden sibling directory and renamed into place at the end, so an
    interrupted conversion never leaves a half-written model directory. Returns `dest`.
    """
    src_path, dest_path = Path(src).expanduser(), Path(dest).expanduser()
    histories = _check_geometry(decode_capacity, prefill_chunk, prefill_histories)
    if weights is not None and weights not in WEIGHT_FORMATS:
        raise ConversionError(f"weights must be one of {', '.join(WEIGHT_FORMATS)}, got {weights!r}")
    if dest_path.exists() and not dest_path.is_dir():
        raise ConversionError(f"{dest_path} exists and is not a directory; choose another destination")
    if dest_path.exists() and not overwrite:
        raise ConversionError(f"{dest_path} already exists; "
                              "pass overwrite=True (`ax-llm convert --force`) to replace it")
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
            storage = resolve_weights(source, weights)
            log.info("%s: storing weights as %s", src_path.name, storage)
            try:
                _write_twin(source, tmp, name or source.default_name(), src_path.name, groups, prefill_chunk,
                            progress or _no_progress, storage)
                record_checksums(tmp)  # sha256 of every file, verified at load, by doctor and pull
                _commit(tmp, dest_path)
            except OSError as exc:  # a full disk, most often: say which file and what to do
                raise ConversionError(write_error_message(exc, dest_path)) from exc
            done = True
        finally:
            if not done:
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        source.close()
    log.info("converted %s -> %s in %.1f s", src_path, dest_path, time.monotonic() - started)
    return dest_path


def resolve_weights(source: CheckpointSource, weights: str | None) -> str:
    """The storage to write: `weights`, or the source's default (`default_weights`).

    A block-quantized twin needs onnxruntime's 8-bit MatMulNBits kernels for its lm head (x86-64 since
    1.22, ARM64 since 1.23); with an older onnxruntime installed the default falls back to float32.
    """
    if weights is not None:
        if weights != "float32" and not _runtime_has_block_kernels():
            log.warning("weights=%s twins need onnxruntime >= %s for fast MatMulNBits kernels; this one is %s",
                        weights, ".".join(map(str, MIN_ONNXRUNTIME)), _onnxruntime_version())
        return weights
    storage = default_weights(source)
    if storage != "float32" and not _runtime_has_block_kernels():
        log.warning("onnxruntime %s is older than %s: writing float32 weights instead of %s",
                    _onnxruntime_version(), ".".join(map(str, MIN_ONNXRUNTIME)), storage)
        return "float32"
    return storage


def _onnxruntime_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return str(onnxruntime.__version__)


def _runtime_has_block_kernels() -> bool:
    """True unless an installed onnxruntime is known to lack the kernels (none installed: the twin runs elsewhere)."""
    version = _onnxruntime_version()
    if version is None:
        return True
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return True
    return (major, minor) >= MIN_ONNXRUNTIME


def default_weights(source: CheckpointSource) -> str:
    """The storage when none is asked for: "q4" if the source's layers are 4-bit block quants (GGUF Q4_*).

    q4 is the default only where it loses nothing: the GGUF's 4-bit codes and scales are written as they
    are. A float checkpoint, or a GGUF of 5 bits and more, keeps float32 unless asked otherwise.
    """
    pick = getattr(source, "default_weights", None)
    return str(pick()) if callable(pick) else "float32"


def _projection(source: CheckpointSource, name: str, weights: str, head: bool = False) -> np.ndarray | BlockQuant:
    """One projection (or the lm head) in the twin's storage: float32 [out, in] or a BlockQuant."""
    if weights == "float32":
        return source.tensor(name)
    exact_of = getattr(source, "block_quant", None)
    exact = exact_of(name) if callable(exact_of) else None
    type_of = getattr(source, "tensor_type", None)
    stored_quantized = callable(type_of) and type_of(name) not in FLOAT_TYPES
    bits = storage_for(weights, exact, stored_quantized, head)
    assert bits is not None
    if exact is not None:
        return exact.widened(bits)
    return quantize(source.tensor(name), bits)


def _quantization_label(source_quantization: str, weights: str) -> str:
    """The manifest's `quantization`: the GGUF's type (its codes are kept, exactly or widened), or, for a
    float checkpoint stored block-quantized, what it became: "q4 (from BF16)"."""
    if weights != "float32" and source_quantization.upper() in FLOAT_TYPES:
        return f"{weights} (from {source_quantization})"
    return source_quantization


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


def _check_shape(what: str, array: np.ndarray | BlockQuant, expected: tuple[int, ...]) -> None:
    if tuple(array.shape) != expected:
        raise ConversionError(
            f"tensor {what} has shape {tuple(array.shape)} but the config implies {expected}; "
            "the checkpoint and its config disagree"
        )
    values = [array.scales, array.offsets] if isinstance(array, BlockQuant) else [array]
    if not all(np.isfinite(v).all() for v in values if v is not None):
        raise ConversionError(f"tensor {what} contains NaN or infinity; the checkpoint is corrupt")


def _size(array: np.ndarray | BlockQuant) -> int:
    return int(np.prod(array.shape))


def _write_twin(source: CheckpointSource, out: Path, name: str, source_name: str,
                groups: list[dict[str, int]], prefill_chunk: int, progress: Progress, weights: str) -> None:
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
    head: np.ndarray | BlockQuant
    if cfg.tie_embeddings:
        head = embed if weights == "float32" else _projection(source, EMBED, weights, head=True)
    elif source.has(LM_HEAD):
        head = _projection(source, LM_HEAD, weights, head=True)
        _check_shape(LM_HEAD, head, (vocab, cfg.hidden))
    else:
        raise ConversionError(
            f"{source.path}: tensor {LM_HEAD!r} is missing and the config does not tie it to the embedding; "
            "the checkpoint is incomplete"
        )
    save_onnx(build_post_graph(cfg, norm, head), out / post_file(arch))
    params += norm.size + (0 if cfg.tie_embeddings else _size(head))
    del embed, head
    step += 1

    expected = _expected_shapes(cfg)
    for layer in range(cfg.layers):
        progress(f"layer {layer + 1}/{cfg.layers}", step, total)
        tensors: Mapping[str, np.ndarray | BlockQuant] = {
            p: _projection(source, layer_tensor(layer, p), weights) if p in PROJECTIONS
            else source.tensor(layer_tensor(layer, p))
            for p in cfg.layer_parts()
        }
        for part, array in tensors.items():
            _check_shape(layer_tensor(layer, part), array, expected[part])
            params += _size(array)
        save_onnx(build_layer_graph(cfg, layer, tensors, groups), out / layer_file(arch, prefill_chunk, layer))
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
        "quantization": _quantization_label(source.quantization, weights),
        "tokenizer_dir": tokenizer_dir(arch),
        "eos_token_ids": eos_ids,
        "parameter_count": int(params),
        "source": source_name,
    })
    progress("done", step, total)


def _commit(tmp: Path, dest: Path) -> None:
    """Move the finished twin into place (files and directories fsynced before the rename, the parent
    after it: a power cut leaves the old model or the whole new one); an existing `dest` is replaced."""
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        dest.rename(old)
        durable_rename(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        durable_rename(tmp, dest)
