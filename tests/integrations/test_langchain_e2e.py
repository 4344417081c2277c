"""ChatAXOllama and AXOllamaLLM end to end on the embedded SmolLM2-135M (CPU twin): an LCEL chain, an
agent loop, generate semantics, the ChatOllama example program; tool-message histories on a tiny
random twin whose chat template has tool syntax."""

from __future__ import annotations

import asyncio
import difflib
import runpy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ollama
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tools import tool

from ax_llm_provider.engine.default import set_engine
from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.integrations.langchain import AXOllamaLLM, ChatAXOllama
from ax_llm_provider.model.store import ModelStore
from tests.conftest import SMOLLM2

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
AX_IMPORT = "from ax_llm_provider.integrations.langchain import ChatAXOllama"


@pytest.fixture
def chat(smollm2_engine: Engine) -> ChatAXOllama:
    return ChatAXOllama(model=SMOLLM2, temperature=0, num_predict=16, engine=smollm2_engine)


def test_lcel_chain(chat: ChatAXOllama) -> None:
    prompt = ChatPromptTemplate.from_messages([("system", "You are a helpful assistant. Answer briefly."),
                                               ("human", "What is the capital of {country}?")])
    chain = prompt | chat | StrOutputParser()
    answer = chain.invoke({"country": "France"})
    assert isinstance(answer, str) and answer.strip()
    streamed = list(chain.stream({"country": "France"}))
    assert "".join(streamed) == answer  # temperature 0, same prompt: same text, now in pieces
    assert all(isinstance(a, str) and a for a in chain.batch([{"country": "Italy"}, {"country": "Spain"}]))


@tool
def get_weather(location: str) -> str:
    """Get the current weather at a location."""
    return f"It's sunny in {location}."


def test_agent_loop_with_a_forced_first_call(chat: ChatAXOllama) -> None:
    """A tool-using loop on a model that does not call tools by itself: the first turn forces a call
    (tool_choice "any", a grammar in the engine), the answer turn turns tools off ("none")."""
    chat = chat.model_copy(update={"num_predict": 64})  # room for the whole call
    question = HumanMessage("What is the weather in Paris?")
    first = chat.bind_tools([get_weather], tool_choice="any").invoke([question])
    assert isinstance(first, AIMessage) and len(first.tool_calls) == 1
    call = first.tool_calls[0]
    assert call["name"] == "get_weather" and isinstance(call["args"].get("location"), str) and call["id"]
    result = get_weather.invoke(call)
    assert isinstance(result, ToolMessage) and result.tool_call_id == call["id"]
    final = chat.bind_tools([get_weather], tool_choice="none").invoke([question, first, result])
    assert isinstance(final, AIMessage) and final.text.strip() and not final.tool_calls


# ---- tool-message histories on a twin whose template has tool syntax -------------------------------

