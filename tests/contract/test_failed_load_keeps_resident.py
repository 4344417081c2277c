"""Issue 15 item 5: a request for a broken model fails without evicting the loaded one."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.model.errors import ModelError
from ax_llm_provider.model.store import ModelStore


@pytest.fixture()
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = Engine(ModelStore(tmp_path / "store"), backend="onnx", keep_alive=-1, auto_pull=False, max_loaded_models=1)
    yield eng
    eng.close()


def _broken_copy(source: Path, target: Path, damage: str) -> str:
    shutil.copytree(source, target)
    if damage == "missing post graph":
        next(target.rglob("*_post.onnx")).unlink()
    elif damage == "bad manifest":
        (target / "ax_model.json").write_text(json.dumps({"name": "x", "layers": "many"}), encoding="utf-8")
    elif damage == "no embedding":
        next(target.rglob("*embed_tokens*")).unlink()
    return str(target)


@pytest.mark.parametrize("damage", ["missing post graph", "bad manifest", "no embedding"])
def test_broken_model_leaves_resident_loaded(engine: Engine, tiny_twin: Callable[..., Path], tmp_path: Path,
                                             damage: str) -> None:
    resident = str(tiny_twin("llama", decode_capacity=255, prefill_chunk=32, prefill_histories=(0, 32)))
    broken = _broken_copy(tiny_twin("llama", seed=1, decode_capacity=255, prefill_chunk=32,
                                    prefill_histories=(0, 32)), tmp_path / "broken", damage)
    list(engine.generate({"model": resident, "prompt": "hi", "options": {"num_predict": 1}}))
    ((name, entry),) = engine.slots.entries()

    with pytest.raises(ModelError):
        list(engine.generate({"model": broken, "prompt": "hi", "options": {"num_predict": 1}}))

    assert [m["name"] for m in engine.ps()["models"]] == [name]
    last = list(engine.generate({"model": resident, "prompt": "hi", "options": {"num_predict": 1}}))[-1]
    assert last["done"] and last.get("load_duration", 0) == 0, "the resident model was reloaded"
    assert engine.slots.get(name) is entry


def test_corrupt_graph_found_at_open_still_leaves_a_resident_model(engine: Engine, tiny_twin: Callable[..., Path],
                                                                   tmp_path: Path) -> None:
    """Files that look right but fail to open cost the resident model its slot only for the failed load:
    it is loaded again, and the request still fails with the model's error."""
    resident = str(tiny_twin("llama", decode_capacity=255, prefill_chunk=32, prefill_histories=(0, 32)))
    broken = Path(_broken_copy(tiny_twin("llama", seed=1, decode_capacity=255, prefill_chunk=32,
                                         prefill_histories=(0, 32)), tmp_path / "broken", "none"))
    next(broken.rglob("*_post.onnx")).write_bytes(b"not an onnx graph")
    list(engine.generate({"model": resident, "prompt": "hi", "options": {"num_predict": 1}}))
    ((name, _),) = engine.slots.entries()

    with pytest.raises(Exception, match="llama_post.onnx"):
        list(engine.generate({"model": str(broken), "prompt": "hi", "options": {"num_predict": 1}}))

    assert [m["name"] for m in engine.ps()["models"]] == [name]
    assert list(engine.generate({"model": resident, "prompt": "hi", "options": {"num_predict": 1}}))[-1]["done"]


def test_model_larger_than_the_card_is_refused_before_evicting(tiny_twin: Callable[..., Path],
                                                               tmp_path: Path) -> None:
    """The fit check: weights beyond the card's whole CMM pool are refused while the resident model stays."""
    from ax_llm_provider.engine.ops.health import HealthConfig
    from ax_llm_provider.model.checksums import record_checksums
    from ax_llm_provider.model.errors import ModelTooLargeError
    from ax_llm_provider.runtime.simcard import SimCard

    resident = str(tiny_twin("llama", decode_capacity=255, prefill_chunk=32, prefill_histories=(0, 32)))
    huge = Path(_broken_copy(tiny_twin("llama", seed=1, decode_capacity=255, prefill_chunk=32,
                                       prefill_histories=(0, 32)), tmp_path / "huge", "none"))
    with next(huge.rglob("*_post.onnx")).open("r+b") as post:
        post.truncate(80 << 20)  # sparse: 80 MB of weights on a 64 MB card, without writing them
    record_checksums(huge)  # a consistent model that is simply too big, not a damaged one
    card = SimCard(cmm_total_bytes=64 << 20)
    with Engine(ModelStore(tmp_path / "store"), backend="simulated", card=card, keep_alive=-1, auto_pull=False,
                max_loaded_models=1, health=HealthConfig(period_s=0, cmm_floor_mb=0)) as engine:
        list(engine.generate({"model": resident, "prompt": "hi", "options": {"num_predict": 1}}))
        ((name, entry),) = engine.slots.entries()

        with pytest.raises(ModelTooLargeError, match="80 MB but the card's CMM pool is 64 MB"):
            list(engine.generate({"model": str(huge), "prompt": "hi", "options": {"num_predict": 1}}))

        assert engine.slots.get(name) is entry, "the resident model was unloaded for a model that cannot fit"
        last = list(engine.generate({"model": resident, "prompt": "hi", "options": {"num_predict": 1}}))[-1]
        assert last["done"] and last.get("load_duration", 0) == 0
