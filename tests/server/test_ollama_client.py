"""The real `ollama` client against the server, on the session's SmolLM2 engine: every answer equals the
in-process `ax_llm_provider.Client`'s on the same engine (temperature 0), errors carry Ollama's codes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import numpy as np
import ollama
import pytest

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.ollama import Client as InProcessClient
from tests.conftest import SMOLLM2

pytestmark = [pytest.mark.golden, pytest.mark.timeout(240)]

MINILM = "all-minilm:l6-v2"
HI = [{"role": "user", "content": "What is the capital of France?"}]
OPTIONS = {"temperature": 0, "num_predict": 10, "top_k": 20, "repeat_penalty": 1.1,
           "mirostat": 0, "tfs_z": 1.0}  # removed options, still sent by some clients: accepted and ignored
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def http(smollm2_url: str) -> ollama.Client:
    return ollama.Client(host=smollm2_url)


@pytest.fixture(scope="module")
def local(smollm2_engine: Engine) -> InProcessClient:
    return InProcessClient(engine=smollm2_engine)


def _same(remote: Any, here: Any, text: str) -> None:
    assert getattr(remote, text) == getattr(here, text)
    for field in ("model", "done", "done_reason", "prompt_eval_count", "eval_count"):
        assert getattr(remote, field) == getattr(here, field), field


def test_chat_and_stream(http: ollama.Client, local: InProcessClient) -> None:
    remote = http.chat(model=SMOLLM2, messages=HI, options=OPTIONS)
    here = local.chat(model=SMOLLM2, messages=HI, options=OPTIONS)
    assert remote.message.content and remote.message.role == "assistant"
    assert remote.message.content == here.message.content
    _same(remote, here, "message")
    parts = list(http.chat(model=SMOLLM2, messages=HI, options=OPTIONS, stream=True))
    assert len(parts) > 2 and parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content for p in parts) == remote.message.content
    assert parts[-1].eval_count == remote.eval_count and parts[-1].total_duration > 0


def test_generate_context_and_system(http: ollama.Client, local: InProcessClient) -> None:
    kwargs: dict[str, Any] = {"model": SMOLLM2, "prompt": "Name a color.", "system": "Answer with one word.",
                              "options": {"temperature": 0, "num_predict": 6}}
    remote, here = http.generate(**kwargs), local.generate(**kwargs)
    _same(remote, here, "response")
    assert remote.context == here.context and remote.context
    follow = {"model": SMOLLM2, "prompt": "Another one.", "context": remote.context,
              "options": {"temperature": 0, "num_predict": 6}}
    _same(http.generate(**follow), local.generate(**follow), "response")
    streamed = "".join(p.response for p in http.generate(**kwargs, stream=True))
    assert streamed == remote.response


def test_options(http: ollama.Client) -> None:
    capped = http.chat(model=SMOLLM2, messages=HI, options={"temperature": 0, "num_predict": 3})
    assert (capped.eval_count, capped.done_reason) == (3, "length")
    full = http.chat(model=SMOLLM2, messages=HI, options={"temperature": 0, "num_predict": 12})
    word = full.message.content.split()[1]  # stop at the answer's second word
    stopped = http.chat(model=SMOLLM2, messages=HI, options={"temperature": 0, "num_predict": 12, "stop": [word]})
    assert stopped.done_reason == "stop" and word not in stopped.message.content
    assert full.message.content.startswith(stopped.message.content)
    seeded = [http.chat(model=SMOLLM2, messages=HI, options={"temperature": 1.0, "seed": 42, "num_predict": 6})
              .message.content for _ in range(2)]
    assert seeded[0] == seeded[1]  # a fixed seed reproduces a sampled answer


def test_format_json_and_schema(http: ollama.Client, local: InProcessClient) -> None:
    ask = [{"role": "user", "content": "Describe a cat as JSON with keys name and age."}]
    options = {"temperature": 0, "num_predict": 32}
    remote = http.chat(model=SMOLLM2, messages=ask, format="json", options=options)
    assert isinstance(json.loads(remote.message.content), dict | list)
    assert remote.message.content == local.chat(model=SMOLLM2, messages=ask, format="json",
                                                 options=options).message.content
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    typed = json.loads(http.chat(model=SMOLLM2, messages=ask, format=schema, options=options).message.content)
    assert isinstance(typed["name"], str) and isinstance(typed["age"], int)


def test_errors(http: ollama.Client, smollm2_url: str) -> None:
    cases = [
        (lambda: http.chat(model="nosuch:1b", messages=HI), 404, "not found"),
        (lambda: http.generate(model="nosuch:1b", prompt="x"), 404, "not found"),
        (lambda: http.embed(model="nosuch:1b", input="x"), 404, "not found"),
        (lambda: http.show("nosuch:1b"), 404, "not found"),
        (lambda: http.chat(model=SMOLLM2, messages=HI, options={"num_predict": "ten"}), 400,
         'option "num_predict" must be of type integer'),
        (lambda: http.chat(model=SMOLLM2, messages=HI, format={"type": 7}), 400, "invalid JSON schema"),
        (lambda: http.chat(model=SMOLLM2, messages=HI, think=True), 400, "does not support thinking"),
        (lambda: http.embed(model=SMOLLM2, input="x"), 400, "does not support embedding"),
    ]
    for call, status, fragment in cases:
        with pytest.raises(ollama.ResponseError) as info:
            call()
        assert info.value.status_code == status and fragment in info.value.error, info.value
    # the python client refuses a format string itself; over the wire it is Ollama's 400
    bad = httpx.post(f"{smollm2_url}/api/chat", json={"model": SMOLLM2, "messages": HI, "format": "yaml"})
    assert bad.status_code == 400 and "invalid format" in bad.json()["error"]
    with pytest.raises(ollama.ResponseError) as streamed:  # a stream request fails before any content
        next(iter(http.chat(model="nosuch:1b", messages=HI, stream=True)))
    assert streamed.value.status_code == 404


def test_async_client(smollm2_url: str, local: InProcessClient) -> None:
    async def run() -> tuple[str, str]:
        client = ollama.AsyncClient(host=smollm2_url)
        single = await client.chat(model=SMOLLM2, messages=HI, options=OPTIONS)
        parts = [p.message.content async for p in await client.chat(model=SMOLLM2, messages=HI, options=OPTIONS,
                                                                    stream=True)]
        return single.message.content, "".join(parts)

    single, streamed = asyncio.run(run())
    assert single == streamed == local.chat(model=SMOLLM2, messages=HI, options=OPTIONS).message.content


def test_listings(http: ollama.Client, smollm2_url: str) -> None:
    assert http.chat(model=SMOLLM2, messages=[]).done_reason == "load"  # a no-op when it is loaded already
    assert SMOLLM2 in {m.model for m in http.list().models}
    shown = http.show(SMOLLM2)
    assert shown.modelinfo["llama.context_length"] > 0 and "completion" in shown.capabilities
    running = {m.model: m for m in http.ps().models}
    assert SMOLLM2 in running and running[SMOLLM2].context_length


# ---- tools -------------------------------------------------------------------------------------------

WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_tools_answer_like_the_in_process_client(http: ollama.Client, local: InProcessClient) -> None:
    """Tools on SmolLM2 (no tool syntax in its template: the generic tools prompt) through the python
    client: the same answer over HTTP as in process, and a call written in the prompt's syntax is parsed."""
    kwargs: dict[str, Any] = {"model": SMOLLM2, "messages": WEATHER, "tools": [WEATHER_TOOL],
                              "options": {"temperature": 0, "num_predict": 24}}
    remote, here = http.chat(**kwargs), local.chat(**kwargs)
    assert remote.message.content == here.message.content and remote.message.tool_calls == here.message.tool_calls
    history = [*WEATHER, {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "Sunny, 24 C", "tool_name": "get_weather"}]
    answer = http.chat(model=SMOLLM2, messages=history, tools=[WEATHER_TOOL], options={"temperature": 0,
                                                                                      "num_predict": 24})
    assert answer.done and answer.message.role == "assistant"


