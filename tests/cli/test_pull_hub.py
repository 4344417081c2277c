"""`ax-llm pull qwen3:0.6b-axcl`: the Hugging Face path, against a fake `huggingface_hub` module.

There is no network to Hugging Face here. The fake's `snapshot_download` writes a small bundle with the
vendor's layout (qwen3-0.6b-ax650/qwen3_p128_l<N>_together.axmodel, qwen3_post.axmodel, the bf16
embedding, qwen3_tokenizer/) into `local_dir`, honouring allow/ignore patterns like the real one.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import TINY

Cli = Callable[..., tuple[int, str, str]]
NAME = "qwen3:0.6b-axcl"
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1\noid sha256:0000\nsize 52428800\n"


def bundle_files(tokenizer_dir: Path) -> dict[str, bytes]:
    files = {f"qwen3-0.6b-ax650/qwen3_p128_l{i}_together.axmodel": bytes([i]) * 4096 for i in range(3)}
    files["qwen3-0.6b-ax650/qwen3_post.axmodel"] = b"\x07" * 8192
    files["qwen3-0.6b-ax650/model.embed_tokens.weight.bfloat16.bin"] = b"\x00" * 2048
    files["qwen3-0.6b-ax630c/qwen3_p128_l0_together.axmodel"] = b"\x01" * 4096  # another chip: left behind
    files["main_axcl_aarch64"] = b"\x7fELF" + b"\x00" * 2000
    files["run_qwen3_0.6b_int8_ctx_axcl_aarch64.sh"] = b"#!/bin/sh\n"
    files["qwen3_tokenizer_uid.py"] = b"# tokenizer server\n"
    files["config.json"] = b"{}"
    files["post_config.json"] = b'{"enable_temperature": true, "temperature": 0.9}'
    for f in tokenizer_dir.iterdir():
        files[f"qwen3_tokenizer/{f.name}"] = f.read_bytes()
    return files


class FakeHub:
    """What of huggingface_hub the pull uses: snapshot_download and HfApi().model_info(files_metadata=True)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.downloads: list[dict[str, Any]] = []
        self.listed_sizes: dict[str, int] = {k: len(v) for k, v in files.items()}
        self.fail_download: Exception | None = None
        self.fail_listing: Exception | None = None
        self.corrupt: dict[str, bytes] = {}  # written instead of the real content

    def module(self) -> types.ModuleType:
        hub = self
        mod = types.ModuleType("huggingface_hub")

        def snapshot_download(repo_id: str, *, revision: str | None = None, local_dir: str | None = None,
                              allow_patterns: list[str] | None = None, ignore_patterns: list[str] | None = None,
                              **kwargs: Any) -> str:
            hub.downloads.append({"repo_id": repo_id, "revision": revision, "local_dir": local_dir,
                                  "allow_patterns": allow_patterns, "ignore_patterns": ignore_patterns})
            if hub.fail_download is not None:
                raise hub.fail_download
            assert local_dir is not None
            for rel, data in hub.files.items():
                if allow_patterns and not any(fnmatch.fnmatch(rel, p) for p in allow_patterns):
                    continue
                if ignore_patterns and any(fnmatch.fnmatch(rel, p) for p in ignore_patterns):
                    continue
                target = Path(local_dir) / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(hub.corrupt.get(rel, data))
            (Path(local_dir) / ".cache" / "huggingface").mkdir(parents=True, exist_ok=True)
            return local_dir

        class HfApi:
            def model_info(self, repo_id: str, *, revision: str | None = None, files_metadata: bool = False,
                           **kwargs: Any) -> Any:
                if hub.fail_listing is not None:
                    raise hub.fail_listing
                assert files_metadata
                siblings = [types.SimpleNamespace(rfilename=k, size=v, lfs=None) for k, v in hub.listed_sizes.items()]
                return types.SimpleNamespace(siblings=siblings)

        mod.snapshot_download = snapshot_download  # type: ignore[attr-defined]
        mod.HfApi = HfApi  # type: ignore[attr-defined]
        return mod


