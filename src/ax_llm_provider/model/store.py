"""Ollama-style model names (`smollm2:135m`) mapped to model directories under one store directory."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelNotFoundError
from .layout import LAYER_PATTERN

DEFAULT_MODEL = "smollm2:135m"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*(:[a-z0-9][a-z0-9._-]*)?$")


def default_store_dir() -> Path:
    """$AX_LLM_MODELS, else $XDG_DATA_HOME/ax-llm/models, else ~/.local/share/ax-llm/models."""
    explicit = os.environ.get("AX_LLM_MODELS")
    if explicit:
        return Path(explicit).expanduser()
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data_home / "ax-llm" / "models"


def is_path_like(name: str) -> bool:
    """A model given as a directory rather than a name (`./twin`, `/models/qwen`, `~/m`)."""
    return "/" in name or name.startswith((".", "~"))


def normalize_name(name: str) -> str:
    """`SmolLM2` -> `smollm2:latest`; names are case-insensitive like Ollama's."""
    name = name.strip().lower()
    if not _NAME.match(name):
        raise ValueError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' or '-', with an optional ':tag' (e.g. smollm2:135m)"
        )
    return name if ":" in name else f"{name}:latest"


def _relative_dir(name: str) -> Path:
    model, tag = name.split(":")
    return Path(model) / tag


def _looks_like_model_dir(path: Path) -> bool:
    if (path / "ax_model.json").is_file():
        return True
    return any(LAYER_PATTERN.match(p.name) for p in path.rglob("*_together.*"))


@dataclass(frozen=True)
class StoredModel:
    name: str
    path: Path


class ModelStore:
    """A directory of model directories, one per name."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root else default_store_dir()

    def path_for(self, name: str) -> Path:
        return self.root / _relative_dir(normalize_name(name))

    def resolve(self, name_or_path: str) -> StoredModel:
        """A stored model by name, or a model directory given as a path."""
        if is_path_like(name_or_path):
            candidate = Path(name_or_path).expanduser().resolve()
            if candidate.is_dir():
                return StoredModel(name=str(candidate), path=candidate)
            raise ModelNotFoundError(f"model directory {candidate} does not exist")
        name = normalize_name(name_or_path)
        path = self.path_for(name)
        if path.is_dir():
            return StoredModel(name=name, path=path)
        if name.endswith(":latest"):  # `smollm2` finds the only stored `smollm2:*`
            family = [m for m in self.list() if m.name.split(":")[0] == name.split(":")[0]]
            if len(family) == 1:
                return family[0]
        raise ModelNotFoundError(f"model '{name}' not found in {self.root}; try `ax-llm pull {name}`")

    def list(self) -> list[StoredModel]:
        if not self.root.is_dir():
            return []
        models = []
        for family in sorted(self.root.iterdir()):
            if not family.is_dir() or family.name.startswith((".", "_")):
                continue
            for tag in sorted(family.iterdir()):
                if tag.is_dir() and not tag.name.startswith((".", "_")) and _looks_like_model_dir(tag):
                    models.append(StoredModel(name=f"{family.name}:{tag.name}", path=tag))
        return models

    def delete(self, name: str) -> None:
        import shutil

        model = self.resolve(name)
        shutil.rmtree(model.path)
