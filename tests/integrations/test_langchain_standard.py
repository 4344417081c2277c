"""langchain-tests' ChatModelIntegrationTests for ChatAXOllama on the embedded SmolLM2-135M (CPU twin).

Temperature 0 and num_predict 16 (48-96 for tests whose answer is a JSON object: a schema-constrained
answer or a forced tool call) keep the suite within a few minutes on two shared cores.

Expected failures are marked `xfail(strict=False)` with what was measured when running them:
- tool_choice "auto" with tools: the engine answers `CapabilityError: smollm2:135m does not support
  tools` (HTTP 400, raised as ollama.ResponseError), by design for a chat template without tool syntax
  (SmolLM2's ChatML): forced choices ("any", a tool name) work through a grammar, "auto" is refused.
  The tool-message-history tests and test_agent_loop bind tools without a tool_choice, so they stop
  there; they are restricted to exactly that error (`raises=ResponseError`), and their conversion
  path is proven on a tools-capable twin in test_langchain_e2e.py (plus a forced-call agent loop on
  SmolLM2).
- json mode: `format="json"` gives valid JSON but fixes no keys; SmolLM2-135M answers
  {"setup": "..."} without "punchline" (pydantic ValidationError -> OutputParserException).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import ollama
import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.tools import BaseTool
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
                     "test_structured_few_shot_examples"], _TOOL_CALL),
}

NO_AUTO_TOOLS = ("measured: tools with tool_choice 'auto' -> engine CapabilityError 'smollm2:135m does not "
                 "support tools' (400, ollama.ResponseError): by engine design a chat template without tool syntax "
                 "(SmolLM2's ChatML) only takes forced tool choices; passes on a tools-capable twin "
                 "(test_langchain_e2e.py)")
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
        params = {**self.standard_chat_model_params, **self.chat_model_params, **(getattr(request, "param", None) or {})}
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

    # ---- tools with tool_choice "auto": refused by the engine for SmolLM2's template ------------------

    @pytest.mark.xfail(raises=ollama.ResponseError, strict=False, reason=NO_AUTO_TOOLS)
    def test_tool_message_histories_string_content(self, model: BaseChatModel, my_adder_tool: BaseTool) -> None:
        super().test_tool_message_histories_string_content(model, my_adder_tool)

    @pytest.mark.xfail(raises=ollama.ResponseError, strict=False, reason=NO_AUTO_TOOLS)
    def test_tool_message_histories_list_content(self, model: BaseChatModel, my_adder_tool: BaseTool) -> None:
        super().test_tool_message_histories_list_content(model, my_adder_tool)

    @pytest.mark.xfail(raises=ollama.ResponseError, strict=False, reason=NO_AUTO_TOOLS)
    def test_tool_message_error_status(self, model: BaseChatModel, my_adder_tool: BaseTool) -> None:
        super().test_tool_message_error_status(model, my_adder_tool)

    @pytest.mark.parametrize("model", OUTPUT_VERSIONS, indirect=True)
    @pytest.mark.xfail(raises=ollama.ResponseError, strict=False, reason=NO_AUTO_TOOLS)
    def test_agent_loop(self, model: BaseChatModel) -> None:
        super().test_agent_loop(model)

    # ---- json mode: no keys are enforced -------------------------------------------------------------

    @pytest.mark.xfail(strict=False, reason=NO_JSON_KEYS)
    def test_json_mode(self, model: BaseChatModel) -> None:
        super().test_json_mode(model)
