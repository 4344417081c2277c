"""Non-streaming responses: the concatenation of a stream's chunks, with the final chunk's counters."""

from __future__ import annotations

from ..engine.responses import ChatChunk, GenerateChunk, Message


def merge_chat(chunks: list[ChatChunk]) -> ChatChunk:
    final = chunks[-1].copy()
    messages = [c.get("message", {}) for c in chunks]
    content = "".join(m.get("content") or "" for m in messages)
    thinking = "".join(m.get("thinking") or "" for m in messages)
    calls = [call for m in messages for call in m.get("tool_calls") or []]
    message: Message = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = calls
    final["message"] = message
    logprobs = [lp for c in chunks for lp in c.get("logprobs") or []]
    if logprobs:
        final["logprobs"] = logprobs
    return final


def merge_generate(chunks: list[GenerateChunk]) -> GenerateChunk:
    final = chunks[-1].copy()
    final["response"] = "".join(c.get("response") or "" for c in chunks)
    thinking = "".join(c.get("thinking") or "" for c in chunks)
    if thinking:
        final["thinking"] = thinking
    logprobs = [lp for c in chunks for lp in c.get("logprobs") or []]
    if logprobs:
        final["logprobs"] = logprobs
    return final
