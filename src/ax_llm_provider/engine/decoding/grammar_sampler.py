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
token is taken without sampling; many allowed (string bodies) -> the worker prepares an additive
0/-inf bias and the sampling step adds it (one vectorized add instead of a masked write).

Thinking (two phases, as Ollama): unconstrained while the model thinks, constrained from the first
answer token. `thinking="inside"` when the prompt opened the trace; `"maybe"` when the model may
open one: the first step allows the `<think>` token besides what the grammar allows.

Near the end of the token budget (num_predict or the context) the output must still close: see
`closing.py`. The sampler knows how many tokens the shortest deterministic completion needs from
the current state (measured by the worker with the masks, while the device runs) and, once the
tokens left are within a small margin of it, takes the completion's tokens instead of the model's.
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

from ..errors import EngineError
from .closing import Closer, JsonShape
from .constraints import GrammarCompiler, GrammarSpec

Sampler = Callable[[np.ndarray, Sequence[int]], int]

_NEG_INF = np.float32(-np.inf)
_ZONE = 64  # the shortest completion is measured every step once tokens left <= 2 x need + _ZONE,
_REFRESH = 32  # otherwise every this many steps
_JUMP = 8  # how much one free token may grow the shortest completion (a new object, an enum string)
_NEED_CAP = 512  # a completion longer than this counts as this long (closing starts this far out)
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def mask_executor() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ax-grammar-mask")
        return _executor


_NEG_INF_BITS = np.uint32(0xFF800000)  # float32 -inf


@dataclass
class Mask:
    """Allowed tokens: their ids when few (the sampler then works on those alone), else an additive bias
    (0 allowed, -inf not) that the critical path applies with one vectorized add (~15 us at 152k)."""

    count: int
    ids: np.ndarray | None = None  # ascending, when few are allowed
    bias: np.ndarray | None = None  # float32 [vocab], when many are allowed

    @classmethod
    def from_allowed(cls, allowed: np.ndarray) -> Mask:
        """`allowed`: uint8 0/1 per token."""
        count = int(np.count_nonzero(allowed))
        if count * 4 < allowed.size:
            return cls(count, ids=np.flatnonzero(allowed))
        return cls(count, bias=((np.uint8(1) - allowed).astype(np.uint32) * _NEG_INF_BITS).view(np.float32))

    def allows(self, token: int) -> bool:
        if self.bias is not None:
            return 0 <= token < self.bias.size and self.bias[token] == 0
        assert self.ids is not None
        i = int(np.searchsorted(self.ids, token))
        return i < self.ids.size and int(self.ids[i]) == token

    def plus(self, token: int) -> Mask:
        if self.allows(token):
            return self
        if self.bias is not None:
            bias = self.bias.copy()
            bias[token] = 0.0
            return Mask(self.count + 1, bias=bias)
        assert self.ids is not None
        return Mask(self.count + 1, ids=np.union1d(self.ids, np.array([token], dtype=self.ids.dtype)))


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
        mask = Mask.from_allowed(np.unpackbits(bits.view(np.uint8), count=self.vocab, bitorder="little"))
        left = self._left()
        if left is not None and (self.need is None or left <= 2 * self.need + _ZONE or self.count % _REFRESH == 0):
            self.need = self.closer.need(self.matcher, self.shape, cap=min(left + 1, _NEED_CAP))
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
        need = self.need if not maybe else None  # the closing policy needs a budget (left) and a known need
        if need is not None and left is not None and need + _JUMP >= left:  # a free token might leave no room
            token = self._close()
        else:
            token = self._sample(logits, history, mask)
            if need is not None and left is not None and left <= 2 * need + _ZONE and self._opens(token):
                # a new object or array can grow the completion more than _JUMP: check this one exactly
                after = self.closer.need(self.matcher, self.shape, cap=left + 1, first=token)
                if after > left:  # no completion would fit after it: close instead
                    token = self._close()
        self.stats.apply_ns += time.perf_counter_ns() - began
        if maybe:
            self.state = "active"
            if token == self.think_open:
                self.state = "thinking"
                return token
        self._consume(token)
        return token

    def _opens(self, token: int) -> bool:
        piece = self.compiler.token_bytes(token)
        return b"{" in piece or b"[" in piece

    def _close(self) -> int:
        token = self.closer.policy(self.matcher, self.shape)
        if token is None:
            raise EngineError("constrained decoding failed: no token completes the grammar")
        self.stats.closing_tokens += 1
        self.need = None if self.need is None else max(self.need - 1, 0)
        return token

    def _sample(self, logits: np.ndarray, history: Sequence[int], mask: Mask) -> int:
        if mask.bias is not None:
            n = min(mask.bias.size, logits.shape[0])
            np.add(logits[:n], mask.bias[:n], out=logits[:n])
            logits[n:] = _NEG_INF
            return self.base(logits, history)
        assert mask.ids is not None
        ids = mask.ids[mask.ids < logits.shape[0]] if mask.ids.size and mask.ids[-1] >= logits.shape[0] else mask.ids
        if ids.size == 0:
            raise EngineError("constrained decoding failed: the grammar allows no token of this model")
        if ids.size == 1 and not self.want_logprobs:
            return int(ids[0])
        if self.compact:
            return int(ids[self.base(np.ascontiguousarray(logits[ids]), history)])
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
