"""AXOllama: llama-index-llms-ollama 0.11's `Ollama` on the in-process engine (no HTTP, no server).

    from ax_llm_provider.integrations.llamaindex import AXOllama
    llm = AXOllama(model="smollm2:135m", temperature=0)     # instead of Ollama(model=..., ...)

Same fields, defaults, methods and response shapes as `llama_index.llms.ollama.Ollama` (the parity
doc's section 3), with these differences:

- `base_url`, `request_timeout` and `headers` configure the HTTP client this package removes: accepted
  and ignored (the engine's own `request_timeout`/`stall_timeout` bound a request; a model load on the
  card takes 10-130 s, which a 30 s HTTP timeout would have cut). `client`/`async_client` accept an
  ax_llm_provider Client (its engine is used); `engine=` passes an Engine directly; the `client` and
  `async_client` properties return ollama-compatible in-process Clients on that engine.
- `metadata.context_window` is the model's usable context: the compiled KV capacity from show()'s
  `model_info["<arch>.context_length"]` (2047 for the SmolLM2 twin), not the trained length the
  reference reads (8192), and never more than that capacity when `context_window` is set; it is also
  what goes out as `options.num_ctx`. show() reports capacity and capabilities for a loaded model, so
  the first `metadata` access loads the model (what the first request would do anyway).
- `metadata.num_output` is `additional_kwargs["num_predict"]` when set > 0 (else 256, as the reference).
- `supports_native_tools` says whether the template has its own tool syntax (show()'s model_info
  "ax.tool_format" is "template"; a template without one gets the engine's generic tools prompt);
  `metadata.is_function_calling_model` is False when it has none and `emulate_tool_choice` is off
  (the small template-less models rarely call under "auto"), True otherwise (unless the field says False).
- Tool choice (Ollama has none): `tool_required=True` forces a call ("required"), per-call `tool_choice`
  (what FunctionAgent's `initial_tool_choice` sends: "auto", "none", "required"/"any" or a tool name;
  OpenAI's dict form is read too) or the `tool_choice` field. On a model whose template cannot express
  tools (SmolLM2's ChatML), "auto" is emulated while `emulate_tool_choice` is on: a forced call after a
  user turn, no call ("none") after tool results, so an agent loop calls its tool then answers. Such a
  model cannot decide whether a tool is needed: every user turn sent with tools gets a call.
- `allow_parallel_tool_calls=False` keeps the first call in streams too (the reference only in `chat`).
- Per call, `think=False` overrides a truthy `thinking` field (the reference's `or` cannot), and option
  kwargs (`temperature=`, `num_predict=`, `max_tokens=`, `stop=`, `options={...}`) merge into `options`.
- Tool calls keep the engine's ids; tool results are sent with `tool_call_id` and `tool_name`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from llama_index.core.base.llms.generic_utils import (
    achat_to_completion_decorator,
    astream_chat_to_completion_decorator,
    chat_to_completion_decorator,
    stream_chat_to_completion_decorator,
)
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW, DEFAULT_NUM_OUTPUTS
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection

from ..engine.engine import Engine
from ..engine.options import GenerationOptions
from ..ollama.client import AsyncClient, Client
from .llamaindex_common import (
    ModelFacts,
    achat_once,
    achat_stream,
    chat_once,
    chat_stream,
    model_facts,
    resolve_engine,
    shared_engine,
)
from .llamaindex_convert import StreamAccumulator, chat_response, parse_arguments, to_ollama_messages
from .llamaindex_structured import StructuredPredictMixin

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

DEFAULT_REQUEST_TIMEOUT = 30.0
_OPTION_KEYS = frozenset(GenerationOptions.model_fields)
_PARALLEL = "_ax_parallel_tool_calls"  # set by _prepare_chat_with_tools, read by the chat methods


def tool_choice_name(choice: Any) -> str | None:
    """A tool_choice as the engine's string: "auto"/"none"/"required"/"any"/<name>; OpenAI's dicts too."""
    if choice is None or isinstance(choice, str):
        return choice
    if isinstance(choice, dict):
        function = choice.get("function") or {}
        name = function.get("name") or choice.get("name")
        if name:
            return str(name)
        if choice.get("type") in ("required", "any", "auto", "none"):
            return str(choice["type"])
    raise ValueError(f"tool_choice must be a string or an OpenAI-style function dict, not {choice!r}")


class AXOllama(StructuredPredictMixin, FunctionCallingLLM):
    """Drop-in replacement for `llama_index.llms.ollama.Ollama` running on the in-process AX engine."""

    base_url: str = Field(default="http://localhost:11434",
                          description="Accepted for compatibility and ignored: the model runs in this process.")
    model: str = Field(description="The model to use (e.g. smollm2:135m, pulled and converted on first use).")
    temperature: float | None = Field(default=None, description="The temperature to use for sampling.")
    context_window: int = Field(
        default=-1, description="Context tokens; -1: the model's compiled capacity (never more than it).")
    request_timeout: float | None = Field(
        default=DEFAULT_REQUEST_TIMEOUT, description="Accepted and ignored (no HTTP); see the Engine's timeouts.")
    prompt_key: str = Field(default="prompt", description="The key to use for the prompt in API calls (unused).")
    json_mode: bool = Field(default=False, description='Whether to use JSON mode (format="json").')
    additional_kwargs: dict[str, Any] = Field(default_factory=dict,
                                              description="Additional Ollama options (merged into `options`).")
    is_function_calling_model: bool = Field(default=True, description="Whether the model is a function calling model.")
    keep_alive: float | str | None = Field(
        default="5m", description="How long the model stays loaded after a request "
                                  "(None: the engine default, forever).")
    thinking: bool | Literal["low", "medium", "high"] | None = Field(
        default=None, description="Enable or disable thinking (sent as `think`); None: the model's default.")
    headers: dict[str, str] | None = Field(default=None, description="Accepted and ignored (no HTTP).")
    tool_choice: str | None = Field(
        default=None, description='Default tool choice with tools: "auto", "none", "required"/"any" or a tool name.')
    emulate_tool_choice: bool = Field(
        default=True, description="On a template without tool syntax, emulate 'auto' "
                                  "with forced calls (see module doc).")

    _engine: Engine | None = PrivateAttr(default=None)
    _facts: ModelFacts | None = PrivateAttr(default=None)

    def __init__(self, model: str, base_url: str = "http://localhost:11434", temperature: float | None = None,
                 context_window: int = -1, request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
                 prompt_key: str = "prompt", json_mode: bool = False, additional_kwargs: dict[str, Any] | None = None,
                 client: Any = None, async_client: Any = None, is_function_calling_model: bool = True,
                 keep_alive: float | str | None = None,
                 thinking: bool | Literal["low", "medium", "high"] | None = None,
                 headers: dict[str, str] | None = None, *, engine: Engine | None = None, **kwargs: Any) -> None:
        super().__init__(model=model, base_url=base_url, temperature=temperature, context_window=context_window,
                         request_timeout=request_timeout, prompt_key=prompt_key, json_mode=json_mode,
                         additional_kwargs=additional_kwargs or {}, is_function_calling_model=is_function_calling_model,
                         keep_alive=keep_alive, thinking=thinking, headers=headers, **kwargs)
        self._engine = resolve_engine(resolve_engine(engine, client, "AXOllama"), async_client, "AXOllama")

    @classmethod
    def class_name(cls) -> str:
        return "AXOllama_llm"

    @property
    def engine(self) -> Engine:
        return shared_engine(self._engine)

    @property
    def client(self) -> Client:
        """An ollama-compatible Client on the same engine (the reference exposes its `ollama.Client`)."""
        return Client(engine=self._engine)

    @property
    def async_client(self) -> AsyncClient:
        return AsyncClient(engine=self._engine)

    # ---- model facts and metadata -------------------------------------------------------------

    def model_facts(self) -> ModelFacts:
        """show()'s usable context and capabilities (loads the model on first use; cached)."""
        if self._facts is None:
            self._facts = model_facts(self.engine, self.model, self.keep_alive)
        return self._facts

    def get_context_window(self) -> int:
        capacity = self.model_facts().context_length
        if self.context_window <= 0:
            return capacity or DEFAULT_CONTEXT_WINDOW
        return min(self.context_window, capacity) if capacity else self.context_window

    @property
    def supports_native_tools(self) -> bool:
        """The chat template has a tool syntax (show() capability "tools")."""
        return self.model_facts().tools

    @property
    def metadata(self) -> LLMMetadata:
        num_predict = self.additional_kwargs.get("num_predict")
        num_output = num_predict if isinstance(num_predict, int) and num_predict > 0 else DEFAULT_NUM_OUTPUTS
        calls = self.is_function_calling_model and (self.emulate_tool_choice or self.supports_native_tools)
        return LLMMetadata(context_window=self.get_context_window(), num_output=num_output, model_name=self.model,
                           is_chat_model=True, is_function_calling_model=calls)

    @property
    def _model_kwargs(self) -> dict[str, Any]:
        options = {"temperature": self.temperature, "num_ctx": self.get_context_window(), **self.additional_kwargs}
        return {k: v for k, v in options.items() if v is not None}

    # ---- requests -------------------------------------------------------------------------------

    def _chat_request(self, messages: Sequence[ChatMessage], stream: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Ollama's /api/chat body for these messages and call kwargs (pops what it uses)."""
        tools = kwargs.pop("tools", None)
        think = kwargs.pop("think", None)
        fmt = kwargs.pop("format", "json" if self.json_mode else None)
        options = self._model_kwargs
        call_options = kwargs.pop("options", None) or {}
        options.update({k: v for k, v in dict(call_options).items() if v is not None})
        if kwargs.get("max_tokens") is not None:
            options["num_predict"] = kwargs.pop("max_tokens")
        for key in [k for k in kwargs if k in _OPTION_KEYS]:
            value = kwargs.pop(key)
            if value is not None:
                options[key] = value
        ollama_messages = to_ollama_messages(messages)
        body: dict[str, Any] = {"model": self.model, "messages": ollama_messages, "stream": stream,
                                "options": options, "keep_alive": self.keep_alive,
                                "think": think if think is not None else self.thinking, "format": fmt}
        if tools:
            body["tools"] = list(tools)
            body["tool_choice"] = self._tool_choice(tool_choice_name(kwargs.pop("tool_choice", None)), ollama_messages)
        return {k: v for k, v in body.items() if v is not None}

    def _tool_choice(self, choice: str | None, messages: list[dict[str, Any]]) -> str:
        choice = choice or self.tool_choice or "auto"
        if choice.lower() != "auto" or not self.emulate_tool_choice or self.supports_native_tools:
            return choice
        last = messages[-1]["role"] if messages else "user"
        return "required" if last == MessageRole.USER.value else "none"

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        parallel = kwargs.pop(_PARALLEL, True)
        raw = chat_once(self.engine, self._chat_request(messages, False, kwargs))
        return chat_response(raw, parallel_tool_calls=parallel)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        parallel = kwargs.pop(_PARALLEL, True)
        raw = await achat_once(self.engine, self._chat_request(messages, False, kwargs))
        return chat_response(raw, parallel_tool_calls=parallel)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        parallel = kwargs.pop(_PARALLEL, True)
        body = self._chat_request(messages, True, kwargs)

        def gen() -> ChatResponseGen:
            acc = StreamAccumulator(parallel)
            for chunk in chat_stream(self.engine, body):
                response = acc.feed(chunk)
                if response is not None:
                    yield response

        return gen()

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        parallel = kwargs.pop(_PARALLEL, True)
        body = self._chat_request(messages, True, kwargs)

        async def gen() -> ChatResponseAsyncGen:
            acc = StreamAccumulator(parallel)
            async for chunk in achat_stream(self.engine, body):
                response = acc.feed(chunk)
                if response is not None:
                    yield response

        return gen()

    # ---- completion: through chat, as the reference (never /api/generate) ---------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return chat_to_completion_decorator(self.chat)(prompt, **kwargs)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await achat_to_completion_decorator(self.achat)(prompt, **kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return stream_chat_to_completion_decorator(self.stream_chat)(prompt, **kwargs)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False,
                               **kwargs: Any) -> CompletionResponseAsyncGen:
        return await astream_chat_to_completion_decorator(self.astream_chat)(prompt, **kwargs)

    # ---- tool calling (FunctionCallingLLM) ------------------------------------------------------

    def _prepare_chat_with_tools(self, tools: Sequence[BaseTool], user_msg: str | ChatMessage | None = None,
                                 chat_history: list[ChatMessage] | None = None, verbose: bool = False,
                                 allow_parallel_tool_calls: bool = False, tool_required: bool = False,
                                 tool_choice: Any = None, **kwargs: Any) -> dict[str, Any]:
        specs = [tool.metadata.to_openai_tool(skip_length_check=True) for tool in tools]
        if isinstance(user_msg, str):
            user_msg = ChatMessage(role=MessageRole.USER, content=user_msg)
        messages = list(chat_history or [])  # the reference appends to the caller's list
        if user_msg:
            messages.append(user_msg)
        prepared: dict[str, Any] = {"messages": messages, "tools": specs or None,
                                    _PARALLEL: allow_parallel_tool_calls}
        if tool_choice is None and tool_required:
            tool_choice = "required"
        if tool_choice is not None:
            prepared["tool_choice"] = tool_choice
        return prepared

    def _validate_chat_with_tools_response(self, response: ChatResponse, tools: Sequence[BaseTool],
                                           allow_parallel_tool_calls: bool = False, **kwargs: Any) -> ChatResponse:
        if not allow_parallel_tool_calls:
            calls = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
            if len(calls) > 1:
                response.message.blocks = [b for b in response.message.blocks
                                           if not isinstance(b, ToolCallBlock)] + [calls[0]]
        return response

    def get_tool_calls_from_response(self, response: ChatResponse, error_on_no_tool_call: bool = True,
                                     **kwargs: Any) -> list[ToolSelection]:
        calls = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
        if not calls:
            if error_on_no_tool_call:
                raise ValueError(f"Expected at least one tool call, but got {len(calls)} tool calls.")
            return []
        selections = []
        for call in calls:
            kwargs = parse_arguments(call.tool_kwargs)
            selections.append(ToolSelection(tool_id=call.tool_call_id or call.tool_name, tool_name=call.tool_name,
                                            tool_kwargs=kwargs if isinstance(kwargs, dict) else {}))
        return selections

