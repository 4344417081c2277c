"""Issue 15 item 1: a prompt far larger than the window is refused before the tokenizer runs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.engine.errors import InvalidRequestError
from ax_llm_provider.engine.prompt_limit import BYTES_PER_TOKEN, MAX_PROMPT_ENV
from ax_llm_provider.model.store import ModelStore


@pytest.fixture(scope="module")
def twin(tiny_twin: Callable[..., Path]) -> str:
    return str(tiny_twin("llama", decode_capacity=255, prefill_chunk=32, prefill_histories=(0, 32, 64, 128)))


@pytest.fixture()
def engine(tmp_path: Path, twin: str) -> Iterator[Engine]:
    eng = Engine(ModelStore(tmp_path), backend="onnx", keep_alive=-1, auto_pull=False)
    list(eng.generate({"model": twin, "prompt": "hi", "options": {"num_predict": 1}}))
    yield eng
    eng.close()


def _forbid_tokenizing(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> int:
    ((_, entry),) = engine.slots.entries()
    tokenizer = entry.runner.model.tokenizer

    def refuse(text: str, *args: Any, **kwargs: Any) -> list[int]:
        raise AssertionError(f"the tokenizer ran on {len(text)} characters")

    monkeypatch.setattr(tokenizer, "encode", refuse)
    return int(entry.runner.capacity)


@pytest.mark.parametrize("endpoint", ["generate", "chat"])
def test_oversized_prompt_is_refused_before_tokenizing(engine: Engine, twin: str, endpoint: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    window = _forbid_tokenizing(engine, monkeypatch)
    text = "word " * (window * BYTES_PER_TOKEN // 5 + 1)
    request: dict[str, Any] = {"model": twin, "options": {"num_predict": 1}}
    if endpoint == "generate":
        request["prompt"] = text
    else:
        request["messages"] = [{"role": "user", "content": text[: len(text) // 2]},
                               {"role": "user", "content": text[len(text) // 2:]}]  # the total counts
    with pytest.raises(InvalidRequestError, match=f"context length of {window} tokens") as info:
        list(getattr(engine, endpoint)(request))
    assert info.value.status_code == 400


def test_prompt_under_the_limit_is_still_truncated_and_served(engine: Engine, twin: str) -> None:
    text = "word " * 2000  # ~8 windows of history, within 64 bytes a token
    chunks = list(engine.generate({"model": twin, "prompt": text, "options": {"num_predict": 1}}))
    assert chunks[-1]["done"] is True


def test_env_sets_one_limit(engine: Engine, twin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MAX_PROMPT_ENV, "100")
    _forbid_tokenizing(engine, monkeypatch)
    with pytest.raises(InvalidRequestError, match=MAX_PROMPT_ENV):
        list(engine.generate({"model": twin, "prompt": "é" * 51}))  # 102 bytes
