"""The store under damage and ambiguity (issue 15, items 7 and 13): one bad manifest does not hide the
other models, `rm` needs the exact name, and `rm` never deletes outside the store."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ax_llm_provider import Client
from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.model.store import ModelStore

from .conftest import TINY

Cli = Callable[..., tuple[int, str, str]]


def _break_a_copy(store: Path, name: str = "broken/one") -> Path:
    bad = store / name
    shutil.copytree(store / "tiny" / "llama", bad)
    (bad / "ax_model.json").write_text("{not json", encoding="utf-8")
    return bad


def test_list_shows_the_good_models_and_names_the_bad_one(store: Path, cli: Cli) -> None:
    _break_a_copy(store)
    code, out, err = cli("list")
    assert code == 0 and TINY in out and "broken:one" not in out
    assert "broken:one" in err and "ax_model.json" in err


def test_client_list_and_store_scan_survive_a_bad_manifest(store: Path) -> None:
    bad = _break_a_copy(store)
    models, problems = ModelStore(store).scan()
    assert [m.name for m in models] == [TINY]
    assert [(p.name, p.path) for p in problems] == [("broken:one", bad)] and "not valid JSON" in problems[0].reason
    engine = Engine(ModelStore(store), backend="onnx", auto_pull=False)
    try:
        assert [m.model for m in Client(engine=engine).list().models] == [TINY]
    finally:
        engine.close()


def test_rm_needs_the_exact_name(store: Path, cli: Cli) -> None:
    code, _, err = cli("rm", "tiny")  # tiny:latest does not exist; tiny:llama must survive
    assert code == 1 and "tiny:llama" in err and "exact" in err
    assert (store / "tiny" / "llama" / "ax_model.json").is_file()
    assert cli("rm", TINY)[0] == 0 and not (store / "tiny" / "llama").exists()


def test_rm_never_follows_a_symlinked_family_out_of_the_store(store: Path, cli: Cli, tmp_path: Path) -> None:
    outside = tmp_path / "precious"
    shutil.copytree(store / "tiny" / "llama", outside / "llama")
    (store / "linked").symlink_to(outside, target_is_directory=True)
    code, _, err = cli("rm", "linked:llama")
    assert code == 1 and "outside the store" in err
    assert (outside / "llama" / "ax_model.json").is_file()


def test_rm_of_a_linked_model_removes_the_link_only(store: Path, cli: Cli, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    shutil.copytree(store / "tiny" / "llama", target)
    (store / "mine").mkdir()
    (store / "mine" / "0").symlink_to(target, target_is_directory=True)
    assert cli("rm", "mine:0")[0] == 0
    assert not (store / "mine" / "0").is_symlink() and (target / "ax_model.json").is_file()


def test_serve_cleans_what_a_killed_pull_left(store: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = pytest.importorskip("ax_llm_provider.server.runner")
    monkeypatch.setattr(runner, "serve", lambda *args, **kwargs: None)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = store / "tiny" / f".llama.partial-{dead.pid}-abcd1234"
    leftover.mkdir()
    (leftover / "layer.onnx").write_bytes(b"x" * 1024)
    assert cli("serve")[0] == 0
    assert not leftover.exists() and (store / "tiny" / "llama").is_dir()
