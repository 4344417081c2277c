"""Validated request schemas at the edge: Ollama's /api/chat, /api/generate and /api/embed bodies."""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import InvalidRequestError

RequestT = TypeVar("RequestT", bound=BaseModel)
ThinkLevel = Literal["low", "medium", "high", "max"]
FormatSpec = Literal["", "json"] | dict[str, Any] | None


class _Lenient(BaseModel):
    # Ollama ignores unknown fields (clients send extras such as tool_call_id); so do we.
    model_config = ConfigDict(extra="ignore")


class ToolCallFunction(_Lenient):
    name: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)
    index: int | None = None

    @field_validator("arguments", mode="before")
    @classmethod
    def _arguments_object(cls, value: Any) -> Any:
        # OpenAI-style clients send arguments as a JSON string; Ollama's schema is an object.
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"tool call arguments are not valid JSON: {exc}") from exc
        return value


class ToolCall(_Lenient):
    id: str | None = None
    function: ToolCallFunction


class ChatMessage(_Lenient):
    role: str = Field(min_length=1)
    content: str = ""
    thinking: str | None = None
    images: list[Any] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None

    @field_validator("role")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()

    @field_validator("content", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return "" if value is None else value


class ToolFunction(_Lenient):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolSpec(_Lenient):
    type: str = "function"
    function: ToolFunction


class _GenerationRequest(_Lenient):
    model: str = Field(min_length=1)
    format: FormatSpec = None
    options: dict[str, Any] | None = None
    stream: bool = True
    keep_alive: float | str | None = None
    think: bool | ThinkLevel | None = None
    logprobs: bool = False
    top_logprobs: int = Field(0, ge=0, le=20)
    truncate: bool = True
    shift: bool = True

    @field_validator("format", mode="before")
    @classmethod
    def _format(cls, value: Any) -> Any:
        if value is None or value == "" or value == "json" or isinstance(value, dict):
            return value
        if isinstance(value, str) and value.lstrip().startswith("{"):
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"invalid JSON schema in format: {exc}") from exc
        raise ValueError(f'invalid format: {value!r}; expected "json" or a valid JSON Schema object')


class ChatRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(default_factory=list)
    tools: list[ToolSpec] | None = None
    # Beyond Ollama: force or forbid tool calls ("auto", "required"/"any", "none", or a tool name).
    tool_choice: str | None = None


class GenerateRequest(_GenerationRequest):
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False
    images: list[Any] | None = None


class EmbedRequest(_Lenient):
    model: str = Field(min_length=1)
    input: str | list[str] = ""
    truncate: bool = True
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None
    dimensions: int | None = Field(None, gt=0)


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "request"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def parse_request(schema: type[RequestT], data: Any) -> RequestT:
    """Validate a request body; errors name the field and say what is wrong."""
    if isinstance(data, schema):
        return data
    if data is None:
        raise InvalidRequestError("missing request body")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequestError(f"invalid {schema.__name__}: {_describe(exc)}") from exc
