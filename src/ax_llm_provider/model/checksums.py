"""Checksums of a model directory: recorded when a model is written, verified at load, by `doctor` and by `pull`.

The record is a sidecar file, `ax_checksums.json`, in the model directory (format in docs/models.md, "Checksums"):

    {"format": "ax-llm-checksums/1", "sample_bytes": 65536,
     "files": {"llama_p128_l0_together.onnx":
               {"size": 2722898, "sha256": "<hex>", "head": "<hex>", "tail": "<hex>"}, ...}}

`sha256` covers the whole file; `head` and `tail` are the sha256 of its first and last `sample_bytes` bytes (the
whole file when it is shorter), so a load can check a model cheaply: sizes (a truncated layer) plus two small
reads per file (a damaged header or end). `doctor` and `pull` hash every byte. Recorded: every regular file under
the directory except this sidecar, `ax_model.json` (an override users may edit; its fields are validated when it is
read) and hidden entries (a downloader's `.cache`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ModelDamagedError, ModelDirectoryError
from .layout import MANIFEST_NAME, is_path_like

log = logging.getLogger(__name__)

CHECKSUMS_NAME = "ax_checksums.json"
CHECKSUMS_FORMAT: Final = "ax-llm-checksums/1"
SAMPLE_BYTES = 64 * 1024
_BLOCK = 1 << 20
_MIB = 1 << 20
Progress = Callable[[str, int, int], None]
_SHA256_HEX = r"^[0-9a-f]{64}$"
_noted_unrecorded: set[Path] = set()  # one log note per directory and process, not one per load


class FileDigest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int = Field(ge=0)
    sha256: str = Field(pattern=_SHA256_HEX)
    head: str = Field(pattern=_SHA256_HEX)
    tail: str = Field(pattern=_SHA256_HEX)


class ChecksumRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["ax-llm-checksums/1"] = CHECKSUMS_FORMAT
    sample_bytes: int = Field(default=SAMPLE_BYTES, gt=0)
    files: dict[str, FileDigest]

    @field_validator("files")
    @classmethod
    def _inside_the_directory(cls, files: dict[str, FileDigest]) -> dict[str, FileDigest]:
        # A repair deletes and re-fetches these paths: none may reach outside the model directory.
        for rel in files:
            parts = PurePosixPath(rel).parts
            if not parts or rel.startswith("/") or "\\" in rel or any(p in ("..", ".") for p in parts):
                raise ValueError(f"{rel!r} is not a path inside the model directory")
        return files


@dataclass
class Verification:
    """What a check found: `problems` maps a file (relative path) to what is wrong with it."""

    root: Path
    recorded: bool
    checked: int = 0
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self, limit: int = 8) -> str:
        items = [f"{rel} {what}" for rel, what in sorted(self.problems.items())]
        more = f"; and {len(items) - limit} more" if len(items) > limit else ""
        return "; ".join(items[:limit]) + more


def model_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative posix path, path) of every file the record covers, in a stable order."""
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or rel.as_posix() in (CHECKSUMS_NAME, MANIFEST_NAME):
            continue
        if path.is_file():
            yield rel.as_posix(), path


def _sample_digests(path: Path, size: int, sample: int) -> tuple[str, str]:
    with path.open("rb") as f:
        head = hashlib.sha256(f.read(sample)).hexdigest()
        if size <= sample:
            return head, head
        f.seek(size - sample)
        return head, hashlib.sha256(f.read(sample)).hexdigest()


