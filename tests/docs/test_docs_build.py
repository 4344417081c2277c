"""The documentation builds with `mkdocs build --strict` (no network), and says what it must."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.docs
ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "migration" / "index.html").is_file()


def test_every_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = sorted(p.name for p in DOCS.glob("*.md"))
    assert [p for p in pages if p not in nav] == []


def test_no_placeholder_sections() -> None:
    for page in DOCS.glob("*.md"):
        text = page.read_text(encoding="utf-8")
        assert not re.search(r"\b(TODO|TBD|FIXME|lorem ipsum|coming soon)\b", text, re.IGNORECASE), page.name


def test_hardware_figures_are_never_claimed_as_ours() -> None:
    performance = (DOCS / "performance.md").read_text(encoding="utf-8")
    assert "No hardware figure on this page or anywhere in these docs was measured by this project" in performance
    assert "Simulated" in performance and "Measured" in performance


def test_readme_keeps_the_two_commands_and_links_the_docs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert ('python3 -m venv .venv && .venv/bin/pip install -e ".[cpu]" && .venv/bin/ax-llm run smollm2:135m '
            '"What is the capital city of France? Answer with one word."') in readme
    assert 'python3 -m venv .venv && .venv/bin/pip install -q -e ".[test]" && .venv/bin/python -m pytest' in readme
    assert "docs/index.md" in readme


def test_cli_commands_are_documented() -> None:
    from ax_llm_provider.cli import build_parser

    cli_page = (DOCS / "cli.md").read_text(encoding="utf-8")
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in sub.choices:  # type: ignore[union-attr]
        if name != "ls":
            assert f"`ax-llm {name}" in cli_page, name
