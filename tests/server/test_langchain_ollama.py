"""langchain-ollama's ChatOllama / OllamaLLM / OllamaEmbeddings pointed at the server answer like the
in-process ChatAXOllama on the same SmolLM2 engine (temperature 0: the same text, the same token counts).
The rest of ChatOllama's behaviour is the standard suite in test_langchain_standard_server.py."""

from __future__ import annotations

import asyncio

import numpy as np
import ollama
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool
from langchain_ollama import ChatOllama, OllamaEmbeddings, OllamaLLM
from pydantic import BaseModel

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.integrations.langchain import ChatAXOllama
from ax_llm_provider.ollama import Client as InProcessClient
from tests.conftest import SMOLLM2

pytestmark = [pytest.mark.golden, pytest.mark.timeout(240)]

MESSAGES = [SystemMessage("You are a helpful assistant. Answer briefly."),
            HumanMessage("What is the capital of Italy?")]


@pytest.fixture(scope="module")
def remote(smollm2_url: str) -> ChatOllama:
    return ChatOllama(model=SMOLLM2, base_url=smollm2_url, temperature=0, num_predict=12)


@pytest.fixture(scope="module")
def here(smollm2_engine: Engine) -> ChatAXOllama:
    return ChatAXOllama(model=SMOLLM2, engine=smollm2_engine, temperature=0, num_predict=12)


def test_invoke_stream_async_match_in_process(remote: ChatOllama, here: ChatAXOllama) -> None:
    answer, expected = remote.invoke(MESSAGES), here.invoke(MESSAGES)
    assert isinstance(answer, AIMessage) and answer.text
    assert answer.text == expected.text
    counts = ("input_tokens", "output_tokens", "total_tokens")  # ChatOllama reports no cache_read detail
    assert answer.usage_metadata and expected.usage_metadata
    assert [answer.usage_metadata[k] for k in counts] == [expected.usage_metadata[k] for k in counts]
    assert answer.response_metadata["model_name"] == SMOLLM2
    assert answer.response_metadata["done_reason"] == expected.response_metadata["done_reason"]
    streamed = [c.text for c in remote.stream(MESSAGES)]
    assert len(streamed) > 2 and "".join(streamed) == expected.text

    async def both() -> tuple[str, str]:
        single = await remote.ainvoke(MESSAGES)
        parts = [c.text async for c in remote.astream(MESSAGES)]
        return single.text, "".join(parts)

    assert asyncio.run(both()) == (expected.text, expected.text)


class Capital(BaseModel):
    country: str
    capital: str


def test_json_mode_and_structured_output(remote: ChatOllama, here: ChatAXOllama) -> None:
    ask = [HumanMessage("Give the capital of Italy as JSON with keys country and capital.")]
    longer = {"num_predict": 32}
    as_json = remote.model_copy(update={"format": "json", **longer}).invoke(ask)
    assert as_json.text == here.model_copy(update={"format": "json", **longer}).invoke(ask).text
    structured = remote.model_copy(update=longer).with_structured_output(Capital, method="json_schema").invoke(ask)
    assert isinstance(structured, Capital)
    expected = here.model_copy(update=longer).with_structured_output(Capital, method="json_schema").invoke(ask)
    assert structured == expected


def test_errors_reach_chatollama_as_response_errors(remote: ChatOllama) -> None:
    with pytest.raises(ollama.ResponseError) as missing:
        remote.invoke("hi", model="nosuch:1b")
    assert missing.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as thinking:
        remote.model_copy(update={"reasoning": True}).invoke("hi")
    assert thinking.value.status_code == 400 and "does not support thinking" in thinking.value.error


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"It is sunny in {city}."


@pytest.mark.xfail(raises=AssertionError, strict=False, reason=(
    "measured: no tool call. ChatOllama.bind_tools ignores tool_choice (Ollama has none), so the request is "
    "tool_choice 'auto' and SmolLM2-135M answers in prose (its judgment); ChatAXOllama sends tool_choice='any' "
    "and gets the call"))
def test_bind_tools(remote: ChatOllama) -> None:
    answer = remote.bind_tools([get_weather], tool_choice="any").invoke("What is the weather in Paris?")
    assert answer.tool_calls


def test_ollama_llm_and_embeddings(smollm2_url: str, smollm2_engine: Engine) -> None:
    llm = OllamaLLM(model=SMOLLM2, base_url=smollm2_url, temperature=0, num_predict=8)
    local = InProcessClient(engine=smollm2_engine)
    text = llm.invoke("Name a color.")
    assert text == local.generate(model=SMOLLM2, prompt="Name a color.",
                                  options={"temperature": 0, "num_predict": 8}).response
    embeddings = OllamaEmbeddings(model="all-minilm:l6-v2", base_url=smollm2_url)
    vectors = embeddings.embed_documents(["a cat", "a dog"])
    np.testing.assert_allclose(vectors, local.embed(model="all-minilm:l6-v2", input=["a cat", "a dog"]).embeddings,
                               atol=1e-6)
    assert len(embeddings.embed_query("a cat")) == 384
