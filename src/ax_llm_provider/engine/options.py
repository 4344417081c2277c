"""Ollama's `options` object: every option, Ollama's server defaults and types, validated once.

Ollama's rules (api/types.go `Options.FromMap`, `DefaultOptions`), followed here:

- a `null` value means "not set" (the default stays);
- unknown keys are ignored with a warning, never an error;
- options removed from the server in v0.6.9 (`mirostat*`, `tfs_z`, `penalize_newline`, `numa`, ...)
  are accepted and ignored: langchain-ollama still sends some of them;
- a wrong type is a request error (`option "top_k" must be of type integer`).

Types follow Ollama/pydantic lax mode where that is sensible: an integral float (JSON `40.0`) is an
integer, an int is a float; strings are never numbers, bools are never numbers, NaN/inf are refused.
Ranges are not checked (Ollama does not either); the special values are documented per field and
resolved by the helpers at the bottom of `GenerationOptions`.
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

log = logging.getLogger(__name__)

# Removed from the Ollama server (v0.6.9 and earlier), still declared by `ollama.Options` and sent
# by langchain-ollama: accepted, ignored, one warning per option per process.
REMOVED_OPTIONS: frozenset[str] = frozenset({
    "mirostat", "mirostat_tau", "mirostat_eta", "tfs_z", "penalize_newline",
    "numa", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mlock", "embedding_only",
})

# Runner options Ollama uses to load a model; in process the compiled model fixes all of them.
NO_EFFECT_OPTIONS: frozenset[str] = frozenset({
    "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread", "draft_num_predict",
})

# Names people send by mistake (OpenAI/HF habits), to make the unknown-key warning actionable.
_DID_YOU_MEAN = {
    "max_tokens": "num_predict", "max_new_tokens": "num_predict", "n_predict": "num_predict",
    "context_window": "num_ctx", "n_ctx": "num_ctx", "context_length": "num_ctx",
    "stop_sequences": "stop", "repetition_penalty": "repeat_penalty", "top_logprobs": "(request field)",
}

_WARNED: set[str] = set()
_WARNED_MAX = 1024  # unknown keys come from clients: bound what is remembered
_WARNED_LOCK = threading.Lock()


class InvalidOptionError(ValueError):
    """An option has a value of the wrong type; the message names option, value and expected type."""

    def __init__(self, option: str, value: Any, expected: str) -> None:
        self.option, self.value, self.expected = option, value, expected
        super().__init__(
            f'option "{option}" must be of type {expected}, got {value!r} ({type(value).__name__}); '
            f'fix or remove "{option}" in the request\'s options'
        )


def _type_error(expected: str) -> PydanticCustomError:
    return PydanticCustomError("ollama_type", "expected {expected}", {"expected": expected})


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _type_error("integer")
    if isinstance(value, numbers.Integral):
        return int(value)
    as_float = float(value)
    if as_float.is_integer():  # JSON numbers often arrive as floats (Ollama accepts them too)
        return int(as_float)
    raise _type_error("integer")


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _type_error("number")
    as_float = float(value)
    if not math.isfinite(as_float):
        raise _type_error("finite number")
    return as_float


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _type_error("boolean")
    return value


def _stop_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(s, str) for s in value):
        raise _type_error("string or array of strings")
    # "" would match at once and end every generation; duplicates only cost time
    return tuple(dict.fromkeys(s for s in value if s))


Int = Annotated[int, BeforeValidator(_integer)]
Float = Annotated[float, BeforeValidator(_number)]
Bool = Annotated[bool, BeforeValidator(_boolean)]
StopList = Annotated[tuple[str, ...], BeforeValidator(_stop_list)]


class GenerationOptions(BaseModel):
    """Ollama's options with Ollama's server defaults (`api.DefaultOptions()`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # ---- load-time ("Runner") options -------------------------------------------------------------
    num_ctx: Int = Field(default=4096, description=(
        "Context window in tokens. The effective window is min(num_ctx, the model's compiled "
        "capacity); <= 0 means the compiled capacity. Ollama's default on small machines is 4096."))
    num_batch: Int = Field(default=512,
                           description="Accepted, no effect: the prefill chunk is compiled into the model.")
    num_gpu: Int = Field(default=-1, description="Accepted, no effect: every layer runs on the NPU.")
    main_gpu: Int | None = Field(default=None,
                                 description="Accepted, no effect: the device is chosen when the engine starts.")
    use_mmap: Bool | None = Field(default=None, description="Accepted, no effect.")
    num_thread: Int = Field(default=0, description="Accepted, no effect: host work is a few numpy calls per token.")
    draft_num_predict: Int = Field(default=4, description="Accepted, no effect: no speculative decoding.")

    # ---- predict-time options ---------------------------------------------------------------------
    num_keep: Int = Field(default=4, description=(
        "Prompt tokens kept at the start when a prompt is truncated to fit; -1 keeps all."))
    seed: Int = Field(default=-1, description="RNG seed; >= 0 reproduces a generation, < 0 draws fresh entropy.")
    num_predict: Int = Field(default=-1, description=(
        "Maximum tokens to generate; -1 (until a stop or EOS) and -2 (fill the context) both end at "
        "the context capacity, because the compiled KV cache cannot shift. Hitting it gives "
        "done_reason 'length'. 0 evaluates the prompt into the prefix cache and generates nothing "
        "(done_reason 'length', eval_count 0), so a later prompt that extends it prefills only the rest."))
    top_k: Int = Field(default=40, description="Keep the k most likely tokens; <= 0 disables.")
    top_p: Float = Field(default=0.9, description="Nucleus: keep the smallest set with this much mass; >= 1 disables.")
    min_p: Float = Field(default=0.0, description="Drop tokens below min_p x the top probability; <= 0 disables.")
    typical_p: Float = Field(default=1.0, description="Locally typical sampling mass; >= 1 disables.")
    repeat_last_n: Int = Field(default=64, description="Tokens looked back for penalties; 0 disables, -1 = num_ctx.")
    temperature: Float = Field(default=0.8, description="Softmax temperature; <= 0 is greedy (no randomness).")
    repeat_penalty: Float = Field(default=1.0, description=(
        "Divide positive / multiply negative logits of recent tokens (llama.cpp); 1 or <= 0 disables."))
    presence_penalty: Float = Field(default=0.0, description="Subtracted once from every recent token's logit.")
    frequency_penalty: Float = Field(default=0.0, description="Subtracted per occurrence from recent tokens' logits.")
    stop: StopList = Field(default=(), description=(
        "Stop strings (a string or a list); output ends before the first one, which is never emitted."))

    # ---- special values resolved ------------------------------------------------------------------
    def context_size(self, capacity: int) -> int:
        """The effective window: min(num_ctx, compiled capacity); num_ctx <= 0 means the capacity."""
        return capacity if self.num_ctx <= 0 else min(self.num_ctx, capacity)

    def max_new_tokens(self) -> int | None:
        """The num_predict limit, or None when only a stop, EOS or the context ends generation."""
        return self.num_predict if self.num_predict > 0 else None

    def penalty_window(self, context_size: int) -> int:
        """How many recent tokens the penalties look at (0 = penalties off)."""
        return context_size if self.repeat_last_n < 0 else self.repeat_last_n

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def rng_seed(self) -> int | None:
        """The seed to reproduce with, or None for fresh entropy."""
        return self.seed if self.seed >= 0 else None


OPTION_NAMES: frozenset[str] = frozenset(GenerationOptions.model_fields)


def _warn_once(key: str, message: str) -> None:
    with _WARNED_LOCK:
        if key in _WARNED or len(_WARNED) >= _WARNED_MAX:
            return
        _WARNED.add(key)
    log.warning(message)


def _reset_warnings() -> None:
    """Forget which warnings were logged (tests)."""
    with _WARNED_LOCK:
        _WARNED.clear()


def parse_options(
    raw: Mapping[str, Any] | None, *, base: GenerationOptions | None = None
) -> tuple[GenerationOptions, list[str]]:
    """Validate a request's `options` over `base` (model defaults) or Ollama's defaults.

    Returns the options and the warnings for this request (removed and unknown keys), which the
    caller may surface in response metadata; each warning is also logged once per process.
    Raises InvalidOptionError for a wrong type.
    """
    base = base if base is not None else GenerationOptions()
    if raw is None:
        return base, []
    if not isinstance(raw, Mapping):
        raise InvalidOptionError("options", raw, "object (option name -> value)")
    given: dict[str, Any] = {}
    warnings: list[str] = []
    for key, value in raw.items():
        if key in OPTION_NAMES:
            if value is not None:  # null = not set, as in Ollama
                given[key] = value
        elif key in REMOVED_OPTIONS:
            msg = f"option {key!r} was removed from Ollama (v0.6.9) and is ignored"
            warnings.append(msg)
            _warn_once(f"removed:{key}", msg)
        else:
            hint = _DID_YOU_MEAN.get(key) if isinstance(key, str) else None
            msg = f"unknown option {key!r} ignored" + (f"; did you mean {hint!r}?" if hint else "")
            warnings.append(msg)
            _warn_once(f"unknown:{key!r}", msg)
    if not given:
        return base, warnings
    try:
        parsed = GenerationOptions.model_validate(given)
    except ValidationError as exc:
        err = exc.errors()[0]
        option = str(err["loc"][0])
        expected = (err.get("ctx") or {}).get("expected") or err["msg"]
        raise InvalidOptionError(option, given.get(option), str(expected)) from None
    return base.model_copy(update={k: getattr(parsed, k) for k in given}), warnings