@pytest.fixture(scope="module")
def tools_engine(tiny_twin: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A random-weight qwen2 twin (chat template with <tool_call> syntax) in its own store."""
    root = tmp_path_factory.mktemp("tools-store")
    (root / "tiny-qwen2").mkdir()
    (root / "tiny-qwen2" / "0").symlink_to(tiny_twin("qwen2"), target_is_directory=True)
    engine = Engine(ModelStore(root), backend="onnx", keep_alive=-1, auto_pull=False)
    yield engine
    engine.close()


@tool
def my_adder_tool(a: int, b: int) -> int:
    """Tool that adds two integers."""
    return a + b


HISTORIES = {
    "string content": [
        HumanMessage("What is 1 + 2"),
        AIMessage("", tool_calls=[{"name": "my_adder_tool", "args": {"a": 1, "b": 2}, "id": "abc123",
                                   "type": "tool_call"}]),
        ToolMessage('{"result": 3}', name="my_adder_tool", tool_call_id="abc123"),
    ],
    "list content": [
        HumanMessage("What is 1 + 2"),
        AIMessage([{"type": "text", "text": "some text"},
                   {"type": "tool_use", "id": "abc123", "name": "my_adder_tool", "input": {"a": 1, "b": 2}}],
                  tool_calls=[{"name": "my_adder_tool", "args": {"a": 1, "b": 2},
                               "id": "abc123", "type": "tool_call"}]),
        ToolMessage('{"result": 3}', tool_call_id="abc123"),  # no name: found through the tool call id
    ],
    "error status": [
        SystemMessage("You add numbers."),
        HumanMessage("What is 1 + 2"),
        AIMessage("", tool_calls=[{"name": "my_adder_tool", "args": {"a": 1}, "id": "abc123", "type": "tool_call"}]),
        ToolMessage("Error: Missing required argument 'b'.", name="my_adder_tool", tool_call_id="abc123",
                    status="error"),
    ],
}


@pytest.mark.parametrize("history", list(HISTORIES))
def test_tool_message_histories_reach_a_tools_template(tools_engine: Engine, history: str) -> None:
    llm = ChatAXOllama(model="tiny-qwen2:0", temperature=0, num_predict=4, engine=tools_engine)
    result = llm.bind_tools([my_adder_tool]).invoke(HISTORIES[history])
    assert isinstance(result, AIMessage)
    assert result.usage_metadata is not None and result.usage_metadata["input_tokens"] > 20


# ---- errors, reasoning ---------------------------------------------------------------------------------

def test_engine_errors_arrive_as_ollama_response_errors(chat: ChatAXOllama) -> None:
    with pytest.raises(ollama.ResponseError, match="does not support thinking") as info:
        chat.invoke("hi", reasoning=True)  # SmolLM2 cannot think: Ollama's 400
    assert info.value.status_code == 400
    assert chat.invoke("hi", reasoning=False).text  # think=false is accepted everywhere
    with pytest.raises(ollama.ResponseError) as missing:
        chat.invoke("hi", model="nosuchmodel:1b")
    assert missing.value.status_code == 404


# ---- AXOllamaLLM: /api/generate semantics --------------------------------------------------------------

def test_llm_generate_semantics(smollm2_engine: Engine) -> None:
    llm = AXOllamaLLM(model=SMOLLM2, temperature=0, num_predict=12, engine=smollm2_engine)
    result = llm.generate(["Name a color."], system="You answer with one word.")
    generation = result.generations[0][0]
    info = generation.generation_info or {}
    assert generation.text.strip() and info["done"] is True and info["eval_count"] >= 1
    assert info["model_name"] == SMOLLM2 and isinstance(info["context"], list) and info["context"]
    follow_up = llm.invoke("And another one?", context=info["context"])  # continues the conversation
    assert follow_up.strip()
    raw = llm.invoke("<|im_start|>user\nSay yes.<|im_end|>\n<|im_start|>assistant\n", raw=True)
    assert raw.strip()
    assert "".join(llm.stream("Name a fruit.")).strip()
    assert asyncio.run(llm.ainvoke("Name a fruit.")).strip()


# ---- the ChatOllama program, unchanged but for the import and the class name ---------------------------

def test_example_differs_from_the_chatollama_program_only_in_import_and_class() -> None:
    original = (EXAMPLES / "langchain_chatollama_original.py").read_text().splitlines()
    ours = (EXAMPLES / "langchain_chatollama_example.py").read_text().splitlines()
    changed = [line for line in difflib.unified_diff(original, ours, lineterm="", n=0)
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert changed == ["-from langchain_ollama import ChatOllama", f"+{AX_IMPORT}",
                       "-llm = ChatOllama(", "+llm = ChatAXOllama("]


def test_example_runs_on_chataxollama(smollm2_engine: Engine, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EXAMPLE_NUM_PREDICT", "24")  # the installation's 100, shortened for the test
    previous = set_engine(smollm2_engine)
    try:
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(EXAMPLES / "langchain_chatollama_example.py"), run_name="__main__")
    finally:
        set_engine(previous)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0
    assert "LLM error" not in err, err
    assert out.count("lantern: ") == 2 and "lantern (streamed): " in out


def _options_of(module: dict[str, Any]) -> dict[str, Any]:
    llm = module["llm"]
    return {k: getattr(llm, k) for k in ("num_predict", "temperature", "top_k", "top_p", "repeat_penalty",
                                         "repeat_last_n", "stop", "keep_alive", "reasoning")}


def test_example_uses_the_installation_options() -> None:
    module = runpy.run_path(str(EXAMPLES / "langchain_chatollama_example.py"))
    assert _options_of(module) == {"num_predict": 100, "temperature": 0.99, "top_k": 85, "top_p": 0.9,
                                   "repeat_penalty": 1.5, "repeat_last_n": 64, "stop": ["#", "["],
                                   "keep_alive": -1, "reasoning": False}
