"""The notebooks run top to bottom on the CPU twin (SmolLM2-135M), as a user would run them.

Executed with nbclient in a kernel of this interpreter (the venv). A notebook whose integration module
does not exist yet is skipped with the reason, not deleted.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

from ax_llm_provider.model.store import ModelStore

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

pytestmark = pytest.mark.docs
NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
CASES = [
    ("01_prompt_prototyping.ipynb", None),
    ("02_langchain_chain.ipynb", "ax_llm_provider.integrations.langchain"),
    ("03_llamaindex_rag.ipynb", "ax_llm_provider.integrations.llamaindex"),
]


def test_every_notebook_is_tested() -> None:
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(name for name, _ in CASES)


@pytest.mark.slow
@pytest.mark.parametrize("name, needs", CASES)
def test_notebook_runs(name: str, needs: str | None, model_store: ModelStore, smollm2_dir: Path,
                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if needs is not None and importlib.util.find_spec(needs) is None:
        pytest.skip(f"{needs} does not exist yet (being written in another issue); the notebook is kept and "
                    "runs once it lands")
    monkeypatch.setenv("AX_LLM_MODELS", str(model_store.root))  # the store the smollm2 fixture filled
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    started = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - started
    print(f"{name}: {seconds:.1f} s in a kernel of {sys.executable}")
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
