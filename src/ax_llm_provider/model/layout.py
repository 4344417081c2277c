"""Find the files of a model directory: a vendor bundle (axmodel) or a CPU twin (onnx), same layout.

Two bundle layouts are published (docs/models.md, "AXERA bundle layouts"):

* flat (2026): a root `config.json` in ax-llm's schema names every file (model/bundle_config.py); it is
  read, nothing is guessed from file names. Its tokenizer is ax-llm's own format, so a Hugging Face
  tokenizer directory must be added (named by `ax_model.json` as tokenizer_dir); `ax-llm pull` does that.
* per-directory (2024-2025): the layer files sit in one subdirectory such as `qwen3-4b-ax650/`:
    <prefix>_p<P>_l<N>_together.axmodel|onnx   one per decoder layer, N = 0..L-1
    <prefix>_post.axmodel|onnx                 final norm + lm_head
    model.embed_tokens.weight.bfloat16.bin     raw bf16 [vocab, hidden] (or .npy in python demos)
    <name>_tokenizer/ with tokenizer.json      tokenizer and chat template
    post_config.json, ax_model.json            optional
CPU twins use the per-directory naming at the top level.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .bundle_config import BundleConfig, read_bundle_config
from .errors import ModelDirectoryError
from .manifest import read_manifest

ModelKind = Literal["axmodel", "onnx"]

LAYER_PATTERN = re.compile(r"^(?P<prefix>.+)_p(?P<chunk>\d+)_l(?P<layer>\d+)_together\.(?P<ext>axmodel|onnx)$")
POST_PATTERN = re.compile(r"^(?P<prefix>.+)_post\.(?P<ext>axmodel|onnx)$")
EMBEDDING_NAMES = ("model.embed_tokens.weight.bfloat16.bin", "model.embed_tokens.weight.npy")
MANIFEST_NAME = "ax_model.json"
LFS_MAGIC = b"version https://git-lfs.github.com/spec/v1"
EXPECTED_LAYOUT = (
    "expected layout: <prefix>_p128_l<N>_together.axmodel (or .onnx) for every layer N, <prefix>_post.axmodel, "
    "model.embed_tokens.weight.bfloat16.bin and a <name>_tokenizer/ directory with tokenizer.json"
)


@dataclass(frozen=True)
class ModelFiles:
    root: Path
    kind: ModelKind
    prefix: str
    chunk: int
    layers: tuple[Path, ...]
    post: Path
    embedding: Path
    tokenizer_dir: Path
    manifest: Path | None
    post_config: Path | None
    bundle_config: BundleConfig | None = None  # the flat layout's ax-llm config.json, when present


def is_lfs_pointer(path: Path) -> bool:
    """True for a Git LFS pointer left where a large file should be (GitHub mirrors of HF bundles)."""
    if path.stat().st_size > 1024:
        return False
    with path.open("rb") as f:
        return f.read(len(LFS_MAGIC)) == LFS_MAGIC


def _reject_lfs(path: Path) -> None:
    if is_lfs_pointer(path):
        raise ModelDirectoryError(
            f"{path} is a Git LFS pointer ({path.stat().st_size} bytes), not the real file; fetch the real "
            "files (git lfs pull, or download the bundle from Hugging Face) and try again"
        )


def _candidate_dirs(root: Path) -> list[Path]:
    return [root] + sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _layer_dir(root: Path, kind: ModelKind | None) -> tuple[Path, ModelKind]:
    found: list[tuple[Path, ModelKind]] = []
    for directory in _candidate_dirs(root):
        kinds = {m.group("ext") for p in directory.iterdir() if (m := LAYER_PATTERN.match(p.name))}
        for k in sorted(kinds):
            if kind is None or k == kind:
                found.append((directory, k))  # type: ignore[arg-type]
    if not found:
        wanted = f" .{kind}" if kind else ""
        raise ModelDirectoryError(f"{root} has no{wanted} decoder layer files; {EXPECTED_LAYOUT}")
    if kind is None and {k for _, k in found} == {"axmodel", "onnx"}:
        found = [f for f in found if f[1] == "axmodel"]  # a bundle that also carries a twin: the card first
    if len(found) > 1:
        preferred = [f for f in found if "ax650" in f[0].name]
        if len(preferred) != 1:
            names = ", ".join(str(d) for d, _ in found)
            raise ModelDirectoryError(f"{root} holds several layer sets ({names}); point at one of them")
        found = preferred
    return found[0]


def _layers(directory: Path, kind: ModelKind, expected: int | None) -> tuple[str, int, tuple[Path, ...]]:
    by_index: dict[int, Path] = {}
    prefixes: set[tuple[str, int]] = set()
    for p in directory.iterdir():
        m = LAYER_PATTERN.match(p.name)
        if m and m.group("ext") == kind:
            by_index[int(m.group("layer"))] = p
            prefixes.add((m.group("prefix"), int(m.group("chunk"))))
    if len(prefixes) != 1:
        raise ModelDirectoryError(f"{directory} mixes layer files of several models: {sorted(prefixes)}")
    prefix, chunk = prefixes.pop()
    count = max(max(by_index) + 1, expected or 0)  # the manifest knows about missing trailing layers
    missing = [i for i in range(count) if i not in by_index]
    if missing:
        example = f"{prefix}_p{chunk}_l{missing[0]}_together.{kind}"
        raise ModelDirectoryError(
            f"{directory} is missing decoder layer(s) {missing} of 0..{count - 1}: expected {example}; "
            "the download is incomplete"
        )
    return prefix, chunk, tuple(by_index[i] for i in range(count))


def _find_one(root: Path, directory: Path, names: tuple[str, ...]) -> Path | None:
    for base in dict.fromkeys([directory, root]):
        for name in names:
            if (base / name).is_file():
                return base / name
    return None


def _no_hf_tokenizer(root: Path, config: BundleConfig) -> ModelDirectoryError:
    """The refusal for a bundle whose only tokenizer is ax-llm's own file: say exactly what to fetch."""
    return ModelDirectoryError(
        f"{root} ships only {config.url_tokenizer_model}, ax-llm's own tokenizer format, which this engine "
        f"cannot read and will not guess around. Download the Hugging Face tokenizer of the model "
        f"{config.model_name} was built from (tokenizer.json and tokenizer_config.json with its chat template, "
        f"plus generation_config.json if present; for a {config.tokenizer_type} bundle that is the matching "
        f"original repository, e.g. Qwen/Qwen3-0.6B for AXERA-TECH/Qwen3-0.6B) into a directory inside the "
        f"bundle, say {root / 'hf_tokenizer'}, and name it in {root / MANIFEST_NAME} as "
        '{"format": "vendor", "tokenizer_dir": "hf_tokenizer"}. `ax-llm pull` does this for the bundles it knows.'
    )


