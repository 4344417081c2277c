"""AXERA-TECH model bundles on Hugging Face: known names, download through `huggingface_hub`, checks.

`ax-llm pull qwen3:0.6b-axcl` fetches one pinned commit of the bundle into a hidden `.partial` directory in
the store, resumable (`snapshot_download` skips what is complete). It first fetches the root `config.json`:
when that is ax-llm's run config (the 2026 flat layout, model/bundle_config.py) exactly the files it names are
fetched; otherwise (the per-directory layout) the ax650 layer directory, the tokenizer directories and the
small JSON files are. A bundle that ships only ax-llm's own tokenizer file gets the Hugging Face tokenizer of
its base model, also at a pinned commit. Then every file is checked (sizes against the repository's listing,
no Git LFS pointers, every decoder layer present: `model.layout.scan_model_dir`), the sha256 of every fetched file
is recorded (`model/checksums.py`), and only then the directory is renamed into place. A pull of a bundle already
in the store verifies it against that record and re-fetches only damaged or missing files (`repair_bundle`).
Needs Hugging Face access (the Pi usually has it; this machine's CI has not).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..model.bundle_config import CONFIG_NAME, HF_TOKENIZER_FILE, BundleConfig, read_bundle_config
from ..model.checksums import ChecksumRecord, Verification, damaged_for_pull, record_checksums, verify_files
from ..model.durable import durable_rename
from ..model.errors import ModelError
from ..model.layout import MANIFEST_NAME, scan_model_dir
from ..model.store import ModelStore, normalize_name

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]

# Per-directory layout: what the engine needs; the vendor runners, scripts and the AX630C build stay behind.
ALLOW_PATTERNS = ("*ax650*", "*_tokenizer/*", "*.json")
IGNORE_PATTERNS = ("main_*", "*.sh", "*.py", "*.so", "*ax630c*", "*.md", ".gitattributes")
HF_TOKENIZER_DIR = "hf_tokenizer"  # where a base model's tokenizer goes inside a flat bundle
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "tokenizer.model",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "generation_config.json")


@dataclass(frozen=True)
class TokenizerSource:
    """A Hugging Face repository (at a pinned commit) holding the tokenizer and chat template of a bundle's
    base model."""

    repo_id: str
    revision: str


@dataclass(frozen=True)
class HubBundle:
    name: str
    repo_id: str
    architecture: str
    quantization: str
    description: str
    revision: str  # a full commit hash: the files a pull gets never change under it
    tokenizer: TokenizerSource | None = None  # used when the bundle ships only ax-llm's tokenizer file
    allow_patterns: tuple[str, ...] = ALLOW_PATTERNS
    ignore_patterns: tuple[str, ...] = IGNORE_PATTERNS

    def __post_init__(self) -> None:
        revisions = [self.revision] + ([self.tokenizer.revision] if self.tokenizer else [])
        for rev in revisions:
            if len(rev) != 40 or any(c not in "0123456789abcdef" for c in rev):
                raise ValueError(f"{self.name}: revisions must be full commit hashes, got {rev!r}")


# Revisions: commits quoted with their file lists by public deployment guides (docs/models.md). Figures in
# the descriptions are published ones, not measured by this project.
HUB_BUNDLES: dict[str, HubBundle] = {b.name: b for b in (
    HubBundle("qwen2.5:0.5b-axcl", "AXERA-TECH/Qwen2.5-0.5B-Instruct-GPTQ-Int4", "qwen2", "w4a16",
              "Qwen2.5-0.5B-Instruct GPTQ-Int4, 24 layers; published ~27 tok/s on an LLM-8850",
              "10db075dd5e99796adcec79452fcae0ec03ddded"),
    HubBundle("qwen2.5:1.5b-axcl", "AXERA-TECH/Qwen2.5-1.5B-Instruct-GPTQ-Int4", "qwen2", "w4a16",
              "Qwen2.5-1.5B-Instruct GPTQ-Int4, 28 layers; published ~15 tok/s on an LLM-8850",
              "01d5a6eb90d9be5dd3de32518ec99c04d9ae5da5"),
    HubBundle("qwen3:0.6b-axcl", "AXERA-TECH/Qwen3-0.6B", "qwen3", "w8a16",
              "Qwen3-0.6B, 28 layers, thinking; published 12.9-19.6 tok/s, TTFT 670 ms on an LLM-8850",
              "9bd240869b5ec6f28964a635cd421a80fcad9dc8",
              TokenizerSource("Qwen/Qwen3-0.6B", "c1899de289a04d12100db370d81485cdf75e47ca")),
    HubBundle("qwen3:1.7b-axcl", "AXERA-TECH/Qwen3-1.7B", "qwen3", "w8a16",
              "Qwen3-1.7B, 28 layers, thinking; published 7.4 tok/s, TTFT 796 ms on an LLM-8850",
              "f77a4ab10991c6476dafb111371960d6cdce5e6f",
              TokenizerSource("Qwen/Qwen3-1.7B", "70d244cc86ccca08cf5af4e1e306ecf908b1ad5e")),
    HubBundle("qwen3:4b-axcl", "AXERA-TECH/Qwen3-4B", "qwen3", "w8a16",
              "Qwen3-4B, 36 layers, 6.3 of 7 GB CMM; published 3.65 tok/s on an LLM-8850 (too slow for 3 s replies)",
              "d3bf9ef4c74ffa2c3c3d1232908265b500fa7731",
              TokenizerSource("Qwen/Qwen3-4B", "1cfa9a7208912126459214e8b04321603b3df60c")),
    HubBundle("minicpm4:0.5b-axcl", "AXERA-TECH/MiniCPM4-0.5B", "minicpm", "w8a16",
              "MiniCPM4-0.5B, 24 layers; published 21 tok/s, TTFT 213 ms on an LLM-8850",
              "40672934396f0171cce4aa72487dc1b934c0c9e1"),
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


@dataclass(frozen=True)
class Selection:
    """Which repository files to fetch: the filter snapshot_download applies (fnmatch over the path)."""

    allow: tuple[str, ...]
    ignore: tuple[str, ...] = ()

    def selects(self, path: str) -> bool:
        allow = any(fnmatch.fnmatch(path, p) for p in self.allow)
        return allow and not any(fnmatch.fnmatch(path, p) for p in self.ignore)


def per_directory_selection(bundle: HubBundle) -> Selection:
    return Selection(bundle.allow_patterns, bundle.ignore_patterns)


def configured_selection(config: BundleConfig) -> Selection:
    """Exactly the files ax-llm's config.json names (plus itself); a tokenizer directory it names is kept whole."""
    names = [CONFIG_NAME, *config.model_files(), config.post_config_path]
    if config.ships_hf_tokenizer:
        parent = Path(config.url_tokenizer_model).parent.as_posix()
        names.append(f"{parent}/*" if parent != "." else config.url_tokenizer_model)
    return Selection(tuple(names))


