"""Turn validated requests into prompt tokens through the model's chat template."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..model.tokenizer import ChatTokenizer
from .errors import CapabilityError, InvalidRequestError
from .requests import ChatMessage, ChatRequest, GenerateRequest, ToolSpec

TemplateMessage = dict[str, Any]


def template_message(message: ChatMessage) -> TemplateMessage:
    """A message in the shape Hugging Face chat templates read (OpenAI-like tool calls)."""
    out: TemplateMessage = {"role": message.role, "content": message.content}
    if message.thinking:
        out["reasoning_content"] = message.thinking  # the name Qwen3-style templates use
        out["thinking"] = message.thinking
    if message.tool_calls:
        out["tool_calls"] = [
            {"type": "function", **({"id": c.id} if c.id else {}),
             "function": {"name": c.function.name, "arguments": c.function.arguments}}
            for c in message.tool_calls
        ]
    if message.role == "tool":
        if message.tool_name:
            out["name"] = message.tool_name
        if message.tool_call_id:
            out["tool_call_id"] = message.tool_call_id
    return out


def tool_schemas(tools: Sequence[ToolSpec] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    return [t.model_dump(exclude_none=True) for t in tools]


def template_supports_tools(tokenizer: ChatTokenizer) -> bool:
    template = tokenizer.chat_template or ""
    return "tools" in template


def template_supports_thinking(tokenizer: ChatTokenizer) -> bool:
    template = tokenizer.chat_template or ""
    return "enable_thinking" in template or "<think>" in template


class PromptBuilder:
    """Renders and tokenizes prompts for one model."""

    def __init__(self, tokenizer: ChatTokenizer, model_name: str) -> None:
        self.tokenizer = tokenizer
        self.model_name = model_name

    def template_kwargs(self, think: bool | str | None) -> dict[str, Any]:
        if think is None or not template_supports_thinking(self.tokenizer):
            return {}
        return {"enable_thinking": bool(think)}

    def check_chat(self, request: ChatRequest) -> None:
        if request.tools and not template_supports_tools(self.tokenizer):
            raise CapabilityError(f"{self.model_name} does not support tools")
        if request.think not in (None, False) and not template_supports_thinking(self.tokenizer):
            raise CapabilityError(f'"{self.model_name}" does not support thinking')
        if any(m.images for m in request.messages):
            raise CapabilityError(f"{self.model_name} does not support vision")

    def chat_renderer(self, request: ChatRequest) -> Callable[[Sequence[Mapping[str, Any]]], list[int]]:
        """A function from template messages to prompt tokens (used by the context fitter)."""
        tools = tool_schemas(request.tools)
        kwargs = self.template_kwargs(request.think)

        def render(messages: Sequence[Mapping[str, Any]]) -> list[int]:
            text = self.tokenizer.render_chat(messages, tools=tools, add_generation_prompt=True, **kwargs)
            return self.tokenizer.encode(text)

        return render

    def generate_tokens(self, request: GenerateRequest) -> list[int]:
        """Prompt tokens for /api/generate: raw text, or the template around system + prompt, after `context`."""
        if request.suffix:
            raise CapabilityError(f"{self.model_name} does not support insert")
        if request.images:
            raise CapabilityError(f"{self.model_name} does not support vision")
        if request.think not in (None, False) and not template_supports_thinking(self.tokenizer):
            raise CapabilityError(f'"{self.model_name}" does not support thinking')
        prompt = request.prompt or ""
        if request.raw:
            if request.template or request.system or request.context:
                raise InvalidRequestError("raw mode does not support template, system, or context")
            return self.tokenizer.encode(prompt)
        if request.template:
            raise InvalidRequestError(
                "template overrides (Go templates) are not supported in process; the model's chat template is used"
            )
        messages: list[TemplateMessage] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": prompt})
        text = self.tokenizer.render_chat(messages, add_generation_prompt=True, **self.template_kwargs(request.think))
        return list(request.context or []) + self.tokenizer.encode(text)
