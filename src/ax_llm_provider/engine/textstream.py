"""Token ids in, final text deltas out: UTF-8-safe detokenizing, stop strings, done_reason.

Three layers, each usable alone:

- `IncrementalDetokenizer` turns ids into text without ever emitting half a character. It decodes a
  short window of recent ids (the prefix-offset technique of HF TGI and vLLM), so a token costs
  O(window), not O(text), and tokenizers whose decode of a suffix differs from the suffix of the
  decode (SentencePiece's leading "▁" space) still come out right.
- `StopMatcher` holds back text that could still become a stop string, so a stop that spans tokens
  never leaks, and cuts the output just before the first stop to complete.
- `TextStream` combines them for one generation and records why it ended (Ollama's done_reason).

Nothing here knows a model: callers pass a `decode(ids) -> str` (e.g. a tokenizer's decode with
skip_special_tokens) and the end-of-sequence ids.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from typing import Literal

log = logging.getLogger(__name__)

Decode = Callable[[list[int]], str]
DoneReason = Literal["stop", "length"]

_REPLACEMENT = "\ufffd"  # what a lossy UTF-8 decode shows for an incomplete character
_CONTEXT_TOKENS = 5  # prompt ids decoded along, so the first token's leading space is right (vLLM)


class IncrementalDetokenizer:
    """Feed ids one at a time; get back only text that later ids cannot change."""

    def __init__(self, decode: Decode, context_ids: Sequence[int] = (), *, max_pending: int = 64) -> None:
        self._decode = decode
        self._max_pending = max_pending
        # _ids[:_read] were emitted already; the window decoded each step starts at _ids[0]
        self._ids: list[int] = list(context_ids[-_CONTEXT_TOKENS:]) if context_ids else []
        self._read = len(self._ids)
        self._prefix_text = decode(self._ids) if self._ids else ""

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        text = self._decode(self._ids)
        pending = len(self._ids) - self._read
        if (text.endswith(_REPLACEMENT) or len(text) <= len(self._prefix_text)) and pending < self._max_pending:
            return ""  # an unfinished character (or nothing new yet): wait for the next id
        if pending >= self._max_pending:
            # a model emitting long runs of invalid bytes: give up waiting so the window stays bounded
            log.debug("detokenizer emitted %d ids that never formed complete characters", pending)
        return self._advance(text)

    def flush(self) -> str:
        """Everything not emitted yet, incomplete characters included (end of generation)."""
        if len(self._ids) == self._read:
            return ""
        return self._advance(self._decode(self._ids))

    def _advance(self, text: str) -> str:
        delta = text[len(self._prefix_text):]
        # the ids just emitted become the new window's prefix: their text is known and final
        del self._ids[: self._read]
        self._read = len(self._ids)
        self._prefix_text = self._decode(self._ids)
        return delta


class StopMatcher:
    """Cut a stream of text deltas before the first stop string, never emitting any part of it.

    "First" is the first stop to *complete* (as if text arrived one character at a time, which is
    where a generation would stop); among stops completing at the same place, the longest.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops: tuple[str, ...] = tuple(stops)  # deduplicated, "" dropped: options.py checks them once
        self.matched: str | None = None
        self._held = ""

    def feed(self, delta: str) -> tuple[str, str | None]:
        """Returns (text now safe to emit, the stop string if one just matched)."""
        if self.matched is not None:
            return "", None
        if not self.stops:
            return delta, None
        text = self._held + delta
        hit = self._first_complete(text)
        if hit is not None:
            start, stop = hit
            self.matched, self._held = stop, ""
            return text[:start], stop
        keep = self._partial_suffix(text)
        self._held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep], None

    def flush(self) -> str:
        """Release held-back text (the stream ended without completing a stop)."""
        held, self._held = self._held, ""
        return held

    def _first_complete(self, text: str) -> tuple[int, str] | None:
        best: tuple[int, int, str] | None = None  # (end, start, stop): earliest end, then longest
        for stop in self.stops:
            start = text.find(stop)
            if start >= 0 and (best is None or (start + len(stop), start) < best[:2]):
                best = (start + len(stop), start, stop)
        return None if best is None else (best[1], best[2])

    def _partial_suffix(self, text: str) -> int:
        """Length of the longest end of `text` that is the beginning of some stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest


class TextStream:
    """One generation's text: push each generated id, emit what `push` returns.

    Ends itself with done_reason "stop" on an EOS id or a stop string (then `stop_string` says which).
    Token budgets are not its business: the generator decides "length" and the runner calls
    `finish("length")`.
    """

    def __init__(
        self, decode: Decode, *, stop: Sequence[str] = (), eos_token_ids: Collection[int] = (),
        prompt_ids: Sequence[int] = (),
    ) -> None:
        self._detok = IncrementalDetokenizer(decode, prompt_ids)
        self._stops = StopMatcher(stop)
        self._eos = frozenset(eos_token_ids)
        self.n_tokens = 0  # ids pushed, the ending EOS included
        self.done_reason: DoneReason | None = None
        self.stop_string: str | None = None
        self._finished = False

    @property
    def done(self) -> bool:
        return self._finished

    def push(self, token_id: int) -> str:
        """Consume one generated id; returns the text delta (often ""). Check `done` after."""
        if self._finished:
            raise RuntimeError("this TextStream has finished; start a new one for the next generation")
        self.n_tokens += 1
        if token_id in self._eos:
            return self.finish("stop")  # the EOS itself has no text
        text, stop = self._stops.feed(self._detok.push(token_id))
        if stop is not None:
            self._end("stop", stop)
        return text

    def finish(self, reason: DoneReason | None = None) -> str:
        """End the stream (the generator stopped, or was cancelled: reason None); returns the rest."""
        if self._finished:
            return ""
        text, stop = self._stops.feed(self._detok.flush())
        if stop is not None:  # the last bytes completed a stop string: that is why it ended
            self._end("stop", stop)
            return text
        self._end(reason, None)
        return text + self._stops.flush()

    def _end(self, reason: DoneReason | None, stop: str | None) -> None:
        self._finished, self.done_reason, self.stop_string = True, reason, stop
