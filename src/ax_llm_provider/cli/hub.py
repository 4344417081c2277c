"""AXERA-TECH model bundles on Hugging Face: known names, download through `huggingface_hub`, checks.

`ax-llm pull qwen3:0.6b-axcl` downloads only what the engine reads (the ax650 layer directory, the
tokenizer directories, small JSON files) into a hidden `.partial` directory in the store, resumable
(`snapshot_download` skips what is complete), then checks every file: sizes against the repository's
listing, no Git LFS pointers, every decoder layer present (`model.layout.scan_model_dir`), and only
then renames it into place. Needs Hugging Face access (the Pi usually has it; this machine's CI has not).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..model.durable import durable_rename
from ..model.errors import ModelError
from ..model.layout import MANIFEST_NAME, scan_model_dir
from ..model.store import ModelStore, normalize_name

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]

# What the engine needs of a bundle; the vendor runners, scripts and the AX630C build are left behind.
ALLOW_PATTERNS = ("*ax650*", "*_tokenizer/*", "*.json")
IGNORE_PATTERNS = ("main_*", "*.sh", "*.py", "*.so", "*ax630c*", "*.md", ".gitattributes")


@dataclass(frozen=True)
class HubBundle:
    name: str
    repo_id: str
    architecture: str
    quantization: str
    description: str
    revision: str | None = None  # a commit or branch; None = the default branch
    allow_patterns: tuple[str, ...] = ALLOW_PATTERNS
    ignore_patterns: tuple[str, ...] = IGNORE_PATTERNS


def _bundle(name: str, repo: str, arch: str, quant: str, description: str) -> HubBundle:
    return HubBundle(name=name, repo_id=repo, architecture=arch, quantization=quant, description=description)


# Figures in the descriptions are published ones (docs/field-notes.md), not measured by this project.
HUB_BUNDLES: dict[str, HubBundle] = {b.name: b for b in (
    _bundle("qwen2.5:0.5b-axcl", "AXERA-TECH/Qwen2.5-0.5B-Instruct-GPTQ-Int4", "qwen2", "w4a16",
            "Qwen2.5-0.5B-Instruct GPTQ-Int4, 24 layers; published ~27 tok/s on an LLM-8850"),
    _bundle("qwen2.5:1.5b-axcl", "AXERA-TECH/Qwen2.5-1.5B-Instruct-GPTQ-Int4", "qwen2", "w4a16",
            "Qwen2.5-1.5B-Instruct GPTQ-Int4, 28 layers; published ~15 tok/s on an LLM-8850"),
    _bundle("qwen3:0.6b-axcl", "AXERA-TECH/Qwen3-0.6B", "qwen3", "w8a16",
            "Qwen3-0.6B, 28 layers, thinking; published 12.9-19.6 tok/s, TTFT 670 ms on an LLM-8850"),
    _bundle("qwen3:1.7b-axcl", "AXERA-TECH/Qwen3-1.7B", "qwen3", "w8a16",
            "Qwen3-1.7B, thinking; published 7.4 tok/s, TTFT 796 ms on an LLM-8850"),
    _bundle("qwen3:4b-axcl", "AXERA-TECH/Qwen3-4B", "qwen3", "w8a16",
            "Qwen3-4B, 36 layers, 6.3 of 7 GB CMM; published 3.65 tok/s on an LLM-8850 (too slow for 3 s replies)"),
    _bundle("minicpm4:0.5b-axcl", "AXERA-TECH/MiniCPM4-0.5B", "minicpm", "w8a16",
            "MiniCPM4-0.5B, 24 layers; published 21 tok/s, TTFT 213 ms on an LLM-8850"),
)}


def lookup_bundle(name: str) -> HubBundle | None:
    return HUB_BUNDLES.get(normalize_name(name))


class HubPullError(ModelError):
    """Fetching a bundle from Hugging Face failed; the message says why and what to do."""


def _import_hub() -> Any:
    try:
        import huggingface_hub
    except ImportError as exc:
        raise HubPullError(
            "pulling AXERA-TECH bundles needs huggingface_hub: `pip install huggingface_hub` "
            "(or download the repository yourself and run it as `ax-llm run /path/to/bundle`)"
        ) from exc
    return huggingface_hub


def _selected(path: str, bundle: HubBundle) -> bool:
    """The same filter snapshot_download applies (fnmatch over the repository path)."""
    allow = any(fnmatch.fnmatch(path, p) for p in bundle.allow_patterns)
    return allow and not any(fnmatch.fnmatch(path, p) for p in bundle.ignore_patterns)


def expected_sizes(hub: Any, bundle: HubBundle) -> dict[str, int] | None:
    """{repository path: size in bytes} of the files to fetch, or None if the listing is unavailable."""
    try:
        info = hub.HfApi().model_info(bundle.repo_id, revision=bundle.revision, files_metadata=True)
    except Exception as exc:  # noqa: BLE001 - any failure here only downgrades the check to a warning
        log.warning("could not list %s to check file sizes (%s); checking for LFS pointers only", bundle.repo_id, exc)
        return None
    sizes = {}
    for sibling in getattr(info, "siblings", None) or []:
        lfs = getattr(sibling, "lfs", None)
        size = getattr(lfs, "size", None) if lfs is not None else None
        size = size if size is not None else getattr(sibling, "size", None)
        if size is not None and _selected(sibling.rfilename, bundle):
            sizes[sibling.rfilename] = int(size)
    return sizes


def check_sizes(root: Path, expected: dict[str, int]) -> None:
    problems = []
    for rel, size in sorted(expected.items()):
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif path.stat().st_size != size:
            problems.append(f"{rel} is {path.stat().st_size} bytes, expected {size}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise HubPullError(f"the download is incomplete or damaged: {shown}; run the pull again to resume")


def _download(hub: Any, bundle: HubBundle, into: Path) -> None:
    try:
        hub.snapshot_download(repo_id=bundle.repo_id, revision=bundle.revision, local_dir=str(into),
                              allow_patterns=list(bundle.allow_patterns), ignore_patterns=list(bundle.ignore_patterns))
    except (KeyboardInterrupt, HubPullError):
        raise
    except Exception as exc:  # noqa: BLE001 - network, auth and hub errors all end the same way for the user
        raise HubPullError(
            f"could not download {bundle.repo_id} from Hugging Face: {type(exc).__name__}: {exc}; check the "
            "network (or HF_ENDPOINT / HF_TOKEN), then run the same pull again: it resumes where it stopped"
        ) from exc


def _write_manifest(root: Path, bundle: HubBundle) -> None:
    manifest = {"format": "vendor", "name": bundle.name, "architecture": bundle.architecture,
                "quantization": bundle.quantization, "source": f"hf:{bundle.repo_id}"}
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def pull_bundle(bundle: HubBundle, store: ModelStore, progress: Progress | None = None,
                force: bool = False) -> Path:
    """Download, check and install `bundle` into the store; return its directory."""
    dest = store.path_for(bundle.name)
    if dest.is_dir() and not force:
        log.info("%s is already in %s", bundle.name, dest)
        return dest
    hub = _import_hub()
    step = progress or (lambda stage, done, total: None)
    partial = dest.parent / f".{dest.name}.partial"
    partial.mkdir(parents=True, exist_ok=True)
    step("listing", 0, 3)
    expected = expected_sizes(hub, bundle)
    step(f"download {bundle.repo_id}", 1, 3)
    _download(hub, bundle, partial)
    step("checking files", 2, 3)
    if expected is not None:
        check_sizes(partial, expected)
    scan_model_dir(partial)  # all layers, post model, embedding, tokenizer; rejects Git LFS pointers
    shutil.rmtree(partial / ".cache", ignore_errors=True)  # snapshot_download's resume bookkeeping
    _write_manifest(partial, bundle)
    if dest.exists():
        shutil.rmtree(dest)
    durable_rename(partial, dest)  # fsynced: a power cut leaves the partial download or the whole bundle
    step("done", 3, 3)
    return dest


def bundle_rows(bundles: Iterable[HubBundle]) -> list[list[str]]:
    return [[b.name, f"hf:{b.repo_id}", b.description] for b in bundles]
