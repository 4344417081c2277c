"""A fake `huggingface_hub` module: what of it `ax-llm pull` uses, over in-memory repositories.

`snapshot_download` writes the files of a repository into `local_dir`, honouring allow/ignore patterns
like the real one (fnmatch over the repository path) and refusing an unknown revision;
`HfApi().model_info(files_metadata=True)` lists every file with its size, and with its content's sha256 (the
weights, stored through Git LFS) or its git blob id (other files), as the hub publishes them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import types
from pathlib import Path
from typing import Any


class RevisionNotFoundError(Exception):
    """Stands in for huggingface_hub.utils.RevisionNotFoundError."""


class FakeHub:
    def __init__(self, files: dict[str, bytes], repo_id: str | None = None, revision: str | None = None) -> None:
        self.files = files  # the main repository (the bundle)
        self.repo_id, self.revision = repo_id, revision
        self.others: dict[str, tuple[str | None, dict[str, bytes]]] = {}  # repo_id -> (revision, files)
        self.downloads: list[dict[str, Any]] = []
        self.listed_sizes: dict[str, int] = {k: len(v) for k, v in files.items()}
        self.fail_download: Exception | None = None
        self.fail_listing: Exception | None = None
        self.corrupt: dict[str, bytes] = {}  # written instead of the real content

    def add_repo(self, repo_id: str, files: dict[str, bytes], revision: str | None = None) -> None:
        self.others[repo_id] = (revision, files)

    def _repo(self, repo_id: str, revision: str | None) -> dict[str, bytes]:
        if repo_id in self.others:
            pinned, files = self.others[repo_id]
        elif self.repo_id is None or repo_id == self.repo_id:
            pinned, files = self.revision, self.files
        else:
            raise RevisionNotFoundError(f"repository {repo_id} not found")
        if pinned is not None and revision != pinned:
            raise RevisionNotFoundError(f"{repo_id} has no revision {revision!r}")
        return files

    def sibling(self, path: str, size: int) -> Any:
        """As the hub lists a file: weights through Git LFS (with the content's sha256), others with their
        git blob id."""
        data = self.files.get(path, b"")
        if fnmatch.fnmatch(path, "*.axmodel") or fnmatch.fnmatch(path, "*.bin"):
            lfs = types.SimpleNamespace(size=size, sha256=hashlib.sha256(data).hexdigest(), pointer_size=130)
            return types.SimpleNamespace(rfilename=path, size=130, blob_id=None, lfs=lfs)
        blob_id = hashlib.sha1(f"blob {len(data)}\0".encode() + data, usedforsecurity=False).hexdigest()
        return types.SimpleNamespace(rfilename=path, size=size, blob_id=blob_id, lfs=None)

    def fetched(self, repo_id: str | None = None) -> set[str]:
        """Every path written for `repo_id` (default: the bundle) over all downloads."""
        return {p for d in self.downloads if repo_id in (None, d["repo_id"]) for p in d["written"]}

    def module(self) -> types.ModuleType:
        hub = self
        mod = types.ModuleType("huggingface_hub")

        def snapshot_download(repo_id: str, *, revision: str | None = None, local_dir: str | None = None,
                              allow_patterns: list[str] | None = None, ignore_patterns: list[str] | None = None,
                              **kwargs: Any) -> str:
            call = {"repo_id": repo_id, "revision": revision, "local_dir": local_dir,
                    "allow_patterns": allow_patterns, "ignore_patterns": ignore_patterns, "written": []}
            hub.downloads.append(call)
            if hub.fail_download is not None:
                raise hub.fail_download
            assert local_dir is not None
            files = hub._repo(repo_id, revision)
            for rel, data in files.items():
                if allow_patterns and not any(fnmatch.fnmatch(rel, p) for p in allow_patterns):
                    continue
                if ignore_patterns and any(fnmatch.fnmatch(rel, p) for p in ignore_patterns):
                    continue
                target = Path(local_dir) / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(hub.corrupt.get(rel, data) if files is hub.files else data)
                call["written"].append(rel)
            (Path(local_dir) / ".cache" / "huggingface").mkdir(parents=True, exist_ok=True)
            return local_dir

        class HfApi:
            def model_info(self, repo_id: str, *, revision: str | None = None, files_metadata: bool = False,
                           **kwargs: Any) -> Any:
                if hub.fail_listing is not None:
                    raise hub.fail_listing
                assert files_metadata
                files = hub._repo(repo_id, revision)
                if files is not hub.files:
                    return types.SimpleNamespace(siblings=[types.SimpleNamespace(rfilename=k, size=len(v), lfs=None)
                                                           for k, v in files.items()])
                return types.SimpleNamespace(siblings=[hub.sibling(k, size) for k, size in hub.listed_sizes.items()])

        mod.snapshot_download = snapshot_download  # type: ignore[attr-defined]
        mod.HfApi = HfApi  # type: ignore[attr-defined]
        return mod


def install(monkeypatch: Any, fake: FakeHub) -> FakeHub:
    """Put `fake` in place of huggingface_hub for the test.

    transformers (loading a tokenizer after the pull) imports the real package's submodules lazily; import
    them first so they stay the real ones while `import huggingface_hub` gives the fake.
    """
    import contextlib
    import importlib
    import sys

    for name in ("huggingface_hub.utils", "transformers.models.auto.tokenization_auto"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake.module())
    return fake