@pytest.fixture
def hub(store: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    fake = FakeHub(bundle_files(store / "tiny" / "llama" / "llama_tokenizer"))
    monkeypatch.setitem(__import__("sys").modules, "huggingface_hub", fake.module())
    return fake


def test_pull_downloads_checks_and_installs(store: Path, hub: FakeHub, cli: Cli) -> None:
    code, out, err = cli("pull", NAME)
    assert code == 0, err
    dest = store / "qwen3" / "0.6b-axcl"
    assert out.strip() == f"{NAME}: ready in {dest}"
    call = hub.downloads[0]
    assert call["repo_id"] == "AXERA-TECH/Qwen3-0.6B" and call["local_dir"] == str(store / "qwen3" / ".0.6b-axcl.partial")
    assert (dest / "qwen3-0.6b-ax650" / "qwen3_p128_l2_together.axmodel").is_file()
    assert not (dest / "qwen3-0.6b-ax630c").exists() and not (dest / "main_axcl_aarch64").exists()
    assert not (dest / ".cache").exists() and not (store / "qwen3" / ".0.6b-axcl.partial").exists()
    manifest = json.loads((dest / "ax_model.json").read_text())
    assert manifest == {"format": "vendor", "name": NAME, "architecture": "qwen3", "quantization": "w8a16",
                        "source": "hf:AXERA-TECH/Qwen3-0.6B"}
    assert NAME in cli("list")[1]
    code, out, err = cli("show", NAME)
    assert code == 0, err
    assert "AXERA bundle (axmodel)" in out and "known once loaded" in out and "unavailable here" in out
    assert cli("pull", NAME)[0] == 0 and len(hub.downloads) == 1  # already there: nothing fetched


def test_lfs_pointer_is_rejected_and_the_pull_resumes(store: Path, hub: FakeHub, cli: Cli) -> None:
    layer = "qwen3-0.6b-ax650/qwen3_p128_l1_together.axmodel"
    hub.corrupt[layer] = LFS_POINTER
    hub.listed_sizes = {}  # a listing without sizes: only the layout checks can catch it
    code, _, err = cli("pull", NAME)
    assert code == 1 and "Git LFS pointer" in err
    assert not (store / "qwen3" / "0.6b-axcl").exists()
    assert (store / "qwen3" / ".0.6b-axcl.partial" / layer).is_file()  # kept for the next run to resume
    hub.corrupt.clear()
    code, _, err = cli("pull", NAME)
    assert code == 0, err
    assert hub.downloads[1]["local_dir"] == hub.downloads[0]["local_dir"]


def test_size_mismatch_is_an_error(store: Path, hub: FakeHub, cli: Cli) -> None:
    hub.listed_sizes["qwen3-0.6b-ax650/qwen3_post.axmodel"] = 9999
    code, _, err = cli("pull", NAME)
    assert code == 1
    assert "qwen3_post.axmodel is 8192 bytes, expected 9999" in err and "resume" in err


def test_missing_layer_is_an_error(store: Path, hub: FakeHub, cli: Cli) -> None:
    del hub.files["qwen3-0.6b-ax650/qwen3_p128_l1_together.axmodel"]
    hub.listed_sizes = {k: len(v) for k, v in hub.files.items()}
    code, _, err = cli("pull", NAME)
    assert code == 1 and "missing decoder layer(s) [1]" in err


def test_listing_failure_only_weakens_the_check(store: Path, hub: FakeHub, cli: Cli) -> None:
    hub.fail_listing = OSError("no route to host")
    code, _, err = cli("pull", NAME)
    assert code == 0, err


def test_network_failure(store: Path, hub: FakeHub, cli: Cli) -> None:
    hub.fail_download = ConnectionError("Name or service not known")
    code, _, err = cli("pull", NAME)
    assert code == 1
    assert "could not download AXERA-TECH/Qwen3-0.6B from Hugging Face" in err and "resumes" in err
    assert len(err.strip().splitlines()) == 1


def test_without_huggingface_hub(store: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "huggingface_hub", None)
    code, _, err = cli("pull", "qwen2.5:0.5b-axcl")
    assert code == 1 and "needs huggingface_hub" in err


def test_force_replaces_the_bundle(store: Path, hub: FakeHub, cli: Cli) -> None:
    assert cli("pull", NAME)[0] == 0
    marker = store / "qwen3" / "0.6b-axcl" / "stale.txt"
    marker.write_text("old")
    assert cli("pull", NAME, "--force")[0] == 0
    assert not marker.exists() and len(hub.downloads) == 2


def test_rm_a_bundle(store: Path, hub: FakeHub, cli: Cli) -> None:
    assert cli("pull", NAME)[0] == 0
    assert cli("rm", NAME, TINY)[0] == 0
    assert not (store / "qwen3" / "0.6b-axcl").exists()
    shutil.rmtree(store / "qwen3")
    assert cli("list")[1].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
