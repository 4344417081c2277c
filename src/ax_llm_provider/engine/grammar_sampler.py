"""Constrained sampling: the grammar's token mask before the sampler, computed off the critical path.

`GuidedSampler` wraps the request's sampler (`(logits, history) -> token`, as generator.py calls it):

    sample t:  take mask(t) -> mask logits -> sample -> matcher.consume(t) -> submit mask(t+1)
    (generator) stack.decode(t)  ... runs on the device while a worker thread fills mask(t+1)
    sample t+1: take mask(t+1) (usually ready: the wait is ~0) -> ...

llguidance drops the GIL while it fills a mask, and the device call (onnxruntime, AXCL) does too,
so the two overlap; the first mask overlaps the prefill. One worker thread serves every request:
requests run one at a time on the device thread anyway.

Masking: few allowed tokens (keys, punctuation, enums) -> the sampler runs on the allowed logits
alone (exactly the same draw when no penalties or logprobs need whole-vocabulary ids), one allowed
token is taken without sampling; many allowed (string bodies) -> disallowed logits become -inf.

Thinking (two phases, as Ollama): unconstrained while the model thinks, constrained from the first
answer token. `thinking="inside"` when the prompt opened the trace; `"maybe"` when the model may
open one: the first step allows the `<think>` token besides what the grammar allows.

Near the end of the token budget (num_predict or the context) the output must still close: see
`closing.py`. The sampler knows how many tokens the shortest deterministic completion needs from
the current state (computed by the worker with the masks) and, once the budget gets close, accepts
the model's token only if a completion still fits after it, else takes the completion's token.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .closing import Closer, JsonShape
from .constraints import GrammarCompiler, GrammarSpec
from .errors import EngineError

Sampler = Callable[[np.ndarray, Sequence[int]], int]

_NEG_INF = np.float32(-np.inf)
_WATCH = 256  # within this many tokens of the budget, the shortest completion is measured every step
_REFRESH = 16  # otherwise every this many steps
_MARGIN = 8
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def mask_executor() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ax-grammar-mask")
        return _executor


@dataclass
class Mask:
    ids: np.ndarray  # allowed ids, ascending
    blocked: np.ndarray | None = None  # bool [vocab], when many tokens are allowed

    def allows(self, token: int) -> bool:
        if self.blocked is not None:
            return 0 <= token < self.blocked.size and not bool(self.blocked[token])
        i = int(np.searchsorted(self.ids, token))
        return i < self.ids.size and int(self.ids[i]) == token

    def plus(self, token: int) -> Mask:
        if self.allows(token):
            return self
        ids = np.union1d(self.ids, np.array([token], dtype=self.ids.dtype))
        blocked = None
        if self.blocked is not None:
            blocked = self.blocked.copy()
            blocked[token] = False
        return Mask(ids, blocked)


@dataclass
class GuidedStats:
    masks: int = 0
    mask_ns: int = 0  # filling masks (worker thread, or inline)
    wait_ns: int = 0  # what the sampling step waited for a mask (the critical-path cost)
    apply_ns: int = 0  # masking the logits and sampling
    closing_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class GuidedSampler:
    """A grammar-constrained `(logits, history) -> token` for one request (see the module doc)."""

    def __init__(self, compiler: GrammarCompiler, spec: GrammarSpec, base: Sampler, *,
                 max_tokens: int | None = None, thinking: str = "off", think_open: int | None = None,
                 think_close: bytes = b"</think>", compact: bool = True, overlap: bool = True,
                 want_logprobs: bool = False) -> None:
        self.compiler, self.spec, self.base = compiler, spec, base
        self.matcher = compiler.matcher(spec)
        self.vocab = compiler.vocab
        self._words = (self.vocab + 31) // 32
        self.max_tokens = max_tokens
        self.state = {"off": "active", "inside": "thinking", "maybe": "maybe"}[thinking]
        if self.state == "maybe" and think_open is None:
            self.state = "active"  # no single <think> token to offer: constrained from the start
        self.think_open, self.think_close = think_open, think_close
        self.compact, self.overlap, self.want_logprobs = compact, overlap, want_logprobs
        self.count = 0
        self.finished = False
        self.shape = JsonShape()
        self.stats = GuidedStats()
        self.closer = Closer(compiler)
        self.need: int | None = None  # tokens the shortest completion needs from the current state
        self._future: Future[Mask] | None = None
        self._tail = b""

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Begin filling the first mask (overlaps the prefill)."""
        if self.state != "thinking":
            self._schedule()

    def close(self) -> None:
        """Wait for a mask still being filled (the matcher must not be shared after the request)."""
        future, self._future = self._future, None
        if future is not None:
            with contextlib.suppress(Exception):  # the request is over: a failed last mask does not matter
                future.result()

    @property
    def active(self) -> bool:
        return self.state == "active"

    # ---- masks -----------------------------------------------------------------------------------

    def _compute(self) -> Mask:
        began = time.perf_counter_ns()
        bits = np.empty(self._words, np.int32)
        self.matcher.unsafe_compute_mask_ptr(bits.ctypes.data, bits.nbytes)
        allowed = np.unpackbits(bits.view(np.uint8), count=self.vocab, bitorder="little").view(bool)
        ids = np.flatnonzero(allowed)
        mask = Mask(ids, None if ids.size * 4 < self.vocab else ~allowed)
        left = self._left()
        if left is not None and (left <= _WATCH or self.need is None or self.count % _REFRESH == 0):
            self.need = self.closer.need(self.matcher, self.shape, cap=left + 1)
        self.stats.masks += 1
        self.stats.mask_ns += time.perf_counter_ns() - began
        return mask

    def _schedule(self) -> None:
        if self.overlap:
            self._future = mask_executor().submit(self._compute)

    def _take(self) -> Mask:
        began = time.perf_counter_ns()
        future, self._future = self._future, None
        mask = future.result() if future is not None else self._compute()
        if self.matcher.is_error():
            raise EngineError(f"constrained decoding failed: {self.matcher.get_error()}")
        self.stats.wait_ns += time.perf_counter_ns() - began
        return mask

    # ---- sampling --------------------------------------------------------------------------------

    def _left(self) -> int | None:
        """Tokens the budget still allows, this step included."""
        return None if self.max_tokens is None else self.max_tokens - self.count

    def __call__(self, logits: np.ndarray, history: Sequence[int]) -> int:
        if self.state == "thinking":
            self.count += 1
            token = self.base(logits, history)
            self._watch_think(token)
            return token
        mask = self._take()
        left = self._left()
        self.count += 1
        maybe = self.state == "maybe"
        if maybe:
            assert self.think_open is not None
            mask = mask.plus(self.think_open)
        began = time.perf_counter_ns()
        need = self.need if not maybe and left is not None else None
        if need is not None and need >= left:  # only the shortest completion still fits
            token = self._close()
        else:
            token = self._sample(logits, history, mask)
            if need is not None and left <= 2 * need + _MARGIN:
                after = self.closer.need(self.matcher, self.shape, cap=left + 1, first=token)
                if after > left:  # the model's token leaves no room to close: close instead
                    token = self._close()
                else:
                    self.need = after - 1
        self.stats.apply_ns += time.perf_counter_ns() - began
        if maybe:
            self.state = "active"
            if token == self.think_open:
                self.state = "thinking"
                return token
        self._consume(token)
        return token

    def _close(self) -> int:
        token = self.closer.policy(self.matcher, self.shape)
        if token is None:
            raise EngineError("constrained decoding failed: no token completes the grammar")
        self.stats.closing_tokens += 1
        self.need = None if self.need is None else max(self.need - 1, 0)
        return token

    def _sample(self, logits: np.ndarray, history: Sequence[int], mask: Mask) -> int:
        ids = mask.ids[mask.ids < logits.shape[0]] if mask.ids.size and mask.ids[-1] >= logits.shape[0] else mask.ids
        if ids.size == 0:
            raise EngineError("constrained decoding failed: the grammar allows no token of this model")
        if ids.size == 1 and not self.want_logprobs:
            return int(ids[0])
        if mask.blocked is None and self.compact:
            return int(ids[self.base(np.ascontiguousarray(logits[ids]), history)])
        if mask.blocked is not None:
            n = min(mask.blocked.size, logits.shape[0])
            np.copyto(logits[:n], _NEG_INF, where=mask.blocked[:n])
            logits[n:] = _NEG_INF
        else:
            kept = logits[ids]
            logits.fill(_NEG_INF)
            logits[ids] = kept
        return self.base(logits, history)

    def _consume(self, token: int) -> None:
        if not self.matcher.consume_token(token) or self.matcher.is_error():
            raise EngineError(f"constrained decoding failed: {self.matcher.get_error() or f'token {token} rejected'}")
        self.shape.feed(self.compiler.token_bytes(token))
        if self.matcher.is_stopped():
            self.finished = True
        else:
            self._schedule()

    def _watch_think(self, token: int) -> None:
        self._tail = (self._tail + self.compiler.token_bytes(token))[-64:]
        if self.think_close in self._tail:
            self.state = "active"  # the answer starts with the next token: constrain it
            self._tail = b""
            self._schedule()


