"""Engine (Ollama-shaped) chunks turned into OpenAI's response objects, as Ollama's compatibility layer
shapes them (ollama/ollama, openai/openai.go): chat.completion / chat.completion.chunk, text_completion,
embedding lists, model objects and the `{"error": {message, type, param, code}}` error body.
"""

from __future__ import annotations

import base64
import json
import secrets
import struct
import time
from datetime import datetime
from typing import Any

from ..engine.responses import ChatChunk, FinalFields, GenerateChunk

FINGERPRINT = "fp_ax_llm"


def error_body(status: int, message: str) -> dict[str, Any]:
    """OpenAI's error object; the type follows the status as Ollama's layer sets it."""
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _usage(chunk: FinalFields) -> dict[str, int]:
    prompt, completion = int(chunk.get("prompt_eval_count") or 0), int(chunk.get("eval_count") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _tool_calls(calls: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if not calls:
        return None
    out = []
    for position, call in enumerate(calls):
        function = call.get("function") or {}
        out.append({"index": function.get("index", position), "id": call.get("id"), "type": "function",
                    "function": {"name": function.get("name"),
                                 "arguments": json.dumps(function.get("arguments") or {}, ensure_ascii=False)}})
    return out


def _created(iso: str | None) -> int:
    if not iso:
        return 0
    try:
        return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def _owner(name: str) -> str:
    """The namespace of a model name, as Ollama reports `owned_by` ("library" for a bare name)."""
    path = name.split(":", 1)[0].split("/")
    return path[-2] if len(path) >= 2 else "library"


class ChatShaper:
    """One chat completion's id and stream state: Ollama chunks in, OpenAI objects out."""

    def __init__(self, include_usage: bool = False) -> None:
        self.id = f"chatcmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.include_usage = include_usage
        self._calls_sent = False

    @staticmethod
    def _finish(chunk: FinalFields, calls: bool, done: bool) -> str | None:
        if not done:
            return None
        return "tool_calls" if calls else (chunk.get("done_reason") or "stop")

    def completion(self, merged: ChatChunk) -> dict[str, Any]:
        message = merged.get("message", {})
        calls = _tool_calls(message.get("tool_calls"))
        out_message: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
        if message.get("thinking"):
            out_message["reasoning"] = message["thinking"]
        if calls:
            out_message["tool_calls"] = calls
        choice: dict[str, Any] = {"index": 0, "message": out_message,
                                  "finish_reason": self._finish(merged, bool(calls), done=True),
                                  "logprobs": {"content": merged["logprobs"]} if merged.get("logprobs") else None}
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": merged.get("model"),
                "system_fingerprint": FINGERPRINT, "choices": [choice], "usage": _usage(merged)}

    def events(self, chunk: ChatChunk) -> list[dict[str, Any]]:
        """The SSE events of one engine chunk (the final one adds the usage event when asked)."""
        message = chunk.get("message", {})
        calls = _tool_calls(message.get("tool_calls"))
        self._calls_sent = self._calls_sent or bool(calls)
        delta: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
        if message.get("thinking"):
            delta["reasoning"] = message["thinking"]
        if calls:
            delta["tool_calls"] = calls
        finish = self._finish(chunk, self._calls_sent, done=bool(chunk.get("done")))
        choice = {"index": 0, "delta": delta, "finish_reason": finish,
                  "logprobs": {"content": chunk["logprobs"]} if chunk.get("logprobs") else None}
        base = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": chunk.get("model"), "system_fingerprint": FINGERPRINT}
        events = [{**base, "choices": [choice]}]
        if chunk.get("done") and self.include_usage:
            events.append({**base, "choices": [], "usage": _usage(chunk)})
        return events


class CompletionShaper:
    """One legacy text completion: Ollama /api/generate chunks in, text_completion objects out."""

    def __init__(self, include_usage: bool = False) -> None:
        self.id = f"cmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.include_usage = include_usage

    def _object(self, chunk: GenerateChunk, text: str, done: bool) -> dict[str, Any]:
        finish = (chunk.get("done_reason") or "stop") if done else None
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": chunk.get("model"),
                "system_fingerprint": FINGERPRINT,
                "choices": [{"text": text, "index": 0, "finish_reason": finish, "logprobs": None}]}

    def completion(self, merged: GenerateChunk) -> dict[str, Any]:
        return {**self._object(merged, merged.get("response") or "", done=True), "usage": _usage(merged)}

    def events(self, chunk: GenerateChunk) -> list[dict[str, Any]]:
        events = [self._object(chunk, chunk.get("response") or "", done=bool(chunk.get("done")))]
        if chunk.get("done") and self.include_usage:
            events.append({**events[0], "choices": [], "usage": _usage(chunk)})
        return events


def embedding_list(model: str, result: dict[str, Any], encoding_format: str) -> dict[str, Any]:
    """OpenAI's embedding list; base64 is the little-endian float32 bytes (what openai-python requests)."""
    data = []
    for index, vector in enumerate(result.get("embeddings") or []):
        value: Any = vector
        if encoding_format == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "embedding": value, "index": index})
    tokens = int(result.get("prompt_eval_count") or 0)
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def model_object(name: str, modified_at: str | None) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": _created(modified_at), "owned_by": _owner(name)}


def model_list(listing: dict[str, Any]) -> dict[str, Any]:
    return {"object": "list",
            "data": [model_object(m["name"], m.get("modified_at")) for m in listing.get("models") or []]}
