"""/api/tags lists the good models when one model's manifest is damaged (issue 15, item 7)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import httpx

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.model.store import ModelStore
from ax_llm_provider.server import BackgroundServer


def test_tags_survive_a_damaged_manifest(tiny_twin: Callable[..., Path], tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(tiny_twin("llama"), root / "good" / "0")
    shutil.copytree(tiny_twin("llama"), root / "bad" / "0")
    (root / "bad" / "0" / "ax_model.json").write_text('{"format": 3, "layers": -1}', encoding="utf-8")
    engine = Engine(ModelStore(root), backend="onnx", auto_pull=False)
    try:
        with BackgroundServer(engine=engine) as url:
            tags = httpx.get(f"{url}/api/tags", timeout=30)
    finally:
        engine.close()
    assert tags.status_code == 200
    assert [m["name"] for m in tags.json()["models"]] == ["good:0"]
