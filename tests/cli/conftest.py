"""CLI fixtures: a temporary model store holding one tiny random-weight twin, and a clean environment.

Nothing here reads the developer's store: AX_LLM_MODELS points at the temporary one for every test.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ax_llm_provider.cli import close_engines, main

TINY = "tiny:llama"


@pytest.fixture(autouse=True)
def own_lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Card locks and status channels of this test only: a card another process on this machine holds (a
    service, another test run) must not change what `health` / `doctor` print here."""
    monkeypatch.setenv("AX_LLM_LOCK_DIR", str(tmp_path / "locks"))


@pytest.fixture
def store(tmp_path: Path, tiny_twin: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "store"
    shutil.copytree(tiny_twin("llama"), root / "tiny" / "llama")
    monkeypatch.setenv("AX_LLM_MODELS", str(root))
    for name in ("AX_LLM_BACKEND", "AX_LLM_DEVICE", "AX_LLM_KEEP_ALIVE", "AX_LLM_MAX_QUEUE"):
        monkeypatch.delenv(name, raising=False)
    yield root
    close_engines()


class FakeStdin(io.StringIO):
    """stdin with a chosen answer to isatty()."""

    def __init__(self, text: str, tty: bool) -> None:
        super().__init__(text)
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


@pytest.fixture
def stdin(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, bool], None]:
    def feed(text: str, tty: bool = False) -> None:
        monkeypatch.setattr("sys.stdin", FakeStdin(text, tty))

    return feed


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """cli("run", "tiny:llama", ...) -> (exit code, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run
