"""The package's top level: ollama's module-level functions and types, the framework classes (lazy)."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import ollama
import pytest

import ax_llm_provider
from ax_llm_provider.engine.default import set_engine
from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.model.store import ModelStore
from ax_llm_provider.model.tokenizer_info import tokenizer_arrays
from ax_llm_provider.ollama import Client, default_client


def _shape(function: object) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ax_llm_provider.MODULE_FUNCTIONS)
def test_module_functions_have_ollamas_signatures(name: str) -> None:
    ours, theirs = getattr(ax_llm_provider, name), getattr(ollama, name)
    assert ours.__self__ is default_client() and isinstance(ours.__self__, Client)
    extra = {"chat": {"tool_choice"}, "show": {"verbose"}}.get(name, set())  # supersets (forced calls, tokenizer)
    assert [p for p in _shape(ours) if p[0] not in extra] == _shape(theirs)


def test_module_functions_run_on_the_shared_engine(tmp_path: Path) -> None:
    base = tmp_path / "store" / "base" / "1b"
    base.mkdir(parents=True)
    (base / "ax_model.json").write_text(json.dumps({"format": "ax-llm-twin/1"}))
    engine = Engine(ModelStore(tmp_path / "store"), backend="onnx", auto_pull=False)
    previous = set_engine(engine)
    try:
        from ax_llm_provider import copy, create, delete, list  # noqa: A004 -- ollama's names

        assert create("x", from_="base:1b", system="S").status == "success"
        assert copy("x", "y").status == "success" and delete("x").status == "success"
        assert [m.model for m in list().models] == ["base:1b", "y:latest"]
        assert 'SYSTEM """S"""' in (ax_llm_provider.show("y").modelfile or "")
    finally:
        set_engine(previous)
        engine.close()


def test_ollama_types_and_framework_classes_at_the_top_level() -> None:
    assert ax_llm_provider.ResponseError is ollama.ResponseError and ax_llm_provider.Message is ollama.Message
    assert issubclass(ax_llm_provider.ChatResponse, ollama.ChatResponse)
    from ax_llm_provider import AXOllama, AXOllamaEmbedding, AXOllamaEmbeddings, AXOllamaLLM, ChatAXOllama
    from ax_llm_provider.integrations import langchain, llamaindex

    assert (ChatAXOllama, AXOllamaLLM, AXOllamaEmbeddings) == (
        langchain.ChatAXOllama, langchain.AXOllamaLLM, langchain.AXOllamaEmbeddings)
    assert (AXOllama, AXOllamaEmbedding) == (llamaindex.AXOllama, llamaindex.AXOllamaEmbedding)
    with pytest.raises(AttributeError):
        ax_llm_provider.NoSuchThing  # noqa: B018


@pytest.mark.spawns
def test_the_core_imports_without_the_frameworks() -> None:
    # A fresh interpreter in which the frameworks cannot be imported (None in sys.modules blocks an import).
    code = """
import sys
sys.modules["langchain_core"] = None
sys.modules["llama_index"] = None
import ax_llm_provider
assert ax_llm_provider.Client and ax_llm_provider.chat
for name, extra in (("ChatAXOllama", "langchain"), ("AXOllamaEmbedding", "llamaindex")):
    try:
        getattr(ax_llm_provider, name)
    except ImportError as exc:
        assert f'pip install "ax-llm-provider[{extra}]"' in str(exc), exc
        print(exc)
    else:
        raise AssertionError(name + " imported without its framework")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "ChatAXOllama needs LangChain" in result.stdout and "AXOllamaEmbedding needs LlamaIndex" in result.stdout


def test_tokenizer_arrays_from_tokenizer_json(tmp_path: Path) -> None:
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps({
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b", ["ab", "b"]]},
        "added_tokens": [{"id": 3, "content": "<|im_end|>", "special": True},
                         {"id": 4, "content": "<tool>", "special": False}]}))
    arrays = tokenizer_arrays(tmp_path)
    assert arrays == {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b", "ab", "<|im_end|>", "<tool>"],
                      "tokenizer.ggml.token_type": [1, 1, 1, 3, 4], "tokenizer.ggml.merges": ["a b", "ab b"]}
    assert tokenizer_arrays(tmp_path / "tok" / "missing") == {}
