"""Files of a CPU twin directory: ONNX graphs (external data when large), the bf16 embedding, the manifest."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..runtime.bf16 import float32_to_bf16

log = logging.getLogger(__name__)

# A protobuf cannot exceed 2 GiB; keep a margin for the graph itself.
EXTERNAL_DATA_THRESHOLD = int(1.8 * 1024**3)
EMBED_FILE = "model.embed_tokens.weight.bfloat16.bin"
MANIFEST_FILE = "ax_model.json"
_BF16_ROWS_PER_CHUNK = 4096
# One bf16 rounding for the whole package (round to nearest even, NaN kept).
float32_to_bf16_bits = float32_to_bf16


@contextlib.contextmanager
def naming(path: Path) -> Iterator[None]:
    """An OSError while writing `path` names it (a write on a full disk reports no file by itself)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


def write_error_message(exc: OSError, where: Path) -> str:
    """What went wrong writing a model, naming the file, and what to do about a full disk."""
    target = exc.filename or where
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on the device while writing {target}; free space under {where.parent} "
                "and run again (nothing was installed)")
    return f"writing {target} failed: {exc.strerror or exc} (nothing was installed)"


def write_bf16_table(path: Path, table: np.ndarray) -> None:
    """Raw little-endian bf16, row-major [rows, cols], written in chunks to bound memory."""
    with naming(path), path.open("wb") as fh:
        for start in range(0, table.shape[0], _BF16_ROWS_PER_CHUNK):
            chunk = float32_to_bf16_bits(table[start : start + _BF16_ROWS_PER_CHUNK])
            fh.write(chunk.astype("<u2", copy=False).tobytes())


def initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def save_onnx(model: onnx.ModelProto, path: Path) -> None:
    """Save a graph, moving the weights to `<name>.data` when the protobuf would get too large."""
    with naming(path):
        if initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD:
            location = path.name + ".data"
            log.info("%s: weights go to external data %s", path.name, location)
            onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=location, size_threshold=1024)
        else:
            onnx.save_model(model, str(path))


def write_manifest(path: Path, manifest: Mapping[str, Any]) -> None:
    with naming(path):
        path.write_text(json.dumps(dict(manifest), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