@dataclass(frozen=True)
class RemoteFile:
    """A repository file as the hub lists it: its size and what the hub publishes about its content."""

    size: int | None
    sha256: str | None = None  # Git LFS files: the sha256 of the content
    git_oid: str | None = None  # other files: the git blob id, sha1 of b"blob <size>\0" + the content


def repository_listing(hub: Any, repo_id: str, revision: str) -> dict[str, RemoteFile] | None:
    """{repository path: RemoteFile} at `revision`, or None if the listing is unavailable."""
    try:
        info = hub.HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    except Exception as exc:  # noqa: BLE001 - any failure here only downgrades the check to a warning
        log.warning("could not list %s to check file sizes (%s); checking for LFS pointers only", repo_id, exc)
        return None
    files = {}
    for sibling in getattr(info, "siblings", None) or []:
        lfs = getattr(sibling, "lfs", None)
        size = getattr(lfs, "size", None) if lfs is not None else None
        size = size if size is not None else getattr(sibling, "size", None)
        files[sibling.rfilename] = RemoteFile(
            None if size is None else int(size), sha256=getattr(lfs, "sha256", None) if lfs is not None else None,
            git_oid=getattr(sibling, "blob_id", None) if lfs is None else None)
    return files


def git_blob_id(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_published_digests(root: Path, record: ChecksumRecord, listing: dict[str, RemoteFile]) -> None:
    """Every fetched file against the digest the hub publishes for it, so the record is of what the hub serves.

    A file that differs is removed, so that running the pull again fetches it again."""
    bad = []
    for rel, digest in sorted(record.files.items()):
        remote = listing.get(rel)  # hf_tokenizer/ files come from another repository: not listed here
        if remote is None:
            continue
        if (remote.sha256 and remote.sha256 != digest.sha256) or (
                remote.git_oid and remote.git_oid != git_blob_id(root / rel)):
            bad.append(rel)
    for rel in bad:
        (root / rel).unlink()
    if bad:
        raise HubPullError(f"{len(bad)} downloaded file(s) differ from the digest the hub publishes for them "
                           f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): the download was damaged; "
                           "they were removed, run the same pull again to fetch them again")


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


