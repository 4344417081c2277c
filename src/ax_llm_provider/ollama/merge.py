"""Non-streaming responses: the concatenation of a stream's chunks, with the final chunk's counters."""

from __future__ import annotations

from typing import Any


def merge_chat(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    final = dict(chunks[-1])
    content = "".join(c["message"].get("content") or "" for c in chunks)
    thinking = "".join(c["message"].get("thinking") or "" for c in chunks)
    calls = [call for c in chunks for call in c["message"].get("tool_calls") or []]
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = calls
    final["message"] = message
    logprobs = [lp for c in chunks for lp in c.get("logprobs") or []]
    if logprobs:
        final["logprobs"] = logprobs
    return final


def merge_generate(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    final = dict(chunks[-1])
    final["response"] = "".join(c.get("response") or "" for c in chunks)
    thinking = "".join(c.get("thinking") or "" for c in chunks)
    if thinking:
        final["thinking"] = thinking
    logprobs = [lp for c in chunks for lp in c.get("logprobs") or []]
    if logprobs:
        final["logprobs"] = logprobs
    return final
