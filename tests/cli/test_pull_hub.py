"""`ax-llm pull qwen3:0.6b-axcl`: the Hugging Face path, against a fake `huggingface_hub` module.

There is no network to Hugging Face here. The fake's `snapshot_download` writes a small bundle with the
vendor's layout (qwen3-0.6b-ax650/qwen3_p128_l<N>_together.axmodel, qwen3_post.axmodel, the bf16
embedding, qwen3_tokenizer/) into `local_dir`, honouring allow/ignore patterns like the real one.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli.conftest import TINY
from tests.cli.fake_hub import FakeHub, install

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


@pytest.fixture
def hub(store: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    return install(monkeypatch, FakeHub(bundle_files(store / "tiny" / "llama" / "llama_tokenizer")))


def test_pull_downloads_checks_and_installs(store: Path, hub: FakeHub, cli: Cli) -> None:
    code, out, err = cli("pull", NAME)
    assert code == 0, err
    dest = store / "qwen3" / "0.6b-axcl"
    assert out.strip() == f"{NAME}: ready in {dest}"
    call = hub.downloads[-1]
    assert call["repo_id"] == "AXERA-TECH/Qwen3-0.6B" and call["local_dir"] == str(
        store / "qwen3" / ".0.6b-axcl.partial")
    assert call["revision"] == "9bd240869b5ec6f28964a635cd421a80fcad9dc8"  # pinned, never the default branch
    assert (dest / "qwen3-0.6b-ax650" / "qwen3_p128_l2_together.axmodel").is_file()
    assert not (dest / "qwen3-0.6b-ax630c").exists() and not (dest / "main_axcl_aarch64").exists()
    assert not (dest / ".cache").exists() and not (store / "qwen3" / ".0.6b-axcl.partial").exists()
    manifest = json.loads((dest / "ax_model.json").read_text())
    assert manifest == {"format": "vendor", "name": NAME, "architecture": "qwen3", "quantization": "w8a16",
                        "source": "hf:AXERA-TECH/Qwen3-0.6B@9bd240869b5ec6f28964a635cd421a80fcad9dc8"}
    assert NAME in cli("list")[1]
    code, out, err = cli("show", NAME)
    assert code == 0, err
    assert "AXERA bundle (axmodel)" in out and "known once loaded" in out and "unavailable here" in out
    downloads = len(hub.downloads)
    assert cli("pull", NAME)[0] == 0 and len(hub.downloads) == downloads  # already there: nothing fetched


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
    assert hub.downloads[-1]["local_dir"] == hub.downloads[0]["local_dir"]


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
    assert not marker.exists() and len({d["local_dir"] for d in hub.downloads}) == 1


def test_rm_a_bundle(store: Path, hub: FakeHub, cli: Cli) -> None:
    assert cli("pull", NAME)[0] == 0
    assert cli("rm", NAME, TINY)[0] == 0
    assert not (store / "qwen3" / "0.6b-axcl").exists()
    shutil.rmtree(store / "qwen3")
    assert cli("list")[1].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