def _tokenizer_dir(root: Path, prefix: str, hint: str | None, config: BundleConfig | None = None) -> Path:
    if hint:
        path = root / hint
        if (path / "tokenizer.json").is_file():
            return path
        raise ModelDirectoryError(f"{path} (named by {MANIFEST_NAME} or config.json) has no tokenizer.json")
    candidates = [p for p in _candidate_dirs(root) if p.name.endswith("_tokenizer")
                  and (p / "tokenizer.json").is_file()]
    for p in candidates:
        if p.name == f"{prefix}_tokenizer":
            return p
    if len(candidates) == 1:
        return candidates[0]
    if (root / "tokenizer.json").is_file():
        return root
    if candidates:
        names = ", ".join(p.name for p in candidates)
        raise ModelDirectoryError(
            f"{root} has several tokenizer directories ({names}); name one in {MANIFEST_NAME} as tokenizer_dir"
        )
    if config is not None and not config.ships_hf_tokenizer:
        raise _no_hf_tokenizer(root, config)
    raise ModelDirectoryError(f"{root} has no tokenizer: expected a <name>_tokenizer/ directory with tokenizer.json")


def scan_model_dir(root: str | Path, kind: ModelKind | None = None, tokenizer_hint: str | None = None) -> ModelFiles:
    """Locate and sanity-check every file of a model directory; geometry is checked later by the backend."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ModelDirectoryError(f"{root} is not a directory; {EXPECTED_LAYOUT}")
    manifest_path = root / MANIFEST_NAME
    manifest = read_manifest(manifest_path) if manifest_path.is_file() else None
    if manifest is not None and tokenizer_hint is None:
        tokenizer_hint = manifest.tokenizer_dir
    config = read_bundle_config(root)
    if config is not None and kind in (None, "axmodel"):
        return _scan_configured(root, config, manifest_path if manifest is not None else None, tokenizer_hint)
    directory, found_kind = _layer_dir(root, kind)
    prefix, chunk, layers = _layers(directory, found_kind, manifest.layers if manifest else None)
    post = directory / f"{prefix}_post.{found_kind}"
    if not post.is_file():
        others = [p.name for p in directory.iterdir() if POST_PATTERN.match(p.name)]
        hint = f" (found {others})" if others else ""
        raise ModelDirectoryError(f"{directory} has no {post.name}{hint}; {EXPECTED_LAYOUT}")
    embedding = _find_one(root, directory, EMBEDDING_NAMES)
    if embedding is None:
        raise ModelDirectoryError(f"{root} has no {EMBEDDING_NAMES[0]}; {EXPECTED_LAYOUT}")
    for path in (*layers, post, embedding):
        _reject_lfs(path)
    post_config = _find_one(root, directory, ("post_config.json",))
    return ModelFiles(
        root=root,
        kind=found_kind,
        prefix=prefix,
        chunk=chunk,
        layers=layers,
        post=post,
        embedding=embedding,
        tokenizer_dir=_tokenizer_dir(root, prefix, tokenizer_hint),
        manifest=manifest_path if manifest is not None else None,
        post_config=post_config,
    )


def _configured_file(root: Path, rel: str, what: str) -> Path:
    path = root / rel
    if not path.is_file():
        raise ModelDirectoryError(
            f"{path} is missing: {root / 'config.json'} names it as the {what}; the download is incomplete"
        )
    return path


def _scan_configured(root: Path, config: BundleConfig, manifest: Path | None, tokenizer_hint: str | None) -> ModelFiles:
    """The flat layout: every file is where ax-llm's config.json says."""
    layers = tuple(_configured_file(root, rel, f"decoder layer {i}") for i, rel in enumerate(config.layer_files()))
    post = _configured_file(root, config.filename_post_axmodel, "post model")
    embedding = _configured_file(root, config.filename_tokens_embed, "token embedding")
    kinds = {p.suffix for p in (*layers, post)}
    if kinds != {".axmodel"}:
        raise ModelDirectoryError(f"{root / 'config.json'} names model files that are not .axmodel ({sorted(kinds)})")
    for path in (*layers, post, embedding):
        _reject_lfs(path)
    match = LAYER_PATTERN.match(layers[0].name)  # naming is informative only here: the config is the truth
    prefix = match.group("prefix") if match else Path(config.filename_post_axmodel).stem.removesuffix("_post")
    post_config = root / config.post_config_path
    if tokenizer_hint is None and config.ships_hf_tokenizer:  # the config names a Hugging Face tokenizer.json
        tokenizer_hint = Path(config.url_tokenizer_model).parent.as_posix()
    return ModelFiles(
        root=root, kind="axmodel", prefix=prefix, chunk=int(match.group("chunk")) if match else 0,
        layers=layers, post=post, embedding=embedding,
        tokenizer_dir=_tokenizer_dir(root, prefix, tokenizer_hint, config),
        manifest=manifest, post_config=post_config if post_config.is_file() else None, bundle_config=config,
    )


def is_path_like(name: str) -> bool:
    """A model given as a directory rather than a name (`./twin`, `/models/qwen`, `~/m`)."""
    return "/" in name or name.startswith((".", "~"))
