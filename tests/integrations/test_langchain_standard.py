"""langchain-tests' ChatModelIntegrationTests for ChatAXOllama on the embedded SmolLM2-135M (CPU twin).

Temperature 0 and num_predict 16 (48-96 for tests whose answer is a JSON object: a schema-constrained
answer or a forced tool call) keep the suite within a few minutes on two shared cores.

SmolLM2's chat template has no tool syntax: its tools go through the engine's generic tools prompt
(tools in the system turn, `<tool_call>` JSON calls), so every tool test runs. Expected failures are
marked `xfail(strict=False)` with what was measured when running them:
- test_agent_loop: with tool_choice "auto" the 135M model answers the weather question in prose
  instead of calling get_weather (its judgment, not the plumbing: the request, prompt and parser are
  the same as for a forced call). `test_agent_loop_forced` runs the same loop with tool_choice "any"
  on the first turn and passes.
- json mode: `format="json"` gives valid JSON but fixes no keys; SmolLM2-135M answers
  {"setup": "..."} without "punchline" (pydantic ValidationError -> OutputParserException).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_tests.integration_tests import ChatModelIntegrationTests

from ax_llm_provider.engine.default import set_engine
from ax_llm_provider.integrations.langchain import ChatAXOllama
from tests.conftest import SMOLLM2

NUM_PREDICT = 16
# Tests whose answer is a JSON object need room for it: a forced tool call must fit whole (a cut call
# leaks into content); a schema-constrained answer is closed by the engine within num_predict (with a
# warning in response_metadata["ax"]), so it only needs room for the required keys.
_STRUCTURED, _TOOL_CALL = 32, 48
LONG_ANSWER_TESTS = {
    **dict.fromkeys(["test_structured_output", "test_structured_output_async", "test_structured_output_pydantic_2_v1",
                     "test_structured_output_optional_param", "test_json_mode"], _STRUCTURED),
    **dict.fromkeys(["test_tool_calling", "test_tool_calling_async", "test_tool_calling_with_no_arguments",
                     "test_tool_choice", "test_bind_runnables_as_tools", "test_unicode_tool_call_integration",
                     "test_structured_few_shot_examples", "test_agent_loop", "test_agent_loop_forced"], _TOOL_CALL),
}

NO_AUTO_CALL = ("measured: with tool_choice 'auto' SmolLM2-135M answers 'What is the weather in San Francisco, CA?' "
                "in prose, without calling get_weather (AssertionError: no tool_call block); the same loop with a "
                "forced first call passes (test_agent_loop_forced)")
NO_JSON_KEYS = ("measured: format='json' yields valid JSON but fixes no keys; SmolLM2-135M answers "
                "{'setup': ...} without 'punchline' (ValidationError -> OutputParserException)")
OUTPUT_VERSIONS = [{}, {"output_version": "v1"}]


def _mark_async_tests(cls: type) -> type:
    """The project runs pytest-asyncio in strict mode: mark the suite's coroutine tests (in place, so the
    standard-test identity check still sees the inherited ones as not overridden)."""
    for name in dir(cls):
        func = getattr(cls, name)
        marked = any(m.name == "asyncio" for m in getattr(func, "pytestmark", []))
        if name.startswith("test_") and inspect.iscoroutinefunction(func) and not marked:
            pytest.mark.asyncio(func)
    return cls


@pytest.fixture(scope="module", autouse=True)
def _shared_engine(smollm2_engine: Any) -> Iterator[None]:
    """Models the suite builds itself (no engine= argument) use the session's SmolLM2 engine."""
    previous = set_engine(smollm2_engine)
    yield
    set_engine(previous)


@_mark_async_tests
class TestChatAXOllamaIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatAXOllama]:
        return ChatAXOllama

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": SMOLLM2, "temperature": 0, "num_predict": NUM_PREDICT}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        return {"temperature": 0, "max_tokens": NUM_PREDICT, "timeout": 60, "stop": [], "max_retries": 2}

    @pytest.fixture
    def model(self, request: Any) -> BaseChatModel:
        params = {**self.standard_chat_model_params, **self.chat_model_params,
                  **(getattr(request, "param", None) or {})}
        if request.node.originalname in LONG_ANSWER_TESTS:
            params["num_predict"] = params["max_tokens"] = LONG_ANSWER_TESTS[request.node.originalname]
        return self.chat_model_class(**params)

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True  # bind_tools(tool_choice=...) reaches the engine as the request's tool_choice

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def structured_output_kwargs(self) -> dict[str, Any]:
        return {"method": "json_schema"}

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supported_usage_metadata_details(self) -> dict[str, list[str]]:
        return {"invoke": ["cache_read_input"], "stream": ["cache_read_input"]}

    @property
    def model_override_value(self) -> str:
        return "smollm2"  # resolves to the stored smollm2:135m, whose name contains it

    def invoke_with_cache_read_input(self, *, stream: bool = False) -> AIMessage:
        """The same conversation twice: the second call reuses the first one's KV prefix."""
        llm = ChatAXOllama(**self.chat_model_params)
        messages = [SystemMessage("You are a terse assistant. " * 8), HumanMessage("Say hi.")]
        llm.invoke(messages)
        if not stream:
            return llm.invoke(messages)
        full = None
        for chunk in llm.stream(messages):
            full = chunk if full is None else full + chunk
        assert isinstance(full, AIMessage)
        return full

    # ---- tools with tool_choice "auto": the 135M model's judgment --------------------------------------

    @pytest.mark.parametrize("model", OUTPUT_VERSIONS, indirect=True)
    @pytest.mark.xfail(raises=AssertionError, strict=False, reason=NO_AUTO_CALL)
    def test_agent_loop(self, model: BaseChatModel) -> None:
        super().test_agent_loop(model)

    @pytest.mark.parametrize("model", OUTPUT_VERSIONS, indirect=True)
    def test_agent_loop_forced(self, model: BaseChatModel) -> None:
        """test_agent_loop's case with the first call forced (tool_choice "any"); the answer to the tool
        result goes through the same generic tools prompt with tool_choice "auto"."""

        @tool
        def get_weather(location: str) -> str:  # noqa: ARG001
            """Get the weather at a location."""
            return "It's sunny."

        question = HumanMessage("What is the weather in San Francisco, CA?")
        call_message = model.bind_tools([get_weather], tool_choice="any").invoke([question])
        assert isinstance(call_message, AIMessage) and len(call_message.tool_calls) == 1
        assert any(block["type"] == "tool_call" for block in call_message.content_blocks)
        tool_message = get_weather.invoke(call_message.tool_calls[0])
        assert isinstance(tool_message, ToolMessage)
        answer = model.bind_tools([get_weather]).invoke([question, call_message, tool_message])
        assert isinstance(answer, AIMessage)

    # ---- json mode: no keys are enforced -------------------------------------------------------------

    @pytest.mark.xfail(strict=False, reason=NO_JSON_KEYS)
    def test_json_mode(self, model: BaseChatModel) -> None:
        super().test_json_mode(model)