class BannedTokens:
    """A sampler that never picks the given ids (tool_choice "none": no tool-call start marker)."""

    def __init__(self, base: Sampler, banned: Sequence[int]) -> None:
        self.base, self.banned = base, np.asarray(sorted(set(banned)), dtype=np.int64)
        self.finished = False

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __call__(self, logits: np.ndarray, history: Sequence[int]) -> int:
        ids = self.banned[self.banned < logits.shape[0]]
        logits[ids] = _NEG_INF
        return self.base(logits, history)


@dataclass(frozen=True)
class ConstraintPlan:
    """What a request asks of decoding; the runner binds it to the sampler it builds."""

    spec: GrammarSpec | None = None
    thinking: str = "off"  # "off" | "inside" | "maybe" (see GuidedSampler)
    banned_markers: tuple[str, ...] = ()  # texts whose single token must never be sampled
    overlap: bool = True

    def bind(self, compiler: GrammarCompiler, base: Sampler, *, max_tokens: int | None, compact: bool,
             want_logprobs: bool) -> GuidedSampler | BannedTokens | None:
        if self.spec is not None:
            think_open = compiler.single_token("<think>") if self.thinking == "maybe" else None
            return GuidedSampler(compiler, self.spec, base, max_tokens=max_tokens, thinking=self.thinking,
                                 think_open=think_open, compact=compact and not want_logprobs,
                                 overlap=self.overlap, want_logprobs=want_logprobs)
        banned = [t for m in self.banned_markers if (t := compiler.single_token(m)) is not None]
        return BannedTokens(base, banned) if banned else None
