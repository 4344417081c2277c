"""AXOllama on the embedded SmolLM2-135M (CPU twin): metadata, chat paths, structured outputs, tools, an agent.

Temperature 0 throughout. Measured on the CPU twin (2 shared cores): structured_predict 20/20 valid
Person objects (19/20 with every value exactly as in the text: the model wrote 'Xiaoming Chen' for
'Chen'); the FunctionAgent calls its tool with {"person": "Dana"} and answers "The locker code of
Dana is 4417." SmolLM2's ChatML template has no tool syntax, so the agent's calls go through
AXOllama's emulated tool choice (a forced call after the user turn, "none" after the tool result).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import ollama
import pytest
from llama_index.core.agent.workflow import AgentOutput, FunctionAgent, ToolCallResult
from llama_index.core.base.llms.types import ChatMessage, ToolCallBlock
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from pydantic import BaseModel

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.integrations.llamaindex import AXOllama
from tests.conftest import SMOLLM2

pytestmark = [pytest.mark.golden, pytest.mark.slow, pytest.mark.timeout(240)]


class Person(BaseModel):
    name: str
    age: int
    city: str


PEOPLE = [("Ada", 36, "London"), ("Bruno", 52, "Rome"), ("Chen", 29, "Shanghai"), ("Dalia", 41, "Cairo"),
          ("Emil", 67, "Oslo"), ("Fatou", 23, "Dakar"), ("Goran", 38, "Zagreb"), ("Hana", 19, "Kyoto"),
          ("Ivo", 45, "Lisbon"), ("Jana", 31, "Prague"), ("Kofi", 58, "Accra"), ("Lena", 27, "Berlin"),
          ("Mateo", 33, "Lima"), ("Nora", 70, "Dublin"), ("Omar", 48, "Amman"), ("Priya", 26, "Pune"),
          ("Quinn", 39, "Boston"), ("Rosa", 62, "Seville"), ("Sven", 44, "Malmo"), ("Tuyet", 35, "Hanoi")]
EXTRACT = PromptTemplate("Extract the person from the text as JSON with name, age and city.\nText: {text}")


@pytest.fixture(scope="module")
def engine(smollm2_engine: Engine) -> Iterator[Engine]:
    yield smollm2_engine


@pytest.fixture(scope="module")
def llm(engine: Engine) -> AXOllama:
    return AXOllama(model=SMOLLM2, temperature=0, engine=engine)


def test_metadata_is_the_compiled_capacity_and_template_capabilities(llm: AXOllama, engine: Engine) -> None:
    meta = llm.metadata  # loads the model: show() reports capacity and capabilities of a loaded model
    show = engine.show(SMOLLM2)
    arch = show["model_info"]["general.architecture"]
    assert meta.context_window == show["model_info"][f"{arch}.context_length"]
    assert meta.context_window < show["model_info"][f"{arch}.trained_context_length"]  # 2047 < 8192
    assert meta.is_chat_model and meta.is_function_calling_model and meta.model_name == SMOLLM2
    assert "tools" in show["capabilities"]  # every chat model takes tools; SmolLM2 through the generic prompt
    assert llm.supports_native_tools is (show["model_info"]["ax.tool_format"] == "template")


def test_chat_stream_and_async_agree(llm: AXOllama) -> None:
    messages = [ChatMessage(role="user", content="What is the capital of France?")]
    response = llm.chat(messages, num_predict=16)
    assert "Paris" in response.message.content
    assert response.raw["usage"]["completion_tokens"] == response.raw["eval_count"] <= 16
    assert response.raw["ax"]["backend"] == "onnx"
    streamed = list(llm.stream_chat(messages, num_predict=16))
    assert "".join(r.delta or "" for r in streamed) == streamed[-1].message.content == response.message.content

    async def run() -> str:
        return (await llm.acomplete("What is the capital of France?", num_predict=16)).text

    assert asyncio.run(run()) == response.message.content


def test_thinking_on_a_model_without_it_is_ollamas_400(llm: AXOllama) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        llm.chat([ChatMessage(role="user", content="hi")], think=True)
    assert info.value.status_code == 400 and "does not support thinking" in str(info.value)


def test_structured_predict_20_of_20(llm: AXOllama) -> None:
    results = [llm.structured_predict(Person, EXTRACT, text=f"{n} is {a} years old and lives in {c}.")
               for n, a, c in PEOPLE]
    assert all(isinstance(p, Person) for p in results)  # 20/20 validated objects (the grammar's guarantee)
    exact = sum((p.name, p.age, p.city) == person for p, person in zip(results, PEOPLE, strict=True))
    assert exact >= 18, f"only {exact}/20 extractions match the text exactly: {results}"


def test_stream_and_async_structured_predict(llm: AXOllama) -> None:
    partials = list(llm.stream_structured_predict(Person, EXTRACT, text="Bruno is 52 years old and lives in Rome."))
    assert partials[-1] == Person(name="Bruno", age=52, city="Rome")
    assert asyncio.run(llm.astructured_predict(Person, EXTRACT, text="Ada is 36 years old and lives in London.")) \
        == Person(name="Ada", age=36, city="London")


def get_locker_code(person: str) -> str:
    """Look up the locker code of a person, given the person's name."""
    return f"The locker code of {person} is 4417."


def test_chat_with_tools_forces_one_call(llm: AXOllama) -> None:
    tool = FunctionTool.from_defaults(fn=get_locker_code)
    response = llm.chat_with_tools([tool], user_msg="What is the locker code of Dana?")
    [selection] = llm.get_tool_calls_from_response(response)
    assert selection.tool_name == "get_locker_code" and selection.tool_kwargs == {"person": "Dana"}
    assert selection.tool_id.startswith("call_")
    assert [b.tool_call_id for b in response.message.blocks if isinstance(b, ToolCallBlock)] == [selection.tool_id]


def test_function_agent_calls_its_tool_and_answers(engine: Engine) -> None:
    llm = AXOllama(model=SMOLLM2, temperature=0, additional_kwargs={"num_predict": 48}, engine=engine)
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(fn=get_locker_code)], llm=llm,
                          system_prompt="You answer questions using the tools.")

    async def run() -> tuple[list[ToolCallResult], Any]:
        handler = agent.run(user_msg="What is the locker code of Dana?")
        calls = [ev async for ev in handler.stream_events() if isinstance(ev, ToolCallResult)]
        return calls, await handler

    calls, output = asyncio.run(run())
    assert [(c.tool_name, c.tool_kwargs) for c in calls] == [("get_locker_code", {"person": "Dana"})]
    assert isinstance(output, AgentOutput)
    assert "4417" in str(output.response.content)
