"""Hugging Face checkpoints: config.json + *.safetensors (parsed here, no `safetensors` dependency).

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON mapping tensor names to
{dtype, shape, data_offsets}, then the raw little-endian data (offsets are relative to its start).
"""

from __future__ import annotations

import json
import logging
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.bf16 import bf16_to_float32
from .errors import ConversionError
from .families import EMBED, ModelConfig, config_from_hf
from .tokenizer import copy_hf_tokenizer, hf_eos_ids

log = logging.getLogger(__name__)

# safetensors dtype -> (numpy storage dtype, item size); BF16 is widened by hand.
_DTYPES: dict[str, tuple[type[np.generic], int]] = {
    "F32": (np.float32, 4),
    "F16": (np.float16, 2),
    "BF16": (np.uint16, 2),
}
_MAX_HEADER = 100 * 1024 * 1024  # the format's own limit


class SafetensorsFile:
    """One .safetensors file, memory-mapped; tensors are read on demand."""

    def __init__(self, path: Path) -> None:
        self.path = path
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                raise ConversionError(f"{path} is too short to be a safetensors file")
            (length,) = struct.unpack("<Q", head)
            if length > min(_MAX_HEADER, size - 8):
                raise ConversionError(f"{path} has a corrupt safetensors header (length {length}, file {size} bytes)")
            try:
                header = json.loads(fh.read(length))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ConversionError(f"{path} has a corrupt safetensors header: {exc}") from exc
        if not isinstance(header, dict):
            raise ConversionError(f"{path}: safetensors header is not a JSON object")
        self._data_start = 8 + length
        data_size = size - self._data_start
        self.entries: dict[str, dict[str, Any]] = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            self.entries[name] = self._check_entry(name, entry, data_size)
        self._mmap: np.memmap | None = None

    def _check_entry(self, name: str, entry: Any, data_size: int) -> dict[str, Any]:
        try:
            dtype = str(entry["dtype"])
            shape = [int(d) for d in entry["shape"]]
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConversionError(f"{self.path}: malformed header entry for {name!r}: {exc}") from exc
        if not 0 <= begin <= end <= data_size:
            raise ConversionError(
                f"{self.path}: tensor {name!r} spans bytes {begin}..{end} but the data has {data_size}; "
                "the file is truncated or corrupt, download it again"
            )
        if dtype in _DTYPES and (end - begin) != math.prod(shape) * _DTYPES[dtype][1]:
            raise ConversionError(f"{self.path}: tensor {name!r} size does not match its shape {shape}")
        return {"dtype": dtype, "shape": shape, "begin": begin, "end": end}

    def names(self) -> list[str]:
        return list(self.entries)

    def read(self, name: str) -> np.ndarray:
        """The tensor as a fresh float32 array."""
        entry = self.entries[name]
        dtype = entry["dtype"]
        if dtype not in _DTYPES:
            raise ConversionError(
                f"{self.path}: tensor {name!r} has dtype {dtype}; only F32, F16 and BF16 checkpoints are "
                "supported (dequantize GPTQ/AWQ/FP8 checkpoints first)"
            )
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        start = self._data_start + entry["begin"]
        raw = self._mmap[start : self._data_start + entry["end"]]
        storage, _ = _DTYPES[dtype]
        values = raw.view(np.dtype(storage).newbyteorder("<"))
        out = bf16_to_float32(values) if dtype == "BF16" else values.astype(np.float32)
        return out.reshape(entry["shape"])

    def close(self) -> None:
        self._mmap = None


class SafetensorsSource:
    """A Hugging Face checkpoint directory of the llama / qwen2 / qwen3 families."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.hf_config: dict[str, Any] = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConversionError(f"{path / 'config.json'} is not valid JSON: {exc}") from exc
        if not isinstance(self.hf_config, dict):
            raise ConversionError(f"{path / 'config.json'} is not a JSON object")
        self.config: ModelConfig = config_from_hf(self.hf_config)
        files = sorted(path.glob("*.safetensors"))
        if not files:
            hint = " (PyTorch .bin weights: re-save them as safetensors)" if any(path.glob("*.bin")) else ""
            raise ConversionError(f"{path} has no *.safetensors files{hint}")
        self._files = [SafetensorsFile(f) for f in files]
        self._index: dict[str, SafetensorsFile] = {}
        for sf in self._files:
            for name in sf.names():
                self._index.setdefault(name, sf)
        if EMBED not in self._index:
            raise ConversionError(
                f"{path}: no tensor {EMBED!r} in {', '.join(f.name for f in files)}; "
                "is this a complete llama/qwen2/qwen3 checkpoint?"
            )
        self.quantization = self._index[EMBED].entries[EMBED]["dtype"]
        log.info("opened %s: %s, %d layers, %s", path, self.config.architecture, self.config.layers, self.quantization)

    def default_name(self) -> str:
        return self.path.resolve().name.lower()

    def has(self, name: str) -> bool:
        return name in self._index

    def tensor(self, name: str) -> np.ndarray:
        if name not in self._index:
            raise ConversionError(
                f"{self.path}: tensor {name!r} is missing; the checkpoint is incomplete or not a "
                f"{self.config.architecture} model"
            )
        return self._index[name].read(name)

    def write_tokenizer(self, dest: Path) -> list[int]:
        copy_hf_tokenizer(self.path, dest)
        return hf_eos_ids(self.path, self.hf_config)

    def close(self) -> None:
        for sf in self._files:
            sf.close()
