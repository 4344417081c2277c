"""The real `openai` client against the server's /v1 endpoints, on the session's SmolLM2 engine: answers
equal the in-process Client's on the same engine (temperature 0), errors carry OpenAI's error object.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.ollama import Client as InProcessClient
from tests.conftest import SMOLLM2

pytestmark = [pytest.mark.golden, pytest.mark.timeout(300)]

MINILM = "all-minilm:l6-v2"
HI = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY: dict[str, Any] = {"temperature": 0, "max_tokens": 12}
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def client(smollm2_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{smollm2_url}/v1", api_key="unused", max_retries=0, timeout=240)


@pytest.fixture(scope="module")
def local(smollm2_engine: Engine) -> InProcessClient:
    return InProcessClient(engine=smollm2_engine)


def _local_chat(local: InProcessClient, **kwargs: Any) -> Any:
    return local.chat(model=SMOLLM2, messages=kwargs.pop("messages", HI),
                      options={"temperature": 0, "top_p": 1.0, "num_predict": 12, **kwargs.pop("options", {})},
                      **kwargs)


def test_chat_equals_the_in_process_answer(client: openai.OpenAI, local: InProcessClient) -> None:
    answer = client.chat.completions.create(model=SMOLLM2, messages=HI, **GREEDY)
    here = _local_chat(local)
    choice = answer.choices[0]
    assert answer.object == "chat.completion" and answer.id.startswith("chatcmpl-") and answer.model == SMOLLM2
    assert choice.message.role == "assistant" and choice.message.content == here.message.content
    assert choice.finish_reason == here.done_reason and not choice.message.tool_calls
    assert answer.usage is not None and answer.usage.completion_tokens == here.eval_count
    assert answer.usage.prompt_tokens == here.prompt_eval_count
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    single = client.chat.completions.create(model=SMOLLM2, messages=HI, **GREEDY)
    events = list(client.chat.completions.create(model=SMOLLM2, messages=HI, stream=True,
                                                 stream_options={"include_usage": True}, **GREEDY))
    text = "".join(e.choices[0].delta.content or "" for e in events if e.choices)
    assert text == single.choices[0].message.content and len(events) > 3
    assert len({e.id for e in events}) == 1 and all(e.object == "chat.completion.chunk" for e in events)
    finishes = [e.choices[0].finish_reason for e in events if e.choices]
    assert finishes[-1] == single.choices[0].finish_reason and not any(finishes[:-1])
    assert events[-1].choices == [] and events[-1].usage == single.usage  # the usage event comes last
    assert all(e.usage is None for e in events[:-1])
    plain = list(client.chat.completions.create(model=SMOLLM2, messages=HI, stream=True, **GREEDY))
    assert all(e.usage is None for e in plain) and plain[-1].choices[0].finish_reason == finishes[-1]


def test_stop_seed_and_sampling_options(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model=SMOLLM2, messages=HI, **GREEDY).choices[0].message.content or ""
    word = full.split()[1]
    stopped = client.chat.completions.create(model=SMOLLM2, messages=HI, stop=[word], **GREEDY).choices[0]
    assert stopped.finish_reason == "stop" and word not in (stopped.message.content or "")
    assert full.startswith(stopped.message.content or "")
    sampled = [client.chat.completions.create(model=SMOLLM2, messages=HI, temperature=1.0, seed=7, max_tokens=8,
                                              frequency_penalty=0.5, presence_penalty=0.5)
               .choices[0].message.content for _ in range(2)]
    assert sampled[0] == sampled[1]  # a fixed seed reproduces a sampled answer
    capped = client.chat.completions.create(model=SMOLLM2, messages=HI, temperature=0, max_completion_tokens=3)
    assert capped.usage is not None and capped.usage.completion_tokens == 3


def test_response_format_json_object_and_schema(client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "Describe a cat as JSON with keys name and age."}]
    loose = client.chat.completions.create(model=SMOLLM2, messages=ask, temperature=0, max_tokens=40,
                                           response_format={"type": "json_object"})
    assert isinstance(json.loads(loose.choices[0].message.content or ""), dict | list)
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    typed = client.chat.completions.create(
        model=SMOLLM2, messages=ask, temperature=0, max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "cat", "schema": schema, "strict": True}})
    value = json.loads(typed.choices[0].message.content or "")
    assert isinstance(value["name"], str) and isinstance(value["age"], int)


def test_forced_tool_calls_in_openai_shape(client: openai.OpenAI, local: InProcessClient) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    for choice in ("required", named):
        answer = client.chat.completions.create(model=SMOLLM2, messages=WEATHER, tools=[WEATHER_TOOL],
                                                tool_choice=choice, temperature=0, max_tokens=48)
        message = answer.choices[0].message
        assert answer.choices[0].finish_reason == "tool_calls" and message.tool_calls
        call = message.tool_calls[0]
        assert call.type == "function" and call.id and call.function.name == "get_weather"
        assert isinstance(json.loads(call.function.arguments)["city"], str)
    here = _local_chat(local, messages=WEATHER, tools=[WEATHER_TOOL], tool_choice="required",
                       options={"num_predict": 48})
    assert json.loads(call.function.arguments) == here.message.tool_calls[0].function.arguments
    events = list(client.chat.completions.create(model=SMOLLM2, messages=WEATHER, tools=[WEATHER_TOOL],
                                                 tool_choice="required", temperature=0, max_tokens=48, stream=True))
    streamed = [c for e in events for c in e.choices[0].delta.tool_calls or []]
    assert len(streamed) == 1 and streamed[0].index == 0 and streamed[0].function.name == "get_weather"
    assert events[-1].choices[0].finish_reason == "tool_calls"


def test_auto_tools_on_a_template_without_tool_syntax(client: openai.OpenAI, local: InProcessClient) -> None:
    """SmolLM2's template has no tool syntax: tools still work (the generic tools prompt); whether it calls is
    the model's judgment, and the answer equals the in-process one."""
    answer = client.chat.completions.create(model=SMOLLM2, messages=WEATHER, tools=[WEATHER_TOOL],
                                            temperature=0, max_tokens=24)
    here = _local_chat(local, messages=WEATHER, tools=[WEATHER_TOOL], options={"num_predict": 24})
    message = answer.choices[0].message
    assert (message.content or "") == here.message.content
    assert len(message.tool_calls or []) == len(here.message.tool_calls or [])
    expected = "tool_calls" if here.message.tool_calls else here.done_reason
    assert answer.choices[0].finish_reason == expected


