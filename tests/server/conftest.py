"""Server fixtures: uvicorn on a background thread, bound to 127.0.0.1 on an ephemeral port.

- `smollm2_url`: the session's SmolLM2 engine (the same one the in-process tests use) behind the server;
- `tiny_engine` / `tiny_url`: random-weight twins in their own store (a llama twin and a qwen2 twin
  whose chat template has tool syntax), for fast mechanics: load/unload, queueing, cancellation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.model.store import ModelStore
from ax_llm_provider.server import BackgroundServer

TINY_LLAMA = "tiny-llama:0"
TINY_QWEN2 = "tiny-qwen2:0"


@pytest.fixture(scope="session")
def smollm2_url(smollm2_engine: Engine) -> Iterator[str]:
    with BackgroundServer(engine=smollm2_engine) as url:
        yield url


@pytest.fixture(scope="module")
def tiny_engine(tiny_twin: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    root = tmp_path_factory.mktemp("server-store")
    for family in ("llama", "qwen2"):
        (root / f"tiny-{family}").mkdir()
        (root / f"tiny-{family}" / "0").symlink_to(tiny_twin(family), target_is_directory=True)
    engine = Engine(ModelStore(root), backend="onnx", keep_alive=-1, auto_pull=False, max_queue=1)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def tiny_url(tiny_engine: Engine) -> Iterator[str]:
    with BackgroundServer(engine=tiny_engine) as url:
        yield url
