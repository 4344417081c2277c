"""The root `config.json` of a 2026 ("flat") AXERA bundle: ax-llm's own run configuration.

Since its 2026 runner (`axllm run|serve <model_dir>`), ax-llm reads `<model_dir>/config.json`; the schema is
documented in AXERA-TECH/ax-llm `docs/configuration.md`. Paths in it are relative to the model directory.
Bundles of that generation keep every layer model, the post model and the embedding at the repository root
and name them here, so this file, not a guess from file names, says what the bundle holds.

Older bundles carry a `config.json` too, but it is empty (0 bytes) or a Hugging Face model config; neither
names `template_filename_axmodel`, and `read_bundle_config` returns None for them (per-directory layout).
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ModelDirectoryError

CONFIG_NAME = "config.json"
# ax-llm's own tokenizer files (e.g. qwen3_tokenizer.txt) are read by its C++ runner only.
HF_TOKENIZER_FILE = "tokenizer.json"


class BundleConfig(BaseModel):
    """The fields of ax-llm's config.json this engine reads; the others (serving, VLM, ...) are ignored."""

    model_config = ConfigDict(extra="ignore")

    model_name: str = Field(description="display name, e.g. AXERA-TECH/Qwen3-0.6B")
    tokenizer_type: str = Field(description="ax-llm tokenizer family, e.g. Qwen3")
    url_tokenizer_model: str = Field(description="ax-llm's local tokenizer file, e.g. qwen3_tokenizer.txt")
    template_filename_axmodel: str = Field(description="layer file name with %d, e.g. qwen3_p128_l%d_together.axmodel")
    axmodel_num: int = Field(gt=0, description="decoder layers")
    filename_post_axmodel: str
    filename_tokens_embed: str
    tokens_embed_num: int = Field(gt=0, description="vocabulary rows of the embedding")
    tokens_embed_size: int = Field(gt=0, description="hidden size")
    post_config_path: str = "post_config.json"

    @field_validator("template_filename_axmodel")
    @classmethod
    def _one_layer_placeholder(cls, value: str) -> str:
        if value.count("%d") != 1 or value.count("%") != 1:
            raise ValueError(f"must contain exactly one %d and no other % sequence, got {value!r}")
        return value

    @field_validator("template_filename_axmodel", "filename_post_axmodel", "filename_tokens_embed",
                     "url_tokenizer_model", "post_config_path")
    @classmethod
    def _inside_the_bundle(cls, value: str) -> str:
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts or "://" in value:
            raise ValueError(f"must be a path inside the model directory, got {value!r}")
        return value

    def layer_files(self) -> list[str]:
        return [self.template_filename_axmodel % i for i in range(self.axmodel_num)]

    def model_files(self) -> list[str]:
        """Every file the engine needs from the bundle, relative to its root (the tokenizer aside)."""
        return [*self.layer_files(), self.filename_post_axmodel, self.filename_tokens_embed]

    @property
    def ships_hf_tokenizer(self) -> bool:
        """False when the only tokenizer named is ax-llm's own format (not readable by transformers)."""
        return PurePosixPath(self.url_tokenizer_model).name == HF_TOKENIZER_FILE


def parse_bundle_config(text: str, where: str) -> BundleConfig | None:
    """The config in `text`, or None when it is not an ax-llm run config (empty, or a model config)."""
    if not text.strip():
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelDirectoryError(f"{where} is not valid JSON ({exc}); download it again") from exc
    if not isinstance(data, dict) or "template_filename_axmodel" not in data:
        return None
    try:
        return BundleConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
        raise ModelDirectoryError(
            f"{where} is an ax-llm run config with invalid fields ({problems}); see the field list in "
            "docs/models.md"
        ) from exc


def read_bundle_config(root: Path) -> BundleConfig | None:
    path = root / CONFIG_NAME
    if not path.is_file():
        return None
    return parse_bundle_config(path.read_text(encoding="utf-8"), str(path))
