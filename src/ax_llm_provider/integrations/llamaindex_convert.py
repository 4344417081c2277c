"""LlamaIndex <-> Ollama conversions for AXOllama: messages, tool specs, responses and stream accumulation.

Mirrors llama-index-llms-ollama 0.11 (`_convert_to_ollama_messages`, the response blocks of `chat`
and `stream_chat`) with three additions the in-process engine makes possible:

- tool calls keep the engine's stable ids (`call_<hash>`) in `ToolCallBlock.tool_call_id`, and the
  `ToolSelection.tool_id` is that id (the reference uses the tool name: Ollama sends no ids);
- tool-result messages carry `tool_call_id` (from `additional_kwargs`, where FunctionAgent puts it) and
  `tool_name` (looked up from the assistant call with that id), so a multi-tool history stays correlated;
- `CachePoint` blocks (a provider cache hint) are skipped instead of raising.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    CachePoint,
    ChatMessage,
    ChatResponse,
    ImageBlock,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)

from ..engine.responses import ChatChunk


def parse_arguments(kwargs: Any) -> Any:
    """ToolCallBlock.tool_kwargs may be a JSON string; Ollama's schema is an object."""
    if isinstance(kwargs, str):
        try:
            parsed = json.loads(kwargs) if kwargs.strip() else {}
        except json.JSONDecodeError:
            return kwargs  # the engine answers a 400 naming the bad arguments
        return parsed
    return kwargs


def _call_dict(block: ToolCallBlock) -> dict[str, Any]:
    call: dict[str, Any] = {"function": {"name": block.tool_name, "arguments": parse_arguments(block.tool_kwargs)}}
    if block.tool_call_id:
        call["id"] = block.tool_call_id
    return call


def to_ollama_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """LlamaIndex chat messages as Ollama /api/chat messages (see the module doc for the additions)."""
    out: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}  # tool call id -> tool name, for the tool-result messages after it
    for message in messages:
        role = message.role.value if isinstance(message.role, MessageRole) else str(message.role)
        current: dict[str, Any] = {"role": role, "content": ""}
        seen: list[tuple[str, str]] = []
        for block in message.blocks:
            if isinstance(block, TextBlock):
                current["content"] += block.text
            elif isinstance(block, ImageBlock):
                current.setdefault("images", []).append(block.resolve_image(as_base64=True).read().decode("utf-8"))
            elif isinstance(block, ThinkingBlock):
                if block.content:
                    current["thinking"] = block.content
            elif isinstance(block, ToolCallBlock):
                current.setdefault("tool_calls", []).append(_call_dict(block))
                seen.append((block.tool_name, str(block.tool_kwargs)))
                if block.tool_call_id:
                    call_names[block.tool_call_id] = block.tool_name
            elif isinstance(block, CachePoint):
                continue
            else:
                raise ValueError(f"Unsupported block type: {type(block)}")
        legacy = message.additional_kwargs.get("tool_calls")
        if legacy:  # older chat histories keep OpenAI-style calls here (the reference merges them too)
            if not current.get("tool_calls"):
                current["tool_calls"] = list(legacy)
            else:
                current["tool_calls"] += [c for c in legacy
                                          if (c.get("name", ""), str(c.get("arguments", {}))) not in seen]
        if role == MessageRole.TOOL.value:
            call_id = message.additional_kwargs.get("tool_call_id")
            name = message.additional_kwargs.get("tool_name") or message.additional_kwargs.get("name")
            if call_id:
                current["tool_call_id"] = str(call_id)
                name = name or call_names.get(str(call_id))
            if name:
                current["tool_name"] = str(name)
        out.append(current)
    return out


def tool_calls_of(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [dict(c) for c in message.get("tool_calls") or []]


def tool_call_block(call: Mapping[str, Any]) -> ToolCallBlock:
    function = call.get("function") or {}
    return ToolCallBlock(tool_call_id=call.get("id"), tool_name=str(function.get("name", "")),
                         tool_kwargs=function.get("arguments") or {})


def token_counts(raw: Mapping[str, Any]) -> dict[str, int]:
    """The reference's `raw["usage"]`: prompt/completion/total tokens, or {} when the counters are absent."""
    prompt, completion = raw.get("prompt_eval_count"), raw.get("eval_count")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return {}
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _blocks(text: str, thinking: str, calls: Sequence[Mapping[str, Any]]) -> list[Any]:
    blocks: list[Any] = [ThinkingBlock(content=thinking)] if thinking else []
    blocks.append(TextBlock(text=text))
    blocks += [tool_call_block(c) for c in calls]
    return blocks


def chat_response(merged: ChatChunk, *, parallel_tool_calls: bool = True) -> ChatResponse:
    """A merged (non-streaming) Ollama chat response as LlamaIndex's ChatResponse."""
    message = merged.get("message", {})
    calls = tool_calls_of(message)
    if not parallel_tool_calls:
        calls = calls[:1]
    blocks = _blocks(message.get("content") or "", message.get("thinking") or "", calls)
    return ChatResponse(message=ChatMessage(role=message.get("role") or MessageRole.ASSISTANT, blocks=blocks),
                        raw=raw_with_usage(merged))


def raw_with_usage(chunk: ChatChunk) -> dict[str, Any]:
    """The reference's `raw`: the response as a plain dict, with `usage` when the counters are there."""
    raw: dict[str, Any] = {**chunk}
    usage = token_counts(chunk)
    if usage:
        raw["usage"] = usage
    return raw


class StreamAccumulator:
    """Turns a stream of Ollama chat chunks into LlamaIndex's cumulative ChatResponses.

    As the reference: every response holds all text and thinking so far plus the tool calls so far
    (de-duplicated by name and arguments), `delta` is the chunk's content, `raw` the chunk (with
    `usage` on the final one) and `additional_kwargs["thinking_delta"]` the chunk's thinking.
    """

    def __init__(self, parallel_tool_calls: bool = True) -> None:
        self.parallel_tool_calls = parallel_tool_calls
        self.text = ""
        self.thinking = ""
        self.calls: list[dict[str, Any]] = []
        self._seen: set[tuple[str, str]] = set()

    def feed(self, chunk: ChatChunk) -> ChatResponse | None:
        message = chunk.get("message", {})
        if message.get("content") is None:
            return None
        self.text += message.get("content") or ""
        self.thinking += message.get("thinking") or ""
        for call in tool_calls_of(message):
            function = call.get("function") or {}
            key = (str(function.get("name")), str(function.get("arguments")))
            if key in self._seen or (self.calls and not self.parallel_tool_calls):
                continue
            self._seen.add(key)
            self.calls.append(call)
        return ChatResponse(
            message=ChatMessage(role=message.get("role") or MessageRole.ASSISTANT,
                                blocks=_blocks(self.text, self.thinking, self.calls)),
            delta=message.get("content") or "",
            raw=raw_with_usage(chunk),
            additional_kwargs={"thinking_delta": message.get("thinking")},
        )
