"""Ollama-style model names (`smollm2:135m`) mapped to model directories under one store directory."""

from __future__ import annotations

import builtins
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError, ModelNotFoundError
from .layout import LAYER_PATTERN, MANIFEST_NAME, is_path_like  # re-exported: callers import it from here

log = logging.getLogger(__name__)
_REPORTED: set[tuple[Path, str]] = set()  # damaged entries already logged (listings are polled)

DEFAULT_MODEL = "smollm2:135m"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*(:[a-z0-9][a-z0-9._-]*)?$")


def default_store_dir() -> Path:
    """$AX_LLM_MODELS, else $XDG_DATA_HOME/ax-llm/models, else ~/.local/share/ax-llm/models."""
    explicit = os.environ.get("AX_LLM_MODELS")
    if explicit:
        return Path(explicit).expanduser()
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data_home / "ax-llm" / "models"


def normalize_name(name: str) -> str:
    """`SmolLM2` -> `smollm2:latest`; names are case-insensitive like Ollama's."""
    name = name.strip().lower()
    if not _NAME.match(name):
        raise ValueError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' or '-', "
            "with an optional ':tag' (e.g. smollm2:135m)"
        )
    return name if ":" in name else f"{name}:latest"


def _relative_dir(name: str) -> Path:
    model, tag = name.split(":")
    return Path(model) / tag


def _looks_like_model_dir(path: Path) -> bool:
    if (path / "ax_model.json").is_file():
        return True
    return any(LAYER_PATTERN.match(p.name) for p in path.rglob("*_together.*"))


def _manifest_problem(path: Path) -> str | None:
    """Why the model directory's manifest cannot be read (None when it is fine or absent)."""
    from .embedding_model import read_embedding_manifest
    from .manifest import read_manifest

    manifest = path / MANIFEST_NAME
    try:
        if manifest.is_file() and read_embedding_manifest(path) is None:
            read_manifest(manifest)
    except (ModelError, OSError, UnicodeDecodeError) as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class DamagedModel:
    """A store entry that looks like a model but cannot be listed; `reason` says what to fix."""

    name: str
    path: Path
    reason: str


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
        # Ollama's wording first (clients match on it), then where we looked and what to run.
        raise ModelNotFoundError(f'model "{name}" not found, try pulling it first (`ax-llm pull {name}`; '
                                 f"store: {self.root})")

    def list(self) -> list[StoredModel]:
        """The models that can be listed; damaged entries are logged once and left out (see scan)."""
        models, damaged = self.scan()
        for bad in damaged:
            if (bad.path, bad.reason) not in _REPORTED:
                _REPORTED.add((bad.path, bad.reason))
                log.warning("model %s left out of the list: %s", bad.name, bad.reason)
        return models

    def scan(self) -> tuple[builtins.list[StoredModel], builtins.list[DamagedModel]]:
        """(good models, damaged entries): one unreadable manifest does not hide the rest of the store."""
        if not self.root.is_dir():
            return [], []
        models: builtins.list[StoredModel] = []
        damaged: builtins.list[DamagedModel] = []
        for family in sorted(self.root.iterdir()):
            if not family.is_dir() or family.name.startswith((".", "_")):
                continue
            for tag in sorted(family.iterdir()):
                if not tag.is_dir() or tag.name.startswith((".", "_")):
                    continue
                name = f"{family.name}:{tag.name}"
                try:
                    if not _looks_like_model_dir(tag):
                        continue
                except OSError as exc:
                    damaged.append(DamagedModel(name, tag, f"cannot be read: {exc}"))
                    continue
                problem = _manifest_problem(tag)
                if problem is None:
                    models.append(StoredModel(name=name, path=tag))
                else:
                    damaged.append(DamagedModel(name, tag, problem))
        return models, damaged

    def exact(self, name: str) -> StoredModel:
        """The stored model of exactly this name (`smollm2` is `smollm2:latest`, never `smollm2:135m`)."""
        normalized = normalize_name(name)
        path = self.path_for(normalized)
        if path.is_dir() or path.is_symlink():
            return StoredModel(name=normalized, path=path)
        family = normalized.split(":")[0]
        tags = sorted(p.name for p in (self.root / family).glob("*") if not p.name.startswith((".", "_"))) \
            if (self.root / family).is_dir() else []
        hint = f"; give the exact name: {', '.join(f'{family}:{t}' for t in tags)}" if tags else ""
        raise ModelNotFoundError(f"model '{normalized}' not found in {self.root}{hint}")

    def delete(self, name: str) -> None:
        """Remove exactly `name` from the store, never anything outside it.

        A tag that is a symlink to a model directory elsewhere loses the link only; a family directory
        that leads outside the store (a symlink) is refused.
        """
        model = self.exact(name)
        root = self.root.resolve()
        family = model.path.parent
        if not family.resolve().is_relative_to(root) or family.resolve().parent != root:
            raise ModelError(f"refusing to delete {model.path}: {family} leads outside the store {root} "
                             "(a symlink); remove the link yourself if you mean to")
        if model.path.is_symlink():
            model.path.unlink()
        else:
            shutil.rmtree(model.path)
