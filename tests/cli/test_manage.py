"""`ax-llm create -f Modelfile`, `cp`, and derived models through list / show / run / rm; serve --preload."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.cli.conftest import TINY


def _count(label: str, stats: str) -> int:
    match = re.search(rf"^{label}:\s+(\d+) token", stats, re.M)
    assert match, stats
    return int(match.group(1))


def _modelfile(tmp_path: Path, text: str) -> str:
    path = tmp_path / "Modelfile"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_create_cp_list_show_run_rm(store: Path, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    modelfile = _modelfile(tmp_path, f'FROM {TINY}\nSYSTEM """Be brief."""\nPARAMETER num_predict 3\n'
                                     'PARAMETER temperature 0\nMESSAGE user hello\nMESSAGE assistant hi\n')
    code, out, err = cli("create", "coyote", "-f", modelfile)
    assert code == 0, err
    assert out.splitlines() == [f"using base model {TINY}", "creating defaults layer", "writing manifest", "success"]
    code, out, _ = cli("cp", "coyote", "wile")
    assert code == 0 and out.strip() == "copied 'coyote' to 'wile:latest'"
    code, out, _ = cli("list")
    assert [line.split()[0] for line in out.splitlines()[1:]] == [TINY, "coyote:latest", "wile:latest"]
    code, out, _ = cli("show", "wile", "--modelfile")
    assert code == 0 and f"FROM {TINY}" in out and 'SYSTEM """Be brief."""' in out and "MESSAGE user" in out
    assert cli("show", "coyote", "--system")[1].strip() == "Be brief."
    assert "num_predict" in cli("show", "coyote", "--parameters")[1]
    code, out, err = cli("run", "coyote", "Hi", "--verbose")
    assert code == 0, err
    assert _count("eval count", err) <= 3  # PARAMETER num_predict 3
    code, _, base_err = cli("run", TINY, "Hi", "--verbose", "-o", "num_predict=3")
    assert _count("prompt eval count", err) > _count("prompt eval count", base_err)  # SYSTEM and MESSAGEs
    code, _, err = cli("rm", TINY)
    assert code == 1 and "is the base of coyote:latest, wile:latest" in err
    code, out, _ = cli("rm", "coyote", "wile")
    assert code == 0 and out.splitlines() == ["deleted 'coyote:latest'", "deleted 'wile:latest'"]
    assert [line.split()[0] for line in cli("list")[1].splitlines()[1:]] == [TINY]


@pytest.mark.parametrize(("text", "message"), [
    (f"FROM {TINY}\nTEMPLATE {{{{ .Prompt }}}}\n", "TEMPLATE is not supported"),
    (f"FROM {TINY}\nADAPTER ./lora.gguf\n", "ADAPTER (LoRA) is not supported"),
    (f"FROM {TINY}\nPARAMETER temprature 1\n", "unknown parameter 'temprature'"),
    ("FROM nosuch:1b\n", 'model "nosuch:1b" not found'),
    ("SYSTEM hi\n", "no FROM line"),
])
def test_create_errors(store: Path, cli, tmp_path: Path, text: str, message: str) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("create", "x", "-f", _modelfile(tmp_path, text))
    assert code == 1 and message in err
    assert "x:latest" not in cli("list")[1]


def test_create_needs_the_modelfile_and_refuses_quantize(store: Path, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("create", "x", "-f", str(tmp_path / "missing"))
    assert code == 1 and "does not exist" in err
    code, _, err = cli("create", "x", "-f", _modelfile(tmp_path, f"FROM {TINY}\n"), "-q", "q4_K_M")
    assert code == 1 and "quantize is not supported" in err


def test_from_a_relative_directory_is_read_next_to_the_modelfile(store: Path, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "twin").symlink_to(store / "tiny" / "llama", target_is_directory=True)
    code, _, err = cli("create", "local", "-f", _modelfile(tmp_path, "FROM ./models/twin\n"))
    assert code == 0, err
    assert cli("run", "local", "Hi", "-o", "num_predict=2")[0] == 0


def test_serve_preloads_an_embedding_model(store: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from tests.unit.test_embed_engine import make_embedding_dir

    runner = pytest.importorskip("ax_llm_provider.server.runner")
    make_embedding_dir(store / "tiny-embed" / "latest")
    calls: list[object] = []
    monkeypatch.setattr(runner, "serve", lambda host, port, *, engine, log_level, **limits: calls.append(engine))
    code, _, err = cli("serve", "--port", "18080", "--preload", "tiny-embed", "--preload", TINY)
    assert code == 0, err
    from ax_llm_provider.engine.embedder import embedder_cache

    engine = calls[0]
    assert list(embedder_cache(engine)) == ["tiny-embed:latest"]  # type: ignore[arg-type]
    assert [m["name"] for m in engine.ps()["models"]] == [TINY]  # type: ignore[attr-defined]
