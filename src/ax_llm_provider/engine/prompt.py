"""Turn validated requests into prompt tokens through the model's chat template.

Tools, tool_choice and thinking are decided here (`PromptBuilder.chat_plan`):

- Tools are rendered by the chat template; the template's family (toolcalls.py) says how the model
  writes calls. A template that cannot express tools (no `tools` in it, e.g. SmolLM2's ChatML) gets
  the generic tools prompt of tools_prompt.py (tools in the system turn, `<tool_call>` JSON calls,
  results in `<tool_response>`), rendered through its own template, as Ollama's library templates do.
- tool_choice (beyond Ollama): "auto" (default), "none", "required"/"any", or a tool name.
  "required"/"any"/<name> force exactly one call through a grammar (constraints.py).
  "none" renders no tools, parses no calls and bans the family's call-start token.
- Thinking: `think` omitted on a thinking model means on (Ollama); the template's `enable_thinking`
  switch gets it. Reasoning of assistant turns before the last user message is dropped (Ollama
  does this for qwen3 / deepseek-r1).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..model.tokenizer import ChatTokenizer
from .decoding.thinking import strip_earlier_thinking, think_requested
from .decoding.toolcalls import ToolFamily, family_for_template
from .decoding.tools_prompt import (  # i16: tools on every chat model
    FORCED_PROMPT_TOOLS,
    PROMPT_TOOLS,
    has_tool_history,
    inject_tools,
)
from .errors import CapabilityError, InvalidRequestError
from .requests import ChatMessage, ChatRequest, GenerateRequest, ToolSpec

FORCING_CHOICES = ("required", "any")

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
    """Every chat model takes tools: in its template's syntax, or through the generic tools prompt (i16)."""
    return bool(tokenizer.chat_template)


def tool_format(tokenizer: ChatTokenizer) -> str:
    """"template" when the chat template renders tools itself, "prompt" when the generic tools prompt does."""
    return "template" if family_for_template(tokenizer.chat_template) is not None else "prompt"


def template_supports_thinking(tokenizer: ChatTokenizer) -> bool:
    template = tokenizer.chat_template or ""
    return "enable_thinking" in template or "<think>" in template


@dataclass
class ChatPlan:
    """What a chat request renders and how its output is read."""

    messages: list[TemplateMessage]
    render: Callable[[Sequence[Mapping[str, Any]]], list[int]]
    tools: list[dict[str, Any]] | None  # the request's tools (for parsing and forcing)
    family: ToolFamily | None  # how calls in the output are parsed; None: no parsing
    tool_choice: str  # "auto", "none", "required"/"any" or a tool name
    think: bool  # the model is asked to think (the output is split)
    thinking_model: bool

    @property
    def forced(self) -> bool:
        return self.tool_choice not in ("auto", "none") and bool(self.tools)


class PromptBuilder:
    """Renders and tokenizes prompts for one model."""

    def __init__(self, tokenizer: ChatTokenizer, model_name: str) -> None:
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.family = family_for_template(tokenizer.chat_template)
        self.thinking_model = template_supports_thinking(tokenizer)

    def template_kwargs(self, think: bool | str | None) -> dict[str, Any]:
        if think is None or not self.thinking_model:
            return {}
        return {"enable_thinking": bool(think)}

    def _check_think(self, think: bool | str | None) -> None:
        if think not in (None, False) and not self.thinking_model:
            raise CapabilityError(f'"{self.model_name}" does not support thinking')

    def tool_choice(self, request: ChatRequest) -> str:
        """The normalized tool_choice; raises for choices the request cannot honour."""
        choice = (request.tool_choice or "auto").strip()
        choice = choice.lower() if choice.lower() in ("auto", "none", *FORCING_CHOICES) else choice
        if choice in ("auto", "none"):
            return choice
        if not request.tools:
            raise InvalidRequestError(f'tool_choice "{choice}" needs tools in the request')
        names = [t.function.name for t in request.tools]
        if choice not in FORCING_CHOICES and choice not in names:
            raise InvalidRequestError(
                f'tool_choice "{choice}" is not "auto", "none", "required", "any" or a tool of the request '
                f"(tools: {', '.join(names)})")
        if request.format not in (None, ""):
            raise InvalidRequestError("format cannot be combined with a tool_choice that forces a tool call")
        return choice

    def check_chat(self, request: ChatRequest) -> str:
        """What this model cannot do for the request raises; returns the normalized tool_choice."""
        choice = self.tool_choice(request)
        self._check_think(request.think)
        if any(m.images for m in request.messages):
            raise CapabilityError(f"{self.model_name} does not support vision")
        return choice

    def chat_plan(self, request: ChatRequest) -> ChatPlan:
        """Validate the request and decide rendering, parsing and thinking (see the module doc)."""
        choice = self.check_chat(request)
        tools = tool_schemas(request.tools)
        messages = [template_message(m) for m in request.messages]
        if self.thinking_model:
            messages = strip_earlier_thinking(messages)
        family: ToolFamily | None = self.family
        template_tools = tools
        if not tools or choice == "none":
            family, template_tools = None, None
        elif family is None:  # i16: a template without tool syntax gets the generic tools prompt
            family, template_tools = (PROMPT_TOOLS if choice == "auto" else FORCED_PROMPT_TOOLS), None
        if self.family is None and (family is not None or has_tool_history(messages)):
            messages = inject_tools(messages, tools if family is not None else None)
        return ChatPlan(messages=messages, render=self._renderer(template_tools, request.think), tools=tools,
                        family=family, tool_choice=choice, think=think_requested(request.think, self.thinking_model),
                        thinking_model=self.thinking_model)

    def _renderer(self, tools: list[dict[str, Any]] | None,
                  think: bool | str | None) -> Callable[[Sequence[Mapping[str, Any]]], list[int]]:
        kwargs = self.template_kwargs(think)

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
        self._check_think(request.think)
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