def _download(hub: Any, repo_id: str, revision: str, into: Path, selection: Selection) -> None:
    try:
        hub.snapshot_download(repo_id=repo_id, revision=revision, local_dir=str(into),
                              allow_patterns=list(selection.allow), ignore_patterns=list(selection.ignore))
    except (KeyboardInterrupt, HubPullError):
        raise
    except Exception as exc:  # noqa: BLE001 - network, auth and hub errors all end the same way for the user
        raise HubPullError(
            f"could not download {repo_id} from Hugging Face: {type(exc).__name__}: {exc}; check the "
            "network (or HF_ENDPOINT / HF_TOKEN), then run the same pull again: it resumes where it stopped"
        ) from exc


def _plan(hub: Any, bundle: HubBundle, partial: Path,
          listing: dict[str, RemoteFile] | None) -> tuple[Selection, BundleConfig | None]:
    """Fetch the root config.json first: it decides the layout (flat when it is ax-llm's run config)."""
    if listing is None or CONFIG_NAME in listing:
        _download(hub, bundle.repo_id, bundle.revision, partial, Selection((CONFIG_NAME,)))
    config = read_bundle_config(partial)
    if config is None:
        return per_directory_selection(bundle), None
    selection = configured_selection(config)
    if listing is not None:
        absent = [f for f in config.model_files() if f not in listing]
        if absent:
            raise HubPullError(
                f"{bundle.repo_id}@{bundle.revision[:12]}: config.json names {len(absent)} file(s) the repository "
                f"does not hold (first: {absent[0]}); the bundle is broken at this revision"
            )
    return selection, config


def _fetch_tokenizer(hub: Any, bundle: HubBundle, config: BundleConfig, partial: Path) -> str:
    """A flat bundle with only ax-llm's tokenizer: bring the base model's Hugging Face tokenizer; or refuse."""
    source = bundle.tokenizer
    if source is None:
        raise HubPullError(
            f"{bundle.repo_id} ships only {config.url_tokenizer_model} (ax-llm's own tokenizer format) and no "
            f"Hugging Face tokenizer is recorded for {bundle.name}, so it cannot be pulled. Download it yourself "
            f"(hf download {bundle.repo_id} --revision {bundle.revision} --local-dir DIR), put the Hugging Face "
            f"tokenizer of the model it was built from ({', '.join(TOKENIZER_FILES[:2])}) "
            f"into DIR/{HF_TOKENIZER_DIR}/, "
            f'write DIR/{MANIFEST_NAME} as {{"format": "vendor", "tokenizer_dir": "{HF_TOKENIZER_DIR}"}} and run '
            f"`ax-llm run DIR`"
        )
    target = partial / HF_TOKENIZER_DIR
    _download(hub, source.repo_id, source.revision, target, Selection(TOKENIZER_FILES))
    shutil.rmtree(target / ".cache", ignore_errors=True)
    if not (target / HF_TOKENIZER_FILE).is_file():
        raise HubPullError(f"{source.repo_id}@{source.revision[:12]} has no {HF_TOKENIZER_FILE}; "
                           f"the tokenizer recorded for {bundle.name} is wrong")
    return HF_TOKENIZER_DIR


