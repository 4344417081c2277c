"""What the pipeline asks of a checkpoint, whatever its file format, and how the format is chosen."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import ConversionError
from .families import ModelConfig

GGUF_MAGIC = b"GGUF"


class CheckpointSource(Protocol):
    """A checkpoint opened for conversion.

    Tensors come back under Hugging Face names (`families.EMBED`, `families.layer_tensor`), in the
    Hugging Face layout, as float32 arrays the caller may keep.
    """

    path: Path
    config: ModelConfig
    quantization: str  # e.g. "Q4_1", "BF16"

    def default_name(self) -> str: ...

    def has(self, name: str) -> bool: ...

    def tensor(self, name: str) -> np.ndarray: ...

    def write_tokenizer(self, dest: Path) -> list[int]:
        """Write tokenizer.json + tokenizer_config.json into `dest`; return the end-of-sequence ids."""
        ...

    def close(self) -> None: ...


def open_source(path: Path) -> CheckpointSource:
    """Open a GGUF file or a Hugging Face safetensors directory."""
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConversionError(
                f"{path} is a directory without config.json; expected a Hugging Face checkpoint "
                "(config.json + *.safetensors + tokenizer files) or a .gguf file"
            )
        from .safetensors_source import SafetensorsSource

        return SafetensorsSource(path)
    if path.is_file():
        with path.open("rb") as fh:
            magic = fh.read(4)
        if magic == GGUF_MAGIC:
            from .gguf_source import GGUFSource

            return GGUFSource(path)
        raise ConversionError(
            f"{path} is not a GGUF file (magic {magic!r}); pass a .gguf file or a Hugging Face checkpoint directory"
        )
    raise ConversionError(f"{path} does not exist")
