"""What ChatAXOllama, AXOllamaLLM and AXOllamaEmbeddings share: Ollama's option fields, the engine, errors.

The fields carry langchain-ollama 1.1's names, types and defaults (all None: "let the engine use
Ollama's default"), plus the Ollama options ChatOllama lacks. `base_url` and the `*client_kwargs`
configure the HTTP client that this package removes: they are accepted so ChatOllama code runs
unchanged, and ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from ..engine.default import get_engine
from ..engine.engine import Engine
from ..model.derived import base_name
from ..model.errors import ModelNotFoundError
from ..model.registry import lookup
from ..model.store import ModelStore, normalize_name

# Option fields ChatOllama / OllamaLLM declare, in their order, then the ones only reachable through
# `options=` there. `max_tokens` (LangChain's standard name) is an alias of num_predict.
CHAT_OPTION_FIELDS = (
    "mirostat", "mirostat_eta", "mirostat_tau", "num_ctx", "num_gpu", "num_thread", "num_predict",
    "repeat_last_n", "repeat_penalty", "temperature", "seed", "stop", "tfs_z", "top_k", "top_p",
    "min_p", "typical_p", "presence_penalty", "frequency_penalty", "num_keep",
)
# Every key the engine's `options` accepts, so per-call `invoke(..., temperature=0.2)` works too.
CALL_OPTION_KEYS = frozenset(CHAT_OPTION_FIELDS) | {"num_batch", "main_gpu", "use_mmap", "draft_num_predict"}


def validate_model_name(model: str, engine: Engine | None) -> None:
    """validate_model_on_init, in process: the model is in the store or a registry name we can pull.

    Nothing is loaded and no engine is created; raises ValueError as ChatOllama does.
    """
    store = engine.store if engine is not None else ModelStore()
    try:
        store.resolve(base_name(store, model))  # a model made by `create` is valid when its base is
        return
    except ModelNotFoundError:
        pass
    except ValueError as exc:  # an invalid name
        raise ValueError(str(exc)) from exc
    if lookup(normalize_name(model)) is not None:
        return  # pulled and converted automatically on first use
    available = ", ".join(m.name for m in store.list()) or "none"
    raise ValueError(
        f"Model `{model}` not found in the model store {store.root}. Pull it (`ax-llm pull {model}`) or "
        f"specify a valid model name. Available local models: {available}"
    )


class EngineHolder:
    """The `engine=` constructor argument (tests, services with their own Engine), else the shared one."""

    if TYPE_CHECKING:
        model: str  # a field of every class that mixes this in (ChatAXOllama, AXOllamaLLM, AXOllamaEmbeddings)

    @property
    def engine(self) -> Engine:
        engine: Engine | None = getattr(self, "_engine", None)
        return engine if engine is not None else get_engine()

    def _attach_engine(self, engine: Engine | None) -> None:
        """Called by each class's __init__: keep `engine=`, check the model name when asked to."""
        self._engine = engine
        if getattr(self, "validate_model_on_init", False):
            try:
                validate_model_name(self.model, engine)
            except ValueError as exc:  # ChatOllama validates in a model validator: pydantic wraps the ValueError
                raise ValidationError.from_exception_data(type(self).__name__, [
                    {"type": "value_error", "loc": (), "input": self.model, "ctx": {"error": exc}}]) from exc


