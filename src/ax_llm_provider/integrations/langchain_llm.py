"""AXOllamaLLM: langchain-ollama's OllamaLLM (Ollama /api/generate) run in process.

    from ax_llm_provider.integrations.langchain import AXOllamaLLM    # instead of langchain_ollama.OllamaLLM
    llm = AXOllamaLLM(model="smollm2:135m", num_predict=64)
    llm.invoke("Once upon a time", system="You tell short stories.")

Generate semantics: call kwargs `system`, `raw`, `context` (token ids from a previous
`generation_info["context"]`), `images`, `suffix`, `format`, `reasoning`/`think`, `keep_alive`,
`options` and any option name. Same fixes as ChatAXOllama: `max_tokens` is num_predict, a call-level
`stop` replaces the default, `options=` merges, a per-call `model=` is traced.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM, LangSmithParams
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from pydantic import PrivateAttr
from pydantic.json_schema import JsonSchemaValue

from ..engine.engine import Engine
from ..engine.responses import GenerateChunk
from ..ollama.errors import aiterate, iterate
from .langchain_common import (
    EngineHolder,
    OllamaOptionFields,
    merge_call_options,
    pop_think,
    reject_unknown,
)
from .langchain_convert import final_generation_info, is_empty_load

_REQUEST_KWARGS = frozenset({"system", "raw", "context", "images", "suffix", "template", "format", "logprobs",
                             "top_logprobs", "keep_alive", "truncate", "shift"})


def _generation_chunk(response: GenerateChunk, reasoning: bool | str | None) -> GenerationChunk | None:
    text = response.get("response") or ""
    if is_empty_load(response, text):
        return None
    info: dict[str, Any] = {}
    thinking = response.get("thinking")
    if thinking and reasoning is not False:
        info["reasoning_content"] = thinking
    if response.get("logprobs") is not None and response.get("done") is not True:
        info["logprobs"] = response["logprobs"]
    if response.get("done") is True:
        # OllamaLLM's final generation_info: the whole final response (context, counters, done_reason).
        info.update(final_generation_info(response))
        info["finish_reason"] = response.get("done_reason")
    return GenerationChunk(text=text, generation_info=info or None)


class AXOllamaLLM(EngineHolder, OllamaOptionFields, BaseLLM):
    """Drop-in replacement for `langchain_ollama.OllamaLLM` on the in-process AX engine."""

    model: str
    """Model name (Ollama style, e.g. `smollm2:135m`)."""
    reasoning: bool | str | None = None
    """Thinking mode, sent as `think`; the trace lands in generation_info["thinking"]."""
    format: Literal["", "json"] | JsonSchemaValue | None = ""
    """"json" or a JSON schema (OllamaLLM accepts only "" / "json")."""

    _engine: Engine | None = PrivateAttr(default=None)

    def __init__(self, *args: Any, engine: Engine | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._attach_engine(engine)

    @property
    def max_tokens(self) -> int | None:
        return self.num_predict

    @property
    def _llm_type(self) -> str:
        return "ax-ollama-llm"

    def _generate_request(self, prompt: str, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        """The Ollama /api/generate body (OllamaLLM's `_generate_params`)."""
        kwargs = dict(kwargs)
        options = merge_call_options(self.field_options(), stop, kwargs)
        request: dict[str, Any] = {"model": kwargs.pop("model", None) or self.model, "prompt": prompt,
                                   "options": options}
        think = pop_think(kwargs, self.reasoning)
        fmt = kwargs.pop("format", self.format) or None
        keep_alive = kwargs.pop("keep_alive", self.keep_alive)
        passed = {k: kwargs.pop(k) for k in list(kwargs) if k in _REQUEST_KWARGS}
        reject_unknown(kwargs, _REQUEST_KWARGS, type(self).__name__)
        optional = {"think": think, "format": fmt, "keep_alive": keep_alive, **passed}
        request.update({k: v for k, v in optional.items() if v is not None})
        return request

    # ---- the one stream iterator -------------------------------------------------------------------

    def _stream(self, prompt: str, stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[GenerationChunk]:
        request = self._generate_request(prompt, stop, **kwargs)
        reasoning = request.get("think")
        engine = self.engine
        for response in iterate(lambda: engine.generate(request)):
            chunk = _generation_chunk(response, reasoning)
            if chunk is None:
                continue
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(self, prompt: str, stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[GenerationChunk]:
        request = self._generate_request(prompt, stop, **kwargs)
        reasoning = request.get("think")
        engine = self.engine
        async for response in aiterate(lambda: engine.agenerate(request)):
            chunk = _generation_chunk(response, reasoning)
            if chunk is None:
                continue
            if run_manager:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    @staticmethod
    def _aggregate(chunks: list[GenerationChunk]) -> GenerationChunk:
        if not chunks:
            raise ValueError("No data received from the engine stream.")
        final = chunks[0]
        for chunk in chunks[1:]:
            final += chunk
        info = dict(final.generation_info or {})
        thinking = info.pop("reasoning_content", None)
        if thinking:
            info["thinking"] = thinking  # OllamaLLM's key for the whole trace
        info.pop("logprobs", None)
        logprobs = [lp for c in chunks for lp in (c.generation_info or {}).get("logprobs") or []]
        if logprobs:
            info["logprobs"] = logprobs
        return GenerationChunk(text=final.text, generation_info=info or None)

    def _generate(self, prompts: list[str], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
        generations: list[list[Generation]] = [
            [self._aggregate(list(self._stream(prompt, stop, run_manager, **kwargs)))] for prompt in prompts
        ]
        return LLMResult(generations=generations)

    async def _agenerate(self, prompts: list[str], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
        generations: list[list[Generation]] = []
        for prompt in prompts:
            chunks = [c async for c in self._astream(prompt, stop, run_manager, **kwargs)]
            generations.append([self._aggregate(chunks)])
        return LLMResult(generations=generations)

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "ollama"
        params["ls_model_name"] = kwargs.get("model") or self.model
        max_tokens = kwargs.get("max_tokens", kwargs.get("num_predict", self.num_predict))
        if isinstance(max_tokens, int) and max_tokens > 0:
            params["ls_max_tokens"] = max_tokens
        if not stop and self.stop:
            params["ls_stop"] = list(self.stop)
        return params
