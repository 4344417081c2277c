"""Response chunks in Ollama's JSON shape (typed dicts), built once and shared by the Client and the server."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypedDict, TypeVar


class Message(TypedDict, total=False):
    role: str
    content: str
    thinking: str
    tool_calls: list[dict[str, Any]]


class FinalFields(TypedDict, total=False):
    """The done:true fields (Ollama omits zero counters) and our `ax` metadata (ExtraMetadata.as_dict)."""

    done: bool
    done_reason: str
    total_duration: int
    load_duration: int
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int
    ax: dict[str, Any]


class ChatChunk(FinalFields, total=False):
    """One /api/chat response object."""

    model: str
    created_at: str
    message: Message
    logprobs: list[dict[str, Any]]


class GenerateChunk(FinalFields, total=False):
    """One /api/generate response object; the last carries `context` unless raw."""

    model: str
    created_at: str
    response: str
    thinking: str
    logprobs: list[dict[str, Any]]
    context: list[int]


# What the engine streams, whatever the endpoint (the worker, the request guard and the server's stream
# writer handle both); code written for either endpoint's chunks is generic in ChunkT.
Chunk = ChatChunk | GenerateChunk
ChunkT = TypeVar("ChunkT", ChatChunk, GenerateChunk)


def now_rfc3339() -> str:
    """RFC3339 with nanosecond-style fraction and a Z, as Ollama writes created_at."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Timings:
    """Nanosecond counters of one request (Ollama's final-chunk fields)."""

    started_ns: int
    load_ns: int = 0
    prompt_eval_count: int = 0
    prompt_eval_ns: int = 0
    eval_count: int = 0
    eval_ns: int = 0


@dataclass
class ExtraMetadata:
    """What Ollama does not report but a user of a small card needs to see (under the key `ax`)."""

    reused_tokens: int = 0
    truncation: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    backend: str = ""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"prompt_cache_reused_tokens": self.reused_tokens, "backend": self.backend}
        if self.truncation:
            out["truncation"] = self.truncation
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out


def mark_degraded(chunk: ChunkT, degraded: dict[str, Any]) -> ChunkT:
    """A final chunk answered by the CPU fallback model while the card is lost (engine/fallback.py): `ax.degraded`
    names the fallback model, why and since when (unix time)."""
    marked = chunk.copy()
    marked["ax"] = {**chunk.get("ax", {}), "degraded": dict(degraded)}
    return marked


def final_fields(timings: Timings, done_reason: str, now_ns: int) -> FinalFields:
    """done:true fields; Ollama omits zero counters."""
    fields: FinalFields = {"done": True, "done_reason": done_reason,
                           "total_duration": max(now_ns - timings.started_ns, 1)}
    if timings.load_ns:
        fields["load_duration"] = timings.load_ns
    if timings.prompt_eval_count:
        fields["prompt_eval_count"] = timings.prompt_eval_count
    if timings.prompt_eval_ns:
        fields["prompt_eval_duration"] = timings.prompt_eval_ns
    if timings.eval_count:
        fields["eval_count"] = timings.eval_count
    if timings.eval_ns:
        fields["eval_duration"] = timings.eval_ns
    return fields


def chat_chunk(model: str, content: str = "", *, thinking: str | None = None,
               tool_calls: list[dict[str, Any]] | None = None,
               logprobs: list[dict[str, Any]] | None = None) -> ChatChunk:
    message: Message = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if tool_calls:
        message["tool_calls"] = tool_calls
    chunk: ChatChunk = {"model": model, "created_at": now_rfc3339(), "message": message, "done": False}
    if logprobs:
        chunk["logprobs"] = logprobs
    return chunk


def generate_chunk(model: str, response: str = "", *, thinking: str | None = None,
                   logprobs: list[dict[str, Any]] | None = None) -> GenerateChunk:
    chunk: GenerateChunk = {"model": model, "created_at": now_rfc3339(), "response": response, "done": False}
    if thinking:
        chunk["thinking"] = thinking
    if logprobs:
        chunk["logprobs"] = logprobs
    return chunk