class OllamaOptionFields(BaseModel):
    """Ollama's generation options as fields (None = the engine's Ollama default)."""

    mirostat: int | None = None
    """Removed from Ollama (v0.6.9): accepted and ignored with a warning in `response_metadata["ax"]`."""
    mirostat_eta: float | None = None
    """Removed from Ollama: accepted and ignored."""
    mirostat_tau: float | None = None
    """Removed from Ollama: accepted and ignored."""
    num_ctx: int | None = None
    """Context window in tokens (capped at the model's compiled capacity; default 4096)."""
    num_gpu: int | None = None
    """Accepted, no effect: every layer runs on the NPU."""
    num_thread: int | None = None
    """Accepted, no effect."""
    num_predict: int | None = None
    """Maximum tokens to generate (`max_tokens` is accepted as an alias). -1: until stop/EOS."""
    repeat_last_n: int | None = None
    """How far back the repeat penalties look (default 64, 0 = off, -1 = num_ctx)."""
    repeat_penalty: float | None = None
    """Repetition penalty (default 1.0 = off)."""
    temperature: float | None = None
    """Sampling temperature (default 0.8; 0 = greedy)."""
    seed: int | None = None
    """Random seed; a fixed seed reproduces a generation."""
    stop: list[str] | None = None
    """Stop strings. A call-level `stop` replaces these (no "stop found in both" error)."""
    tfs_z: float | None = None
    """Removed from Ollama: accepted and ignored."""
    top_k: int | None = None
    """Top-k sampling (default 40)."""
    top_p: float | None = None
    """Nucleus sampling (default 0.9)."""
    # ---- beyond ChatOllama's fields (there only reachable through `options=`) ----
    min_p: float | None = None
    """Drop tokens below min_p x the top probability (default 0 = off)."""
    typical_p: float | None = None
    """Locally typical sampling (default 1.0 = off)."""
    presence_penalty: float | None = None
    """Subtracted once from each recently seen token's logit (default 0)."""
    frequency_penalty: float | None = None
    """Subtracted per occurrence from recently seen tokens' logits (default 0)."""
    num_keep: int | None = None
    """Prompt tokens kept at the start when a prompt must be truncated (default 4; -1 = all)."""

    keep_alive: int | str | None = None
    """How long the model stays loaded after a request (Ollama semantics; the engine default is forever)."""
    validate_model_on_init: bool = False
    """Check at construction that the model is in the store or pullable (no load, no network)."""
    base_url: str | None = None
    """Accepted for ChatOllama compatibility and ignored: the model runs in this process."""
    client_kwargs: dict | None = Field(default_factory=dict)
    """Accepted and ignored (httpx settings of the removed HTTP client)."""
    async_client_kwargs: dict | None = Field(default_factory=dict)
    """Accepted and ignored."""
    sync_client_kwargs: dict | None = Field(default_factory=dict)
    """Accepted and ignored."""

    @model_validator(mode="before")
    @classmethod
    def _alias_max_tokens(cls, values: Any) -> Any:
        """LangChain's `max_tokens` means num_predict (ChatOllama silently drops it)."""
        if isinstance(values, dict) and "max_tokens" in values:
            values = dict(values)
            max_tokens = values.pop("max_tokens")
            if values.get("num_predict") is None:
                values["num_predict"] = max_tokens
        return values

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def field_options(self, names: tuple[str, ...] = CHAT_OPTION_FIELDS) -> dict[str, Any]:
        """The options set on this object (None dropped; an empty stop list means no stop)."""
        options = {name: getattr(self, name) for name in names}
        return {k: v for k, v in options.items() if v is not None and not (k == "stop" and not v)}


def merge_call_options(base: dict[str, Any], stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Field options, then a call's `options=` on top (merged, not replacing), then per-call option kwargs.

    Pops what it uses from `kwargs`. ChatOllama lets `options=` replace every field option; merging is
    what users expect (parity doc pain point 10) and is a superset for code that sets both.
    """
    options = dict(base)
    call_options = kwargs.pop("options", None)
    if call_options is not None:
        if isinstance(call_options, BaseModel):
            call_options = call_options.model_dump(exclude_none=True)
        if not isinstance(call_options, Mapping):
            raise TypeError(f"options must be a dict or ollama.Options, not {type(call_options).__name__}")
        options.update({k: v for k, v in call_options.items() if v is not None})
    if "max_tokens" in kwargs:
        max_tokens = kwargs.pop("max_tokens")
        if max_tokens is not None:
            options["num_predict"] = max_tokens
    for key in [k for k in kwargs if k in CALL_OPTION_KEYS]:
        value = kwargs.pop(key)
        if value is not None:
            options[key] = value
    if stop is not None:  # a call-level stop overrides the default, including an empty default
        options["stop"] = list(stop)
    if not options.get("stop"):
        options.pop("stop", None)
    return options


def pop_think(kwargs: dict[str, Any], default: bool | str | None) -> bool | str | None:
    """`reasoning=` (LangChain) or `think=` (Ollama) for this call."""
    if "reasoning" in kwargs:
        kwargs.pop("think", None)
        return kwargs.pop("reasoning")
    return kwargs.pop("think", default)


def reject_unknown(kwargs: dict[str, Any], accepted: frozenset[str], what: str) -> None:
    """Unknown call kwargs fail loudly (ChatOllama's client raises TypeError for them too)."""
    for key in ("strict", "stream", "parallel_tool_calls"):  # meaningless here; LangChain layers send them
        kwargs.pop(key, None)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise TypeError(
            f"{what} got unexpected keyword argument(s) {unknown}; accepted: {sorted(accepted | CALL_OPTION_KEYS)}"
        )