def _write_manifest(root: Path, bundle: HubBundle, tokenizer_dir: str | None) -> None:
    manifest: dict[str, Any] = {
        "format": "vendor", "name": bundle.name, "architecture": bundle.architecture,
        "quantization": bundle.quantization, "source": f"hf:{bundle.repo_id}@{bundle.revision}"}
    if tokenizer_dir is not None and bundle.tokenizer is not None:
        manifest["tokenizer_dir"] = tokenizer_dir
        manifest["source"] += f" + tokenizer hf:{bundle.tokenizer.repo_id}@{bundle.tokenizer.revision}"
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def pull_bundle(bundle: HubBundle, store: ModelStore, progress: Progress | None = None,
                force: bool = False) -> Path:
    """Download, check and install `bundle` into the store; return its directory."""
    dest = store.path_for(bundle.name)
    if dest.is_dir() and not force:
        found = damaged_for_pull(dest, progress)
        if found.ok:
            log.info("%s is already in %s", bundle.name, dest)
            return dest
        return repair_bundle(_import_hub(), bundle, dest, found, progress)
    hub = _import_hub()
    step = progress or (lambda stage, done, total: None)
    partial = dest.parent / f".{dest.name}.partial"
    partial.mkdir(parents=True, exist_ok=True)
    step("listing", 0, 4)
    listing = repository_listing(hub, bundle.repo_id, bundle.revision)
    selection, config = _plan(hub, bundle, partial, listing)
    step(f"download {bundle.repo_id}", 1, 4)
    _download(hub, bundle.repo_id, bundle.revision, partial, selection)
    tokenizer_dir = None
    if config is not None and not config.ships_hf_tokenizer:
        step("download tokenizer", 2, 4)
        tokenizer_dir = _fetch_tokenizer(hub, bundle, config, partial)
    step("checking files", 3, 4)
    if listing is not None:
        check_sizes(partial, {p: f.size for p, f in listing.items() if f.size is not None and selection.selects(p)})
    scan_model_dir(partial, tokenizer_hint=tokenizer_dir)  # all layers, post, embedding, tokenizer; no LFS pointers
    shutil.rmtree(partial / ".cache", ignore_errors=True)  # snapshot_download's resume bookkeeping
    _write_manifest(partial, bundle, tokenizer_dir)
    record = record_checksums(partial, progress)  # what was fetched: verified at load, by doctor and by the next pull
    if listing is not None:
        check_published_digests(partial, record, listing)
    if dest.exists():
        shutil.rmtree(dest)
    durable_rename(partial, dest)  # fsynced: a power cut leaves the partial download or the whole bundle
    step("done", 4, 4)
    return dest


def repair_bundle(hub: Any, bundle: HubBundle, dest: Path, found: Verification,
                  progress: Progress | None = None) -> Path:
    """Re-fetch only the damaged or missing files of an installed bundle, then check them against the record."""
    prefix = f"{HF_TOKENIZER_DIR}/"
    from_tokenizer = {p for p in found.problems if bundle.tokenizer is not None and p.startswith(prefix)}
    from_bundle = set(found.problems) - from_tokenizer
    log.info("re-fetching %d damaged file(s) of %s", len(found.problems), bundle.name)
    for rel in found.problems:
        (dest / rel).unlink(missing_ok=True)
    if from_bundle:
        _download(hub, bundle.repo_id, bundle.revision, dest, Selection(tuple(sorted(from_bundle))))
    if from_tokenizer and bundle.tokenizer is not None:
        _download(hub, bundle.tokenizer.repo_id, bundle.tokenizer.revision, dest / HF_TOKENIZER_DIR,
                  Selection(tuple(sorted(p[len(prefix):] for p in from_tokenizer))))
        shutil.rmtree(dest / HF_TOKENIZER_DIR / ".cache", ignore_errors=True)
    shutil.rmtree(dest / ".cache", ignore_errors=True)
    again = verify_files(dest, progress, only=found.problems)
    if not again.ok:
        raise HubPullError(
            f"{bundle.name}: re-fetched files still differ from the checksums recorded when it was pulled: "
            f"{again.describe()}; run `ax-llm pull --force {bundle.name}` to fetch the whole bundle again")
    return dest


def bundle_rows(bundles: Iterable[HubBundle]) -> list[list[str]]:
    return [[b.name, f"hf:{b.repo_id}@{b.revision[:12]}", b.description] for b in bundles]
