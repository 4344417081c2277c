"""OpenAI request bodies to Ollama's, and engine chunks to OpenAI objects (pure, no model)."""

from __future__ import annotations

import base64
import struct

import pytest

from ax_llm_provider.engine.errors import InvalidRequestError
from ax_llm_provider.engine.requests import parse_request
from ax_llm_provider.server.errors import BadRequest
from ax_llm_provider.server.openai_requests import (
    ChatCompletionRequest,
    CompletionRequest,
    chat_body,
    generate_body,
)
from ax_llm_provider.server.openai_responses import ChatShaper, embedding_list, error_body, model_object

HI = [{"role": "user", "content": "hi"}]


def _chat(**fields: object) -> dict:
    return chat_body(parse_request(ChatCompletionRequest, {"model": "m", "messages": HI, **fields}))


def test_sampling_defaults_and_options_follow_ollamas_layer() -> None:
    assert _chat()["options"] == {"temperature": 1.0, "top_p": 1.0}  # OpenAI's defaults, not Ollama's
    options = _chat(temperature=0.2, top_p=0.5, stop="END", seed=3, frequency_penalty=0.4, presence_penalty=0.1,
                    max_tokens=9)["options"]
    assert options == {"temperature": 0.2, "top_p": 0.5, "stop": ["END"], "seed": 3, "frequency_penalty": 0.4,
                       "presence_penalty": 0.1, "num_predict": 9}
    assert _chat(max_tokens=9, max_completion_tokens=4)["options"]["num_predict"] == 4


def test_response_format_tool_choice_and_reasoning() -> None:
    assert _chat(response_format={"type": "json_object"})["format"] == "json"
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert _chat(
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})["format"] == schema
    assert "format" not in _chat(response_format={"type": "text"})
    with pytest.raises(BadRequest, match="response_format"):
        _chat(response_format={"type": "yaml"})
    assert _chat(tool_choice={"type": "function", "function": {"name": "f"}})["tool_choice"] == "f"
    assert _chat(tool_choice="required")["tool_choice"] == "required"
    assert _chat(reasoning_effort="none")["think"] is False and _chat(reasoning={"effort": "low"})["think"] == "low"
    with pytest.raises(InvalidRequestError, match="only n=1"):
        _chat(n=2)


def test_messages_tool_calls_results_and_content_parts() -> None:
    messages = [*HI, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "2"},
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}]
    out = _chat(messages=messages)["messages"]
    assert out[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "function": {"name": "add", "arguments": '{"a": 1}'}}]}
    assert out[2] == {"role": "tool", "content": "2", "tool_name": "add", "tool_call_id": "c1"}
    assert out[3] == {"role": "user", "content": "one\ntwo"}
    with pytest.raises(BadRequest, match="data URLs"):
        _chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}])


def test_completions_refuse_what_they_cannot_honour() -> None:
    body = generate_body(parse_request(CompletionRequest, {"model": "m", "prompt": ["hi"], "max_tokens": 3}))
    assert body["prompt"] == "hi" and body["options"]["num_predict"] == 3 and body["stream"] is False
    for extra, match in (({"echo": True}, "echo"), ({"best_of": 2}, "best_of"), ({"logprobs": 2}, "logprobs")):
        with pytest.raises(BadRequest, match=match):
            generate_body(parse_request(CompletionRequest, {"model": "m", "prompt": "hi", **extra}))
    with pytest.raises(InvalidRequestError, match="one prompt"):
        parse_request(CompletionRequest, {"model": "m", "prompt": ["a", "b"]})


def test_chunks_become_openai_objects() -> None:
    shaper = ChatShaper(include_usage=True)
    call = {"id": "call_x", "function": {"index": 0, "name": "add", "arguments": {"a": 1}}}
    first = shaper.events({"model": "m", "message": {"role": "assistant", "content": "", "tool_calls": [call]},
                           "done": False})
    assert first[0]["choices"][0]["delta"]["tool_calls"] == [
        {"index": 0, "id": "call_x", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}]
    last = shaper.events({"model": "m", "message": {"role": "assistant", "content": ""}, "done": True,
                          "done_reason": "stop", "prompt_eval_count": 5, "eval_count": 2})
    assert last[0]["choices"][0]["finish_reason"] == "tool_calls"  # a call was sent earlier in the stream
    assert last[1]["choices"] == [] and last[1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 2,
                                                            "total_tokens": 7}
    assert error_body(404, "gone")["error"] == {"message": "gone", "type": "not_found_error", "param": None,
                                                "code": None}
    packed = embedding_list("e", {"embeddings": [[0.5, -1.0]], "prompt_eval_count": 3}, "base64")
    raw = base64.b64decode(packed["data"][0]["embedding"])
    assert struct.unpack("<2f", raw) == (0.5, -1.0) and packed["usage"]["prompt_tokens"] == 3
    assert model_object("hf.co/org/model:q4", "2025-01-02T03:04:05Z")["owned_by"] == "org"
    assert model_object("smollm2:135m", None) == {"id": "smollm2:135m", "object": "model", "created": 0,
                                                  "owned_by": "library"}