def file_sha256(path: Path, on_block: Callable[[int], None] | None = None) -> str:
    """The sha256 of a whole file, read in blocks; `on_block(bytes)` after each (progress)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
            if on_block is not None:
                on_block(len(block))
    return digest.hexdigest()


class _ByteProgress:
    """Reports hashing progress in MiB (a big model is many GB: the bar must move within a file)."""

    def __init__(self, stage: str, total_bytes: int, progress: Progress | None) -> None:
        self.stage, self.total, self.done, self.progress = stage, total_bytes, 0, progress

    def __call__(self, count: int) -> None:
        before, self.done = self.done, self.done + count
        if self.progress and (before // (16 * _MIB) != self.done // (16 * _MIB) or self.done == self.total):
            self.progress(self.stage, self.done // _MIB, max(1, self.total // _MIB))


def record_checksums(root: Path, progress: Progress | None = None) -> ChecksumRecord:
    """Hash every file of the model at `root` and write the sidecar (atomically); return the record."""
    files = list(model_files(root))
    counter = _ByteProgress("recording checksums", sum(p.stat().st_size for _, p in files), progress)
    digests = {}
    for rel, path in files:
        size = path.stat().st_size
        head, tail = _sample_digests(path, size, SAMPLE_BYTES)
        digests[rel] = FileDigest(size=size, sha256=file_sha256(path, counter), head=head, tail=tail)
    record = ChecksumRecord(files=digests)
    target = root / CHECKSUMS_NAME
    tmp = target.with_name(f".{CHECKSUMS_NAME}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(record.model_dump_json(indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    log.info("recorded checksums of %d files in %s", len(digests), target)
    return record


def read_checksums(root: Path) -> ChecksumRecord | None:
    """The record of `root`, or None when it has none (written by a version before checksums)."""
    path = root / CHECKSUMS_NAME
    if not path.is_file():
        return None
    try:
        return ChecksumRecord.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as exc:
        raise ModelDirectoryError(f"{path} is damaged ({type(exc).__name__}); the model cannot be checked: "
                                  "run `ax-llm pull --force NAME` (or convert it again)") from exc


def _size_problem(path: Path, expected: FileDigest) -> str | None:
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if size != expected.size:
        return f"is {size} bytes, recorded {expected.size} (truncated or overwritten)"
    return None


def verify_sample(root: Path) -> Verification:
    """The cheap check for every load: each file's size, then the digests of its first and last bytes."""
    record = read_checksums(root)
    result = Verification(root, recorded=record is not None)
    if record is None:
        return result
    for rel, expected in record.files.items():
        path = root / rel
        problem = _size_problem(path, expected)
        if problem is None and _sample_digests(path, expected.size, record.sample_bytes) != (
                expected.head, expected.tail):
            problem = "differs from its recorded checksum (its first or last bytes changed)"
        if problem:
            result.problems[rel] = problem
        result.checked += 1
    return result


def verify_files(root: Path, progress: Progress | None = None, only: Collection[str] | None = None) -> Verification:
    """The full check (`doctor`, `pull`): every byte of every recorded file (or of those in `only`)
    against its sha256."""
    record = read_checksums(root)
    result = Verification(root, recorded=record is not None)
    if record is None:
        return result
    wanted = {rel: d for rel, d in record.files.items() if only is None or rel in only}
    present = {rel: d for rel, d in wanted.items() if (root / rel).is_file()}
    counter = _ByteProgress("verifying checksums", sum(d.size for d in present.values()), progress)
    for rel, expected in wanted.items():
        path = root / rel
        problem = _size_problem(path, expected)
        if problem is None and file_sha256(path, counter) != expected.sha256:
            problem = "differs from its recorded sha256 (damaged)"
        elif problem is not None and rel in present:
            counter(expected.size)  # skipped, but the bar must still reach its end
        if problem:
            result.problems[rel] = problem
        result.checked += 1
    return result


def repair_hint(name: str | None, root: Path) -> str:
    """What to run to repair the model at `root` known as `name` (a store name, or a path)."""
    pull = f"run `ax-llm pull --force {name}`" if name and not is_path_like(name) else "run `ax-llm pull --force NAME`"
    return f"{pull} to repair it (a model you converted yourself: run `ax-llm convert --force SRC {root}` again)"


def check_before_load(root: Path, name: str | None = None) -> None:
    """Refuse to load a damaged model (ModelDamagedError naming each file); one log note for an unrecorded one."""
    result = verify_sample(root)
    if not result.recorded:
        if root.is_dir() and root not in _noted_unrecorded:  # a missing directory is the layout check's error
            _noted_unrecorded.add(root)
            log.info("%s has no %s (written by an older ax-llm): its files are not checked at load; "
                     "`ax-llm pull --force NAME` (or converting it again) records them", root, CHECKSUMS_NAME)
        return
    if not result.ok:
        raise ModelDamagedError(
            f"model {name or root} is damaged: {result.describe()} (in {root}); {repair_hint(name, root)}",
            problems=result.problems)


def damaged_for_pull(root: Path, progress: Progress | None = None) -> Verification:
    """`pull` of a model already in the store: the full check, logged. Unrecorded models count as intact."""
    result = verify_files(root, progress)
    if not result.recorded:
        log.info("%s has no recorded checksums (an older ax-llm wrote it); `ax-llm pull --force` re-fetches it "
                 "and records them", root)
    elif not result.ok:
        log.warning("%s is damaged: %s; repairing it", root, result.describe())
    return result