def test_tool_result_round_trip(client: openai.OpenAI) -> None:
    """An assistant call (arguments as a JSON string) and its result by tool_call_id: the model answers."""
    history = [*WEATHER,
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24 C"}]
    answer = client.chat.completions.create(model=SMOLLM2, messages=history, tools=[WEATHER_TOOL],
                                            tool_choice="none", temperature=0, max_tokens=24)
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls


def test_completions(client: openai.OpenAI, local: InProcessClient) -> None:
    answer = client.completions.create(model=SMOLLM2, prompt="Name a color.", temperature=0, max_tokens=6)
    here = local.generate(model=SMOLLM2, prompt="Name a color.", options={"temperature": 0, "top_p": 1.0,
                                                                          "num_predict": 6})
    assert answer.object == "text_completion" and answer.choices[0].text == here.response
    assert answer.choices[0].finish_reason == "length" and answer.usage and answer.usage.completion_tokens == 6
    parts = list(client.completions.create(model=SMOLLM2, prompt="Name a color.", temperature=0, max_tokens=6,
                                           stream=True, stream_options={"include_usage": True}))
    assert "".join(p.choices[0].text for p in parts if p.choices) == here.response
    assert parts[-1].usage is not None and parts[-1].usage.completion_tokens == 6


def test_embeddings_float_and_base64(client: openai.OpenAI, local: InProcessClient) -> None:
    texts = ["The cat sat on the mat.", "Paris is the capital of France."]
    default = client.embeddings.create(model=MINILM, input=texts)  # openai-python asks for base64 by default
    floats = client.embeddings.create(model=MINILM, input=texts, encoding_format="float")
    here = local.embed(model=MINILM, input=texts).embeddings
    assert [d.index for d in default.data] == [0, 1] and len(default.data[0].embedding) == 384
    np.testing.assert_allclose([d.embedding for d in floats.data], here, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose([d.embedding for d in default.data], here, rtol=1e-6, atol=1e-6)
    assert default.usage.prompt_tokens > 0 and default.model == MINILM
    one = client.embeddings.create(model=MINILM, input=texts[0], dimensions=64, encoding_format="float")
    assert len(one.data) == 1 and len(one.data[0].embedding) == 64


def test_models(client: openai.OpenAI) -> None:
    listed = {m.id: m for m in client.models.list()}
    assert SMOLLM2 in listed and listed[SMOLLM2].owned_by == "library" and listed[SMOLLM2].created > 0
    one = client.models.retrieve(SMOLLM2)
    assert one.id == SMOLLM2 and one.object == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nosuch:1b")


def test_errors_are_openai_error_objects(client: openai.OpenAI, smollm2_url: str) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nosuch:1b", messages=HI)
    assert "not found" in missing.value.message
    with pytest.raises(openai.BadRequestError, match="only n=1"):
        client.chat.completions.create(model=SMOLLM2, messages=HI, n=2)
    with pytest.raises(openai.BadRequestError, match="response_format"):
        client.chat.completions.create(model=SMOLLM2, messages=HI, response_format={"type": "yaml"})  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):  # before the event stream starts: the status code stays
        next(iter(client.chat.completions.create(model="nosuch:1b", messages=HI, stream=True)))
    raw = httpx.post(f"{smollm2_url}/v1/chat/completions", content=b"{not json")
    assert raw.status_code == 400
    assert set(raw.json()["error"]) == {"message", "type", "param", "code"}
    assert raw.json()["error"]["type"] == "invalid_request_error"
    assert httpx.post(f"{smollm2_url}/v1/chat/completions", json={"model": SMOLLM2, "messages": []}).status_code == 400
