"""LangChain messages <-> Ollama chat dicts, as langchain-ollama 1.1 converts them (with its gaps fixed).

Fixes over ChatOllama: a ToolMessage carries `tool_name` (its `name`, else the name of the tool call it
answers), engine tool-call ids are kept (stable across stream and invoke), tool-call arguments that
do not parse become `invalid_tool_calls` instead of an exception, and thinking is kept whenever the
engine returns it (ChatOllama drops it unless `reasoning` is truthy).
"""

from __future__ import annotations

import ast
import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import uuid4

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import InputTokenDetails, UsageMetadata
from langchain_core.messages.tool import invalid_tool_call, tool_call
from langchain_core.outputs import ChatGenerationChunk

from ..engine.responses import ChatChunk

log = logging.getLogger(__name__)

MODEL_PROVIDER = "ollama"  # response_metadata["model_provider"], as ChatOllama reports it
_SKIPPED_BLOCKS = frozenset({"tool_use", "tool_call", "tool_call_chunk", "function_call", "server_tool_call"})


# ---- LangChain -> Ollama ------------------------------------------------------------------------

def _image_from_url(url: str) -> str:
    """`data:image/png;base64,X` -> X; a bare string is taken as base64 (ChatOllama's rule)."""
    if url.startswith(("http://", "https://")):
        raise ValueError(
            "remote image URLs are not fetched; pass the image as base64 (a data: URL or an image block)"
        )
    parts = url.split(",", 1)
    return parts[1] if len(parts) > 1 else parts[0]


def _image_from_block(block: Mapping[str, Any]) -> str:
    if block.get("source_type") == "base64" and block.get("data"):
        return str(block["data"])  # v0 data block
    if block.get("base64"):
        return str(block["base64"])  # v1 image block
    if block.get("url"):
        return _image_from_url(str(block["url"]))
    raise ValueError("Image data only supported through in-line base64 format.")


def _content_parts(content: str | list[Any], *, assistant: bool) -> tuple[str, list[str], str | None]:
    """Text, base64 images and (for assistant v1 content) reasoning from a message's content."""
    if isinstance(content, str):
        return content, [], None
    texts: list[str] = []
    images: list[str] = []
    reasoning: list[str] = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind in _SKIPPED_BLOCKS:
            continue  # tool calls travel in message.tool_calls
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, Mapping) else url
            if not isinstance(url, str):
                raise ValueError("Only string image_url or dict with string 'url' inside content parts are supported.")
            images.append(_image_from_url(url))
        elif kind == "image":
            images.append(_image_from_block(part))
        elif kind in ("reasoning", "thinking") and assistant:
            reasoning.append(str(part.get("reasoning") or part.get("thinking") or ""))
        elif kind == "non_standard":
            texts.append(str(part.get("value", "")))
        else:
            raise ValueError(
                f"Unsupported message content type {kind!r}. Must either have type 'text' or type 'image_url' "
                "with a string 'image_url' field (or a base64 image block)."
            )
    return "\n".join(texts), images, ("".join(reasoning) or None)


def _tool_call_to_ollama(call: Mapping[str, Any]) -> dict[str, Any]:
    function: dict[str, Any] = {"name": call["name"], "arguments": dict(call.get("args") or {})}
    out: dict[str, Any] = {"type": "function", "function": function}
    if call.get("id"):
        out["id"] = call["id"]
    return out


