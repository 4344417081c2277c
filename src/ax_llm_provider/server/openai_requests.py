"""OpenAI request bodies (/v1/chat/completions, /v1/completions, /v1/embeddings) turned into Ollama's.

The mapping follows Ollama's own compatibility layer (ollama/ollama, openai/openai.go):

- `stop` (a string or a list) -> options.stop; `max_tokens` (or the newer `max_completion_tokens`)
  -> options.num_predict; `seed`, `frequency_penalty`, `presence_penalty` pass through unscaled;
  `temperature` and `top_p` default to 1.0 when omitted (OpenAI's defaults, not Ollama's 0.8 / 0.9).
- `response_format` {"type": "json_object"} -> format "json"; {"type": "json_schema", "json_schema":
  {"schema": {...}}} -> format <schema>; {"type": "text"} -> no format.
- `reasoning_effort` / `reasoning.effort` ("low" | "medium" | "high" | "none") -> think.
- messages: content parts of type "text" are joined (one message per turn), data-URL images become
  `images`; tool results find their tool name from `name` or from the call with their `tool_call_id`;
  call arguments arrive as JSON strings and become objects.
- Beyond Ollama's layer: `tool_choice` ("auto", "none", "required" or {"type": "function", "function":
  {"name": ...}}) reaches the engine's forced-call grammar; `logprobs` / `top_logprobs` are honoured.

What cannot be honoured is refused with a 400 (`n` > 1, `echo`, `best_of` > 1, token-id prompts).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import BadRequest

_DATA_URL_PREFIXES = ("data:;base64,", *(f"data:image/{t};base64," for t in ("jpeg", "jpg", "png", "webp")))


class _Lenient(BaseModel):
    # OpenAI clients send many fields this server does not use (user, store, metadata, ...): ignored.
    model_config = ConfigDict(extra="ignore")


class OpenAIFunctionCall(_Lenient):
    name: str = Field(min_length=1)
    arguments: str | dict[str, Any] = "{}"


class OpenAIToolCall(_Lenient):
    id: str | None = None
    type: str = "function"
    function: OpenAIFunctionCall


class OpenAIMessage(_Lenient):
    role: str = Field(min_length=1)
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[OpenAIToolCall] | None = None
    tool_call_id: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class _Sampling(_Lenient):
    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    n: int | None = Field(None, ge=1)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("only n=1 is supported (one choice per request)")
        return value

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"temperature": 1.0 if self.temperature is None else self.temperature,
                                   "top_p": 1.0 if self.top_p is None else self.top_p}
        if self.stop is not None:
            options["stop"] = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        for key in ("seed", "frequency_penalty", "presence_penalty"):
            if getattr(self, key) is not None:
                options[key] = getattr(self, key)
        return options

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    messages: list[OpenAIMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    reasoning_effort: Literal["low", "medium", "high", "none"] | None = None
    reasoning: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    suffix: str | None = None
    echo: bool | None = None
    best_of: int | None = None
    logprobs: int | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("only one prompt per request is supported (a string or a list of one string)")
        return value


class EmbeddingRequest(_Lenient):
    model: str = Field(min_length=1)
    input: str | list[str]
    dimensions: int | None = Field(None, gt=0)
    encoding_format: Literal["float", "base64"] = "float"


# ---- chat ----------------------------------------------------------------------------------------------

def _text_and_images(content: str | list[dict[str, Any]] | None) -> tuple[str, list[str]]:
    if content is None or isinstance(content, str):
        return content or "", []
    texts, images = [], []
    for part in content:
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            prefix = next((p for p in _DATA_URL_PREFIXES if url.startswith(p)), None) if isinstance(url, str) else None
            if prefix is None or not isinstance(url, str):
                raise BadRequest("invalid image input: images must be base64 data URLs (data:image/png;base64,...)")
            images.append(url[len(prefix):])
        else:
            raise BadRequest(f"invalid message format: unsupported content part {kind!r} (text or image_url)")
    return "\n".join(texts), images


def _tool_name(message: OpenAIMessage, history: list[OpenAIMessage]) -> str | None:
    if message.name or not message.tool_call_id:
        return message.name
    for earlier in reversed(history):  # the latest call with this id wins, as in Ollama
        for call in earlier.tool_calls or ():
            if call.id == message.tool_call_id:
                return call.function.name
    return None


def _ollama_message(message: OpenAIMessage, history: list[OpenAIMessage]) -> dict[str, Any]:
    content, images = _text_and_images(message.content)
    out: dict[str, Any] = {"role": message.role, "content": content}
    if images:
        out["images"] = images
    thinking = message.reasoning or message.reasoning_content
    if thinking:
        out["thinking"] = thinking
    if message.tool_calls:
        out["tool_calls"] = [{**({"id": c.id} if c.id else {}),
                              "function": {"name": c.function.name, "arguments": c.function.arguments}}
                             for c in message.tool_calls]
    if message.role.lower() == "tool":
        out["tool_name"] = _tool_name(message, history)
        out["tool_call_id"] = message.tool_call_id
    return {k: v for k, v in out.items() if v is not None}


def _format(response_format: dict[str, Any] | None) -> str | dict[str, Any] | None:
    if not response_format:
        return None
    kind = str(response_format.get("type", "")).strip().lower()
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise BadRequest("response_format json_schema needs json_schema.schema (a JSON Schema object)")
        return schema
    raise BadRequest(f"invalid response_format type {kind!r}: expected text, json_object or json_schema")


def _tool_choice(choice: str | dict[str, Any] | None) -> str | None:
    if choice is None or isinstance(choice, str):
        return choice
    function = choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if choice.get("type") != "function" or not isinstance(name, str) or not name:
        raise BadRequest('tool_choice must be "auto", "none", "required" or {"type": "function", '
                         '"function": {"name": ...}}')
    return name


def _think(request: ChatCompletionRequest) -> bool | str | None:
    effort = request.reasoning.get("effort") if request.reasoning else request.reasoning_effort
    if effort is None:
        return None
    if effort not in ("low", "medium", "high", "none"):
        raise BadRequest(f"invalid reasoning value: {effort!r} (must be \"high\", \"medium\", \"low\", or \"none\")")
    return False if effort == "none" else effort


def chat_body(request: ChatCompletionRequest) -> dict[str, Any]:
    """The Ollama /api/chat body of an OpenAI chat completion request."""
    options = request.options()
    max_tokens = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    messages = [_ollama_message(m, request.messages[:i]) for i, m in enumerate(request.messages)]
    body: dict[str, Any] = {"model": request.model, "messages": messages, "stream": request.stream,
                            "options": options, "format": _format(request.response_format), "think": _think(request),
                            "tools": request.tools or None, "tool_choice": _tool_choice(request.tool_choice)}
    if request.logprobs or request.top_logprobs:
        body["logprobs"], body["top_logprobs"] = True, request.top_logprobs or 0
    return {k: v for k, v in body.items() if v is not None}


# ---- completions and embeddings -------------------------------------------------------------------------

def generate_body(request: CompletionRequest) -> dict[str, Any]:
    """The Ollama /api/generate body of an OpenAI (legacy) completion request."""
    if request.echo:
        raise BadRequest("echo is not supported: the answer holds only the completion")
    if request.best_of not in (None, 1):
        raise BadRequest("only best_of=1 is supported")
    if request.logprobs:
        raise BadRequest("logprobs is not supported on /v1/completions; use /v1/chat/completions with logprobs")
    options = request.options()
    if request.max_tokens is not None:
        options["num_predict"] = request.max_tokens
    prompt = request.prompt if isinstance(request.prompt, str) else request.prompt[0]
    body = {"model": request.model, "prompt": prompt, "suffix": request.suffix or None, "stream": request.stream,
            "options": options}
    return {k: v for k, v in body.items() if v is not None}


def embed_body(request: EmbeddingRequest) -> dict[str, Any]:
    body: dict[str, Any] = {"model": request.model, "input": request.input}
    if request.dimensions is not None:
        body["dimensions"] = request.dimensions
    return body
