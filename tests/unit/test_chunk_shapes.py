"""The engine's chunks have exactly the keys engine/responses.py names (ChatChunk, GenerateChunk, Message)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, get_type_hints

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.engine.responses import ChatChunk, GenerateChunk, Message
from ax_llm_provider.model.store import ModelStore

OPTIONS = {"num_predict": 5, "temperature": 0}


def keys(typed: type) -> set[str]:
    return set(get_type_hints(typed))


def test_chat_and_generate_chunks_have_the_named_keys(tmp_path: Path, tiny_twin: Callable[..., Path]) -> None:
    model = str(tiny_twin("llama"))
    with Engine(ModelStore(tmp_path), backend="onnx", auto_pull=False) as engine:
        chat: list[dict[str, Any]] = list(engine.chat({
            "model": model, "messages": [{"role": "user", "content": "hi"}], "options": OPTIONS,
            "logprobs": True, "top_logprobs": 2}))
        generate: list[dict[str, Any]] = list(engine.generate({"model": model, "prompt": "hi", "options": OPTIONS}))
        load: list[dict[str, Any]] = list(engine.chat({"model": model, "messages": []}))
    for chunk in chat + load:
        assert set(chunk) <= keys(ChatChunk), set(chunk) - keys(ChatChunk)
        assert set(chunk["message"]) <= keys(Message)
    for chunk in generate:
        assert set(chunk) <= keys(GenerateChunk), set(chunk) - keys(GenerateChunk)
    assert chat[-1]["done"] and "ax" in chat[-1] and "eval_count" in chat[-1]
    assert generate[-1]["done"] and "context" in generate[-1]
    assert load[-1]["done_reason"] == "load"