def messages_to_ollama(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages -> Ollama /api/chat messages (dicts the engine validates)."""
    out: list[dict[str, Any]] = []
    tool_names: dict[str, str] = {}  # tool_call_id -> tool name, from earlier AI messages
    for message in messages:
        msg: dict[str, Any]
        if isinstance(message, HumanMessage):
            msg = {"role": "user"}
        elif isinstance(message, AIMessage):
            msg = {"role": "assistant"}
            if message.tool_calls:
                msg["tool_calls"] = [_tool_call_to_ollama(c) for c in message.tool_calls]
                tool_names.update({str(c["id"]): c["name"] for c in message.tool_calls if c.get("id")})
        elif isinstance(message, SystemMessage):
            msg = {"role": "system"}
        elif isinstance(message, ChatMessage):
            msg = {"role": message.role}
        elif isinstance(message, ToolMessage):
            msg = {"role": "tool", "tool_call_id": message.tool_call_id}
            name = message.name or tool_names.get(message.tool_call_id)
            if name:
                msg["tool_name"] = name
        else:
            raise TypeError(f"Received unsupported message type for Ollama: {type(message).__name__}.")
        is_ai = isinstance(message, AIMessage)
        text, images, reasoning = _content_parts(message.content, assistant=is_ai)
        msg["content"] = text
        if images:
            msg["images"] = images
        if is_ai:
            thinking = message.additional_kwargs.get("reasoning_content")  # "" is sent as "", as ChatOllama
            if thinking is None and reasoning:
                thinking = reasoning
            if thinking is not None:
                msg["thinking"] = thinking
        out.append(msg)
    return out


def normalize_tool_choice(tool_choice: Any, tools: Sequence[Mapping[str, Any]] | None) -> str | None:
    """LangChain's tool_choice forms -> the engine's string ("auto", "any"/"required", "none", a tool name)."""
    if tool_choice is None or tool_choice is False:
        return None
    if tool_choice is True:
        if tools and len(tools) == 1:
            return str(tools[0]["function"]["name"])
        return "required"
    if isinstance(tool_choice, Mapping):
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else tool_choice.get("name")
        if not name:
            raise ValueError(f"tool_choice {tool_choice!r} names no tool")
        return str(name)
    if isinstance(tool_choice, str):
        return tool_choice
    raise TypeError(f"tool_choice must be a string, a dict, a bool or None, not {type(tool_choice).__name__}")


def resolve_format(format_param: Any, response_format: Any) -> Any:
    """`format` wins; else an OpenAI-style `response_format` (json_object / json_schema), as ChatOllama does."""
    if format_param is not None:
        if response_format is not None:
            warnings.warn("Both 'format' and 'response_format' were provided. 'response_format' will be ignored "
                          "in favor of 'format'.", UserWarning, stacklevel=4)
        return format_param or None
    if response_format is None:
        return None
    if not isinstance(response_format, Mapping):
        warnings.warn(f"Ignored invalid 'response_format' type: {type(response_format)}. Expected a dictionary.",
                      UserWarning, stacklevel=4)
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        block = response_format.get("json_schema")
        schema = block.get("schema") if isinstance(block, Mapping) else None
        if schema is None:
            warnings.warn("response_format has type 'json_schema' but no 'json_schema.schema'; format not set.",
                          UserWarning, stacklevel=4)
        return schema
    warnings.warn(f"Ignored unrecognized 'response_format' type: {kind}. Expected 'json_object' or 'json_schema'.",
                  UserWarning, stacklevel=4)
    return None


# ---- Ollama -> LangChain ------------------------------------------------------------------------

def _parse_arguments(arguments: Any) -> dict[str, Any]:
    """Object arguments as they are; a string is parsed as JSON, then as a Python literal."""
    if isinstance(arguments, Mapping):
        return dict(arguments)
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except json.JSONDecodeError:
            parsed = ast.literal_eval(arguments)  # single-quoted dicts from some models
        if isinstance(parsed, dict):
            return parsed
    raise ValueError(f"arguments are not a JSON object: {arguments!r}")


def tool_calls_from_message(message: Mapping[str, Any]) -> tuple[list[Any], list[Any]]:
    """(tool_calls, invalid_tool_calls) of an Ollama response message."""
    calls: list[Any] = []
    invalid: list[Any] = []
    for raw in message.get("tool_calls") or []:
        function = raw.get("function") or {}
        name = function.get("name")
        call_id = raw.get("id") or str(uuid4())
        arguments = function.get("arguments")
        try:
            args = _parse_arguments(arguments)
        except (ValueError, SyntaxError) as exc:
            text = arguments if isinstance(arguments, str) else json.dumps(arguments, default=str)
            invalid.append(invalid_tool_call(name=name, args=text, id=call_id, error=str(exc)))
            continue
        if name:
            calls.append(tool_call(name=name, args=args, id=call_id))
        else:
            invalid.append(invalid_tool_call(name=None, args=json.dumps(args), id=call_id,
                                             error="tool call without a name"))
    return calls, invalid


def usage_from_final(response: Mapping[str, Any]) -> UsageMetadata:
    """Token counts of a final (done) response; prefix-cache hits as input_token_details.cache_read."""
    input_tokens = int(response.get("prompt_eval_count") or 0)
    output_tokens = int(response.get("eval_count") or 0)
    usage = UsageMetadata(input_tokens=input_tokens, output_tokens=output_tokens,
                          total_tokens=input_tokens + output_tokens)
    ax = response.get("ax")
    if isinstance(ax, Mapping) and "prompt_cache_reused_tokens" in ax:
        usage["input_token_details"] = InputTokenDetails(cache_read=int(ax["prompt_cache_reused_tokens"] or 0))
    return usage


def final_generation_info(response: Mapping[str, Any]) -> dict[str, Any]:
    """ChatOllama's response_metadata: the final response minus `message`, plus model_name / model_provider."""
    info = {k: v for k, v in response.items() if k not in ("message", "response")}
    if "model" in info:
        info["model_name"] = info["model"]
    info["model_provider"] = MODEL_PROVIDER
    return info


def is_empty_load(response: Mapping[str, Any], text: str) -> bool:
    """Ollama's `done_reason: load` answer to an empty request: skipped, as ChatOllama does."""
    if response.get("done") is True and response.get("done_reason") == "load" and not text.strip():
        log.warning("empty response with done_reason='load' (the model was loaded, nothing generated): skipped")
        return True
    return False


def chat_chunk_from_response(response: ChatChunk, reasoning: bool | str | None) -> ChatGenerationChunk | None:
    """One engine chat response -> one ChatGenerationChunk (None for a skipped load response)."""
    message = response.get("message", {})
    content = message.get("content") or ""
    if is_empty_load(response, content):
        return None
    done = response.get("done") is True
    if done:
        generation_info: dict[str, Any] | None = final_generation_info(response)
    else:
        generation_info = {"logprobs": response["logprobs"]} if response.get("logprobs") is not None else None
    additional_kwargs: dict[str, Any] = {}
    thinking = message.get("thinking")
    if thinking and reasoning is not False:
        additional_kwargs["reasoning_content"] = thinking
    calls, invalid = tool_calls_from_message(message)
    chunk_message = AIMessageChunk(
        content=content,
        additional_kwargs=additional_kwargs,
        usage_metadata=usage_from_final(response) if done else None,
        tool_calls=calls,
        invalid_tool_calls=invalid,
    )
    return ChatGenerationChunk(message=chunk_message, generation_info=generation_info)