def test_forced_tool_call_over_http(smollm2_url: str, local: InProcessClient) -> None:
    """The engine's tool_choice extension in the request body: whole calls in the stream, merged when not."""
    body = {"model": SMOLLM2, "messages": WEATHER, "tools": [WEATHER_TOOL], "tool_choice": "any",
            "options": {"temperature": 0, "num_predict": 48}}
    with httpx.stream("POST", f"{smollm2_url}/api/chat", json=body, timeout=120) as answer:
        chunks = [json.loads(line) for line in answer.iter_lines() if line]
    calls = [c for chunk in chunks for c in chunk["message"].get("tool_calls") or []]
    assert len(calls) == 1 and not chunks[-1]["message"].get("tool_calls")  # whole, not on the final chunk
    call = calls[0]["function"]
    assert call["name"] == "get_weather" and isinstance(call["arguments"], dict)
    assert isinstance(call["arguments"].get("city"), str)
    merged = httpx.post(f"{smollm2_url}/api/chat", json={**body, "stream": False}, timeout=120).json()
    assert [c["function"] for c in merged["message"]["tool_calls"]] == [calls[0]["function"]]
    here = local.chat(model=SMOLLM2, messages=WEATHER, tools=[WEATHER_TOOL], tool_choice="any",
                      options={"temperature": 0, "num_predict": 48})
    assert here.message.tool_calls[0].function.arguments == call["arguments"]
    parsed = ollama.ChatResponse(**merged)  # what the python client builds from it
    assert parsed.message.tool_calls[0].function.name == "get_weather"


# ---- embeddings --------------------------------------------------------------------------------------

def test_embed_and_legacy_embeddings(http: ollama.Client, local: InProcessClient, smollm2_url: str) -> None:
    texts = ["The cat sat on the mat.", "Paris is the capital of France."]
    remote = http.embed(model=MINILM, input=texts)  # pulled by the engine on first use
    here = local.embed(model=MINILM, input=texts)
    assert len(remote.embeddings) == 2 and len(remote.embeddings[0]) == 384
    np.testing.assert_allclose(remote.embeddings, here.embeddings, rtol=1e-6, atol=1e-7)
    assert abs(np.linalg.norm(remote.embeddings[0]) - 1) < 1e-5 and remote.prompt_eval_count
    single = http.embed(model=MINILM, input="The cat sat on the mat.").embeddings[0]
    np.testing.assert_allclose(single, remote.embeddings[0], atol=1e-5)
    legacy = http.embeddings(model=MINILM, prompt=texts[0])
    np.testing.assert_allclose(legacy.embedding, local.embeddings(model=MINILM, prompt=texts[0]).embedding,
                               rtol=1e-6, atol=1e-7)
    direction = np.asarray(legacy.embedding) / np.linalg.norm(legacy.embedding)
    np.testing.assert_allclose(direction, remote.embeddings[0], atol=1e-5)
    assert httpx.post(f"{smollm2_url}/api/embed", json={"model": MINILM, "input": []}).json()["embeddings"] == []
    assert httpx.post(f"{smollm2_url}/api/embeddings", json={"model": MINILM, "prompt": ""}).json() == {"embedding": []}
