"""ChatAXOllama: langchain-ollama's ChatOllama, run in process on the AX650N engine (or its CPU twin).

    from ax_llm_provider.integrations.langchain import ChatAXOllama   # instead of langchain_ollama.ChatOllama
    llm = ChatAXOllama(model="smollm2:135m", temperature=0, num_predict=100)

Same fields, defaults and message conversion as ChatOllama 1.1; `base_url` and the `*client_kwargs`
are accepted and ignored (there is no server). Differences, all fixes of ChatOllama quirks:
`max_tokens` is num_predict; a call-level `stop` replaces the default (no "stop found in both"
error); a call's `options=` is merged over the field options instead of replacing them; per-call
option kwargs (`invoke(..., temperature=0.2)`) work; a per-call `model=` is reported to tracing;
`bind_tools(tool_choice=...)` reaches the engine; thinking is kept unless `reasoning=False`;
`response_metadata["ax"]` reports prefix-cache reuse, truncation and warnings, and
`usage_metadata.input_token_details.cache_read` the reused prompt tokens.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any, Literal, Self, cast

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel, LangSmithParams, generate_from_stream
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.output_parsers import (
    JsonOutputKeyToolsParser,
    JsonOutputParser,
    PydanticOutputParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel, PrivateAttr, field_validator, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic.v1 import BaseModel as BaseModelV1
from typing_extensions import is_typeddict

from ..engine.engine import Engine
from ..ollama.errors import aiterate, iterate
from .langchain_common import (
    EngineHolder,
    OllamaOptionFields,
    merge_call_options,
    pop_think,
    reject_unknown,
)
from .langchain_convert import (
    chat_chunk_from_response,
    messages_to_ollama,
    normalize_tool_choice,
    resolve_format,
)

# Call kwargs that become request fields (besides option names, `options`, `reasoning`/`think`, `model`).
_REQUEST_KWARGS = frozenset({"tools", "tool_choice", "format", "response_format", "logprobs", "top_logprobs",
                             "keep_alive", "truncate", "shift"})


class ChatAXOllama(EngineHolder, OllamaOptionFields, BaseChatModel):
    """Drop-in replacement for `langchain_ollama.ChatOllama` on the in-process AX engine.

    Construction is cheap (nothing is loaded); the model loads on the first call and stays resident
    (keep_alive). Pass `engine=Engine(...)` to use a specific engine instead of the shared one.
    """

    model: str
    """Model name (Ollama style, e.g. `smollm2:135m`)."""
    reasoning: bool | str | None = None
    """Thinking mode, sent as `think`: True/False/None or "low"/"medium"/"high". The trace is returned in
    `additional_kwargs["reasoning_content"]` (also with None, unlike ChatOllama; False drops it)."""
    logprobs: bool | None = None
    """Return per-token logprobs in `response_metadata["logprobs"]`."""
    top_logprobs: int | None = None
    """Alternatives per position (>= 1); setting it turns `logprobs` on."""
    format: Literal["", "json"] | JsonSchemaValue | None = None
    """Output format: "json" or a JSON schema (constrained decoding by the engine)."""
    tool_choice: str | None = None
    """Default tool choice for calls with tools: "auto", "any"/"required", "none" or a tool name (not in
    ChatOllama, whose `bind_tools` ignores tool_choice). `bind_tools(tool_choice=...)` overrides it."""

    _engine: Engine | None = PrivateAttr(default=None)

    def __init__(self, *args: Any, engine: Engine | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._attach_engine(engine)

    @field_validator("top_logprobs")
    @classmethod
    def _positive_top_logprobs(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("`top_logprobs` must be a positive integer.")
        return value

    @model_validator(mode="after")
    def _logprobs_for_top_logprobs(self) -> Self:
        if self.top_logprobs is not None and self.logprobs is not True:
            if self.logprobs is False:
                raise ValueError("`top_logprobs` is set but `logprobs` is explicitly `False`. Either set "
                                 "`logprobs=True` to use `top_logprobs`, or remove `top_logprobs`.")
            self.logprobs = True
            warnings.warn("`top_logprobs` is set but `logprobs` was not explicitly enabled. Setting "
                          "`logprobs=True` automatically.", UserWarning, stacklevel=2)  # ChatOllama's warning
        return self

    @property
    def max_tokens(self) -> int | None:
        """LangChain's name for num_predict."""
        return self.num_predict

    @property
    def _llm_type(self) -> str:
        return "chat-ax-ollama"

    # ---- request ------------------------------------------------------------------------------

    def _chat_request(self, messages: list[BaseMessage], stop: list[str] | None = None,
                      **kwargs: Any) -> dict[str, Any]:
        """The Ollama /api/chat body for these messages and call kwargs (ChatOllama's `_chat_params`)."""
        kwargs = dict(kwargs)
        options = merge_call_options(self.field_options(), stop, kwargs)
        request: dict[str, Any] = {
            "model": kwargs.pop("model", None) or self.model,
            "messages": messages_to_ollama(messages),
            "options": options,
        }
        think = pop_think(kwargs, self.reasoning)
        fmt = resolve_format(kwargs.pop("format", self.format), kwargs.pop("response_format", None))
        tools = kwargs.pop("tools", None)
        tool_choice = normalize_tool_choice(kwargs.pop("tool_choice", self.tool_choice), tools)
        logprobs = kwargs.pop("logprobs", self.logprobs)
        top_logprobs = kwargs.pop("top_logprobs", self.top_logprobs)
        keep_alive = kwargs.pop("keep_alive", self.keep_alive)
        extra: dict[str, Any] = {k: kwargs.pop(k) for k in ("truncate", "shift") if k in kwargs}
        reject_unknown(kwargs, _REQUEST_KWARGS, type(self).__name__)
        optional: dict[str, Any] = {"think": think, "format": fmt, "tools": tools or None,
                    "tool_choice": tool_choice if tools else None, "logprobs": logprobs,
                    "top_logprobs": top_logprobs, "keep_alive": keep_alive, **extra}
        request.update({k: v for k, v in optional.items() if v is not None})
        return request

    # ---- the one stream iterator (sync and async forms share the request and chunk conversion) ------

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        request = self._chat_request(messages, stop, **kwargs)
        reasoning = request.get("think")
        engine = self.engine
        produced = False
        for response in iterate(lambda: engine.chat(request)):
            chunk = chat_chunk_from_response(response, reasoning)
            if chunk is None:
                continue
            produced = True
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk
        if not produced:
            raise ValueError("No data received from the engine stream.")

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        request = self._chat_request(messages, stop, **kwargs)
        reasoning = request.get("think")
        engine = self.engine
        produced = False
        async for response in aiterate(lambda: engine.achat(request)):
            chunk = chat_chunk_from_response(response, reasoning)
            if chunk is None:
                continue
            produced = True
            if run_manager:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk
        if not produced:
            raise ValueError("No data received from the engine stream.")

    @staticmethod
    def _aggregate(chunks: list[ChatGenerationChunk]) -> ChatResult:
        """invoke's result: the chunks summed, with tool calls taken whole from the chunks that carried them
        (summing re-parses them leniently, which would turn an unparsable call into a valid empty one)."""
        result = generate_from_stream(iter(chunks))
        generation = result.generations[0]
        calls = [c for chunk in chunks for c in cast(AIMessageChunk, chunk.message).tool_calls]
        invalid = [c for chunk in chunks for c in cast(AIMessageChunk, chunk.message).invalid_tool_calls]
        generation.message = generation.message.model_copy(update={"tool_calls": calls, "invalid_tool_calls": invalid})
        return result

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return self._aggregate(list(self._stream(messages, stop, run_manager, **kwargs)))

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return self._aggregate([chunk async for chunk in self._astream(messages, stop, run_manager, **kwargs)])

    # ---- tracing ------------------------------------------------------------------------------

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        """Standard tracing params; a per-call `model=` is reported (ChatOllama reports self.model)."""
        call_options = kwargs.get("options")
        options: dict[str, Any] = call_options if isinstance(call_options, dict) else {}
        params = LangSmithParams(
            ls_provider="ollama",
            ls_model_name=kwargs.get("model") or self.model,
            ls_model_type="chat",
        )
        temperature = kwargs.get("temperature", options.get("temperature", self.temperature))
        if temperature is not None:
            params["ls_temperature"] = temperature
        max_tokens = kwargs.get("max_tokens", kwargs.get("num_predict", options.get("num_predict", self.num_predict)))
        if isinstance(max_tokens, int) and max_tokens > 0:
            params["ls_max_tokens"] = max_tokens
        if ls_stop := stop or options.get("stop") or self.stop:
            params["ls_stop"] = list(ls_stop)
        return params

    # ---- tools and structured output ----------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: dict | str | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (any form `convert_to_openai_tool` takes); `tool_choice` is passed to the engine:
        "auto", "any"/"required" (a call is forced), "none", a tool name, or True (the only tool)."""
        formatted = [convert_to_openai_tool(tool) for tool in tools]
        if tool_choice is not None:
            kwargs["tool_choice"] = normalize_tool_choice(tool_choice, formatted)
        return super().bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: dict | type,
        *,
        method: Literal["function_calling", "json_mode", "json_schema"] = "json_schema",
        include_raw: bool = False,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict | BaseModel]:
        """Structured output as ChatOllama: `json_schema` (default) sends the schema as `format`
        (constrained decoding), `function_calling` forces the schema's tool, `json_mode` sends
        format="json". `include_raw=True` returns {raw, parsed, parsing_error}."""
        kwargs.pop("strict", None)
        if kwargs:
            raise ValueError(f"Received unsupported arguments {kwargs}")
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        output_parser: Runnable
        if method == "function_calling":
            if schema is None:
                raise ValueError("schema must be specified when method is not 'json_mode'. Received None.")
            formatted = convert_to_openai_tool(schema)
            tool_name = formatted["function"]["name"]
            llm = self.bind_tools([schema], tool_choice=tool_name, ls_structured_output_format={
                "kwargs": {"method": method}, "schema": formatted})
            output_parser = (PydanticToolsParser(tools=[cast(type[BaseModel], schema)], first_tool_only=True)
                             if is_pydantic
                             else JsonOutputKeyToolsParser(key_name=tool_name, first_tool_only=True))
        elif method == "json_mode":
            llm = self.bind(format="json", ls_structured_output_format={
                "kwargs": {"method": method}, "schema": schema})
            output_parser = PydanticOutputParser(pydantic_object=schema) if is_pydantic else JsonOutputParser()  # type: ignore[arg-type]
        elif method == "json_schema":
            if schema is None:
                raise ValueError("schema must be specified when method is not 'json_mode'. Received None.")
            if is_pydantic:
                model_cls = cast(type[BaseModel], schema)
                json_schema = (model_cls.schema() if issubclass(model_cls, BaseModelV1)
                               else model_cls.model_json_schema())
                llm = self.bind(format=json_schema, ls_structured_output_format={
                    "kwargs": {"method": method}, "schema": schema})
                output_parser = PydanticOutputParser(pydantic_object=model_cls)
            else:
                if is_typeddict(schema):
                    json_schema = convert_to_json_schema(schema)
                    json_schema.setdefault("required", list(json_schema.get("properties", {})))
                else:
                    json_schema = cast(dict, schema)
                llm = self.bind(format=json_schema, ls_structured_output_format={
                    "kwargs": {"method": method}, "schema": json_schema})
                output_parser = JsonOutputParser()
        else:
            raise ValueError("Unrecognized method argument. Expected one of 'function_calling', 'json_schema', "
                             f"or 'json_mode'. Received: '{method}'")
        if include_raw:
            parser_assign = RunnablePassthrough.assign(parsed=itemgetter("raw") | output_parser,
                                                       parsing_error=lambda _: None)
            parser_none = RunnablePassthrough.assign(parsed=lambda _: None)
            with_fallback = parser_assign.with_fallbacks([parser_none], exception_key="parsing_error")
            return RunnableMap(raw=llm) | with_fallback
        return llm | output_parser
