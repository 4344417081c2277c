"""`ax_model.json`: the converter's record of a CPU twin, and the override file for vendor bundles."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ModelDirectoryError


class ModelManifest(BaseModel):
    """What the files cannot say by themselves. Every field but `format` is optional."""

    model_config = ConfigDict(extra="forbid")

    format: str = Field(description="'ax-llm-twin/1' for a CPU twin, 'vendor' for an override in a bundle")
    name: str | None = None
    architecture: str | None = Field(None, description="model family: llama, qwen2, qwen3, ...")
    layers: int | None = Field(None, gt=0)
    hidden: int | None = Field(None, gt=0)
    kv_dim: int | None = Field(None, gt=0)
    vocab: int | None = Field(None, gt=0)
    context_length: int | None = Field(None, gt=0, description="trained context; the usable one is compiled")
    quantization: str | None = None
    tokenizer_dir: str | None = None
    eos_token_ids: list[int] | None = None
    parameter_count: int | None = Field(None, gt=0)
    source: str | None = None


def read_manifest(path: Path) -> ModelManifest:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ModelManifest.model_validate(data)
    except json.JSONDecodeError as exc:
        raise ModelDirectoryError(f"{path} is not valid JSON ({exc}); fix or delete it") from exc
    except ValidationError as exc:
        raise ModelDirectoryError(f"{path} has invalid fields: {exc}") from exc


def write_manifest(path: Path, manifest: ModelManifest) -> None:
    path.write_text(manifest.model_dump_json(indent=2, exclude_none=True) + "\n", encoding="utf-8")
