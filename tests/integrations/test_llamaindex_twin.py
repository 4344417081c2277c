"""AXOllama on a random-weight qwen2 twin whose chat template has tool syntax (<tool_call>, hermes family).

SmolLM2's template has none, so the native path (tool_choice "auto" left to the model, tool histories
rendered by the template) is exercised here; the words are random, the request plumbing is real.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from llama_index.core.base.llms.types import ChatMessage, ToolCallBlock
from llama_index.core.tools import FunctionTool

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.integrations.llamaindex import AXOllama
from ax_llm_provider.model.store import ModelStore

pytestmark = pytest.mark.timeout(240)
MODEL = "tiny-qwen2:0"


@pytest.fixture(scope="module")
def tools_engine(tiny_twin: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    root = tmp_path_factory.mktemp("li-tools-store")
    (root / "tiny-qwen2").mkdir()
    (root / "tiny-qwen2" / "0").symlink_to(tiny_twin("qwen2"), target_is_directory=True)
    engine = Engine(ModelStore(root), backend="onnx", keep_alive=-1, auto_pull=False)
    yield engine
    engine.close()


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_native_tools_template(tools_engine: Engine) -> None:
    llm = AXOllama(model=MODEL, temperature=0, additional_kwargs={"num_predict": 4}, engine=tools_engine,
                   emulate_tool_choice=False)
    assert llm.supports_native_tools and llm.metadata.is_function_calling_model
    assert llm.metadata.context_window == tools_engine.show(MODEL)["model_info"]["qwen2.context_length"]
    tool = FunctionTool.from_defaults(fn=add)
    history = [
        ChatMessage(role="user", content="What is 1 + 2?"),
        ChatMessage(role="assistant", blocks=[ToolCallBlock(tool_call_id="call_x", tool_name="add",
                                                            tool_kwargs={"a": 1, "b": 2})]),
        ChatMessage(role="tool", content="3", additional_kwargs={"tool_call_id": "call_x"}),
    ]
    response = llm.chat_with_tools([tool], chat_history=history)  # "auto": accepted by a tools template
    assert response.raw["prompt_eval_count"] > 40 and response.raw["done"]


def test_forced_call_by_name_on_a_tools_template(tools_engine: Engine) -> None:
    llm = AXOllama(model=MODEL, temperature=0, additional_kwargs={"num_predict": 96}, engine=tools_engine)
    tool = FunctionTool.from_defaults(fn=add)
    response = llm.chat_with_tools([tool], user_msg="What is 1 + 2?", tool_choice="add")
    [selection] = llm.get_tool_calls_from_response(response)
    assert selection.tool_name == "add" and selection.tool_id.startswith("call_")
    assert set(selection.tool_kwargs) == {"a", "b"} and all(isinstance(v, int) for v in selection.tool_kwargs.values())
