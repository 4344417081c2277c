"""Structured outputs for AXOllama, as llama-index-llms-ollama 0.11: `format=<the class's JSON schema>`.

With `pydantic_program_mode == DEFAULT` the request carries `format=output_cls.model_json_schema()`
and the engine constrains decoding to that schema (llguidance grammar, engine/decoding/constraints.py), so the
content always parses; `output_cls.model_validate_json(content)` then checks the values. Other modes
fall back to LlamaIndex's base implementation (FUNCTION mode goes through a forced tool call).
Streaming yields partial objects (`FlexibleModel`s while the JSON is incomplete), parse errors of
partial text are skipped, as in the reference.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from typing import TYPE_CHECKING, Any

from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.llms.llm import Model
from llama_index.core.program.utils import FlexibleModel, process_streaming_objects
from llama_index.core.prompts import PromptTemplate
from llama_index.core.types import PydanticProgramMode
from pydantic import ValidationError

if TYPE_CHECKING:
    from llama_index.core.base.llms.types import ChatResponse

dispatcher = get_dispatcher(__name__)


def _schema_kwargs(output_cls: type[Model], llm_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    kwargs = dict(llm_kwargs or {})
    kwargs["format"] = output_cls.model_json_schema()
    return kwargs


def _partial(response: ChatResponse, output_cls: type[Model], current: list[Any] | None) -> Any:
    """The partial object(s) of a cumulative streamed response, or None when the text does not parse yet."""
    try:
        return process_streaming_objects(response, output_cls, cur_objects=current,
                                         allow_parallel_tool_calls=False, flexible_mode=True)
    except (ValueError, ValidationError, TypeError):
        return None


class StructuredPredictMixin:
    """`structured_predict` and friends through the engine's schema-constrained `format`."""

    pydantic_program_mode: PydanticProgramMode

    @dispatcher.span
    def structured_predict(self, output_cls: type[Model], prompt: PromptTemplate,
                           llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any) -> Model:
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return super().structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)  # type: ignore[misc]
        response = self.chat(prompt.format_messages(**prompt_args), **_schema_kwargs(output_cls, llm_kwargs))  # type: ignore[attr-defined]
        return output_cls.model_validate_json(response.message.content or "")

    @dispatcher.span
    async def astructured_predict(self, output_cls: type[Model], prompt: PromptTemplate,
                                  llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any) -> Model:
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return await super().astructured_predict(output_cls, prompt, llm_kwargs, **prompt_args)  # type: ignore[misc]
        response = await self.achat(prompt.format_messages(**prompt_args), **_schema_kwargs(output_cls, llm_kwargs))  # type: ignore[attr-defined]
        return output_cls.model_validate_json(response.message.content or "")

    @dispatcher.span
    def stream_structured_predict(self, output_cls: type[Model], prompt: PromptTemplate,
                                  llm_kwargs: dict[str, Any] | None = None,
                                  **prompt_args: Any) -> Generator[Model | FlexibleModel, None, None]:
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return super().stream_structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)  # type: ignore[misc]
        messages = prompt.format_messages(**prompt_args)
        kwargs = _schema_kwargs(output_cls, llm_kwargs)

        def gen() -> Generator[Model | FlexibleModel, None, None]:
            current: list[Any] | None = None
            for response in self.stream_chat(messages, **kwargs):  # type: ignore[attr-defined]
                objects = _partial(response, output_cls, current)
                if objects is not None:
                    current = objects if isinstance(objects, list) else [objects]
                    yield objects

        return gen()

    @dispatcher.span
    async def astream_structured_predict(self, output_cls: type[Model], prompt: PromptTemplate,
                                         llm_kwargs: dict[str, Any] | None = None,
                                         **prompt_args: Any) -> AsyncGenerator[Model | FlexibleModel, None]:
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return await super().astream_structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)  # type: ignore[misc]
        messages = prompt.format_messages(**prompt_args)
        kwargs = _schema_kwargs(output_cls, llm_kwargs)

        async def gen() -> AsyncGenerator[Model | FlexibleModel, None]:
            current: list[Any] | None = None
            async for response in await self.astream_chat(messages, **kwargs):  # type: ignore[attr-defined]
                objects = _partial(response, output_cls, current)
                if objects is not None:
                    current = objects if isinstance(objects, list) else [objects]
                    yield objects

        return gen()
