"""Finishing constrained JSON within the token budget.

A model under a JSON grammar can open strings, arrays and objects until num_predict cuts it off,
leaving output that does not parse. The guided sampler prevents that with a deterministic closing
policy and its length:

- `Closer.policy(matcher, shape)`: the next token of a short completion: EOS when the grammar is
  complete, `"` inside a string, the innermost `}` / `]`, a minimal value ("0", `""`, "null",
  "false", "[]", "{}"), ",", else what the grammar forces (its fast-forward tokens), else the
  lowest allowed id. Each candidate is checked with `validate_tokens` (no mask needed).
- `Closer.need(matcher, shape, cap)`: how many tokens that policy takes to finish from the current
  state (a rollout on a copy of the matcher, microseconds per token).

The sampler lets the model choose freely while `need` is far below the tokens left; near the end it
accepts the model's token only if `need` after it still fits, and otherwise follows the policy, so
the JSON closes by the last token whenever the grammar's shortest completion fits at all.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Minimal values, with and without the space the ": " separator needs; then what opens a container and
# the separators themselves. Checking a candidate costs ~1 us; a full mask at vocab 152k ~400 us.
_VALUES = (" 0", "0", ' ""', '""', ' "', '"', " null", "null", " false", "false", " []", "[]", " {}", "{}",
           " [", "[", " {", "{", " ", ": ", ":", " 1", "1")
_CLOSERS = ('"', "}", "]", ",", *_VALUES)


class JsonShape:
    """Enough JSON state (open containers, inside a string) to pick closing tokens."""

    def __init__(self) -> None:
        self.stack: list[int] = []
        self.in_string = self._escape = False

    def copy(self) -> JsonShape:
        other = JsonShape()
        other.stack, other.in_string, other._escape = list(self.stack), self.in_string, self._escape
        return other

    def feed(self, data: bytes) -> None:
        for b in data:
            if self.in_string:
                if self._escape:
                    self._escape = False
                elif b == 0x5C:  # backslash
                    self._escape = True
                elif b == 0x22:
                    self.in_string = False
            elif b == 0x22:
                self.in_string = True
            elif b in (0x7B, 0x5B):  # { [
                self.stack.append(b)
            elif b in (0x7D, 0x5D) and self.stack:
                self.stack.pop()

    @property
    def need(self) -> int:
        return len(self.stack) + int(self.in_string)

    @property
    def closer(self) -> str | None:
        return ("}" if self.stack[-1] == 0x7B else "]") if self.stack else None


class Closer:
    """The closing policy over one model's vocabulary (see the module doc)."""

    def __init__(self, compiler: Any) -> None:
        self.compiler = compiler
        self.ids = {t: i for t in _CLOSERS if (i := compiler.single_token(t)) is not None}
        self.eos = tuple(compiler.eos_ids)
        self._words = (compiler.vocab + 31) // 32

    def policy(self, matcher: Any, shape: JsonShape) -> int | None:
        if matcher.is_accepting():
            return self.eos[0] if self.eos else None
        # "," before values: after a number, a digit is a valid "value" token that never ends it
        wanted = ('"',) if shape.in_string else (shape.closer, ",", *_VALUES)
        for text in wanted:
            token = self.ids.get(text) if text else None
            if token is not None and matcher.validate_tokens([token]) == 1:
                return token
        forced = matcher.compute_ff_tokens()
        if forced:
            return int(forced[0])
        bits = np.empty(self._words, np.int32)
        matcher.unsafe_compute_mask_ptr(bits.ctypes.data, bits.nbytes)
        allowed = np.flatnonzero(np.unpackbits(bits.view(np.uint8), count=self.compiler.vocab, bitorder="little"))
        allowed = allowed[~np.isin(allowed, self.eos)]
        return int(allowed[0]) if allowed.size else None

    def need(self, matcher: Any, shape: JsonShape, *, cap: int, first: int | None = None) -> int:
        """Tokens the policy needs to finish (after `first`, if given, counted too); `cap` if more."""
        if first is None and matcher.is_stopped():
            return 0
        m, s, n = matcher.deep_copy(), shape.copy(), 0
        token = first
        while n < cap:
            if token is None:
                if m.is_stopped():
                    return n
                token = self.policy(m, s)
                if token is None:
                    return cap
            n += 1
            if token in self.eos or not m.consume_token(token):
                return n if token in self.eos else cap
            s.feed(self.compiler.token_bytes(token))
            token = None
        return cap
