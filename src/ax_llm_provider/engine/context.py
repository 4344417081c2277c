"""Fit a conversation into the context window, Ollama's way, and keep the cut stable across turns.

Ollama drops the oldest whole messages (keeping system messages and the last one) until the prompt
fits, then truncates tokens after `num_keep`. It drops the minimum each time, so once a long
conversation overflows, every following turn starts at a different message and the prefix cache
misses: each turn re-evaluates the whole window. Here an overflow drops a *block* of old messages
that frees a good share of the window, and the cut is remembered per conversation, so the next
turns of the same conversation start at the same message and reuse the cached prefix. Every cut is
reported to the caller instead of being silent.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

Message = Mapping[str, Any]
Render = Callable[[Sequence[Message]], list[int]]


class PromptTooLongError(ValueError):
    """The prompt does not fit and truncation is disabled."""


@dataclass(frozen=True)
class FitReport:
    """What was left out to fit the window (all zero when nothing was)."""

    window: int
    prompt_tokens: int
    dropped_messages: int = 0
    truncated_tokens: int = 0
    reused_cut: bool = False

    @property
    def truncated(self) -> bool:
        return bool(self.dropped_messages or self.truncated_tokens)

    def as_metadata(self) -> dict[str, Any]:
        return {"window": self.window, "prompt_tokens": self.prompt_tokens,
                "dropped_messages": self.dropped_messages, "truncated_tokens": self.truncated_tokens}


@dataclass(frozen=True)
class FitResult:
    messages: list[Message]
    tokens: list[int]
    report: FitReport


def _fingerprint(messages: Sequence[Message]) -> str:
    digest = hashlib.sha256()
    for m in messages:
        digest.update(json.dumps(m, sort_keys=True, default=str).encode())
        digest.update(b"\x00")
    return digest.hexdigest()


class ConversationCuts:
    """Remembers recent cuts: (fingerprint of the messages up to the cut) -> number of messages dropped."""

    def __init__(self, capacity: int = 32) -> None:
        self._cuts: OrderedDict[tuple[int, str], int] = OrderedDict()
        self._capacity = capacity

    def lookup(self, messages: Sequence[Message], droppable: Sequence[int]) -> int:
        """The largest remembered cut that applies to this conversation (0 when none)."""
        best = 0
        for (end, fingerprint), dropped in reversed(self._cuts.items()):
            if end <= len(messages) and dropped <= len(droppable) and dropped > best \
                    and _fingerprint(messages[:end]) == fingerprint:
                best = dropped
        return best

    def remember(self, messages: Sequence[Message], droppable: Sequence[int], dropped: int) -> None:
        if dropped <= 0:
            return
        end = droppable[dropped - 1] + 1
        key = (end, _fingerprint(messages[:end]))
        self._cuts[key] = dropped
        self._cuts.move_to_end(key)
        while len(self._cuts) > self._capacity:
            self._cuts.popitem(last=False)


def _droppable_indices(messages: Sequence[Message]) -> list[int]:
    """Old messages that may go: never a system message, never the last message."""
    return [i for i, m in enumerate(messages[:-1]) if m.get("role") != "system"]


def _without(messages: Sequence[Message], droppable: Sequence[int], dropped: int) -> list[Message]:
    gone = set(droppable[:dropped])
    kept = [m for i, m in enumerate(messages) if i not in gone]
    return kept


def _clean_start(droppable: Sequence[int], messages: Sequence[Message], dropped: int) -> int:
    """Extend a cut so the first kept non-system message is not an orphaned reply or tool result."""
    while dropped < len(droppable) and messages[droppable[dropped]].get("role") in ("assistant", "tool"):
        dropped += 1
    return dropped


def truncate_tokens(tokens: list[int], budget: int, num_keep: int) -> tuple[list[int], int]:
    """Ollama's runner rule: keep num_keep head tokens, drop after them so about half the window is free."""
    if len(tokens) <= budget:
        return tokens, 0
    keep = len(tokens) if num_keep < 0 else min(max(num_keep, 0), budget // 2)
    tail = max(budget // 2 - keep, 1) if keep < budget else 1
    kept = tokens[:keep] + tokens[len(tokens) - tail:]
    return kept, len(tokens) - len(kept)


def fit_messages(
    messages: Sequence[Message],
    render: Render,
    window: int,
    *,
    num_keep: int = 4,
    truncate: bool = True,
    target_fraction: float = 0.4,
    cuts: ConversationCuts | None = None,
) -> FitResult:
    """Render messages into at most `window` tokens, dropping old messages in stable blocks."""
    tokens = render(messages)
    if len(tokens) <= window:
        return FitResult(list(messages), tokens, FitReport(window, len(tokens)))
    if not truncate:
        raise PromptTooLongError(
            f"the prompt is {len(tokens)} tokens, longer than the context length {window}; "
            "shorten the conversation, raise num_ctx up to the model's compiled capacity, or allow truncation"
        )
    droppable = _droppable_indices(messages)
    remembered = cuts.lookup(messages, droppable) if cuts else 0
    if remembered:
        candidate = render(_without(messages, droppable, remembered))
        if len(candidate) <= window:
            return FitResult(_without(messages, droppable, remembered), candidate,
                             FitReport(window, len(candidate), dropped_messages=remembered, reused_cut=True))
    # New cut: the fewest dropped messages that bring the prompt under target_fraction of the window
    # (binary search; rendering is monotone enough in the number of dropped messages).
    target = max(int(window * target_fraction), 1)
    lo, hi = max(remembered, 1), len(droppable)
    best: tuple[int, list[int]] | None = None
    while lo <= hi:
        mid = (lo + hi) // 2
        dropped = _clean_start(droppable, messages, mid)
        candidate = render(_without(messages, droppable, dropped))
        if len(candidate) <= target:
            best, hi = (dropped, candidate), mid - 1
        else:
            lo = mid + 1
    if best is None:  # even system + last message exceed the target: keep them and truncate tokens
        dropped = len(droppable)
        candidate = render(_without(messages, droppable, dropped))
        best = (dropped, candidate)
    dropped, candidate = best
    truncated = 0
    if len(candidate) > window:
        candidate, truncated = truncate_tokens(candidate, window, num_keep)
        log.warning("truncating input prompt: limit=%d keep=%d dropped=%d tokens", window, num_keep, truncated)
    if cuts is not None and not truncated:
        cuts.remember(messages, droppable, dropped)
    log.info("context: dropped %d oldest message(s) to fit %d tokens (prompt now %d)", dropped, window, len(candidate))
    return FitResult(_without(messages, droppable, dropped), candidate,
                     FitReport(window, len(candidate), dropped_messages=dropped, truncated_tokens=truncated))
