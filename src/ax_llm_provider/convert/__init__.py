"""Checkpoint -> CPU twin converter (`ax-llm convert`); the format is described in docs/cpu-twin.md.

    from ax_llm_provider.convert import convert
    convert("SmolLM2-135M-Instruct.Q4_1.gguf", "models/smollm2-135m")
"""

from __future__ import annotations

from .errors import ConversionError
from .families import FAMILIES, ModelConfig
from .graph import TWIN_FORMAT
from .pipeline import DEFAULT_HISTORIES, Progress, convert, layer_file, post_file, tokenizer_dir
from .writer import EMBED_FILE, MANIFEST_FILE, float32_to_bf16_bits

__all__ = [
    "DEFAULT_HISTORIES",
    "EMBED_FILE",
    "FAMILIES",
    "MANIFEST_FILE",
    "TWIN_FORMAT",
    "ConversionError",
    "ModelConfig",
    "Progress",
    "convert",
    "float32_to_bf16_bits",
    "layer_file",
    "post_file",
    "tokenizer_dir",
]
