"""Context fitting: Ollama's drop-oldest rule, reported, with a cut that stays stable across turns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from ax_llm_provider.engine.context import ConversationCuts, PromptTooLongError, fit_messages, truncate_tokens


def render(messages: Sequence[Mapping[str, Any]]) -> list[int]:
    """A toy template: 2 tokens of framing per message plus one token per word, then 1 for the reply cue."""
    tokens: list[int] = []
    for m in messages:
        tokens += [1, hash(m["role"]) % 100] + [len(w) for w in str(m["content"]).split()]
    return tokens + [9]


def conversation(turns: int, words: int = 10) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": "be brief"}]
    for t in range(turns):
        msgs.append({"role": "user", "content": " ".join(f"u{t}w{i}" for i in range(words))})
        msgs.append({"role": "assistant", "content": " ".join(f"a{t}w{i}" for i in range(words))})
    msgs.append({"role": "user", "content": "last question"})
    return msgs


def test_fits_untouched() -> None:
    msgs = conversation(2)
    result = fit_messages(msgs, render, 1000)
    assert result.messages == msgs and not result.report.truncated


def test_overflow_keeps_system_and_last_and_reports() -> None:
    msgs = conversation(20)
    result = fit_messages(msgs, render, 100)
    assert len(result.tokens) <= 100
    assert result.messages[0]["role"] == "system" and result.messages[-1] == msgs[-1]
    assert result.messages[1]["role"] == "user"  # no orphaned assistant reply at the start
    assert result.report.dropped_messages == len(msgs) - len(result.messages) > 0
    assert result.report.as_metadata()["dropped_messages"] == result.report.dropped_messages


def test_block_drop_frees_a_good_share_of_the_window() -> None:
    result = fit_messages(conversation(20), render, 200)
    assert len(result.tokens) <= 80  # target_fraction 0.4


def test_cut_is_stable_across_following_turns() -> None:
    """Each turn appends two messages; the first kept message stays the same until the next overflow."""
    cuts = ConversationCuts()
    full_reevaluations = 0
    previous_first: dict[str, str] | None = None
    turns = 60
    for t in range(1, turns + 1):
        msgs = conversation(t)
        result = fit_messages(msgs, render, 300, cuts=cuts)
        assert len(result.tokens) <= 300
        first = result.messages[1]
        if previous_first is not None and first != previous_first:
            full_reevaluations += 1
        previous_first = first
    assert 0 < full_reevaluations <= turns // 5


def test_without_memory_ollama_style_moves_the_cut_every_turn() -> None:
    """The baseline the stable cut improves on: with target_fraction 1.0 the cut moves almost every turn."""
    moves, previous = 0, None
    for t in range(20, 40):
        result = fit_messages(conversation(t), render, 300, target_fraction=1.0)
        if previous is not None and result.messages[1] != previous:
            moves += 1
        previous = result.messages[1]
    assert moves >= 15


def test_truncate_false_raises_clear_error() -> None:
    with pytest.raises(PromptTooLongError, match="longer than the context length 50"):
        fit_messages(conversation(10), render, 50, truncate=False)


def test_single_huge_message_is_token_truncated_keeping_head() -> None:
    msgs = [{"role": "user", "content": " ".join(["word"] * 500)}]
    result = fit_messages(msgs, render, 64, num_keep=4)
    assert len(result.tokens) <= 64 and result.report.truncated_tokens > 0
    assert result.tokens[:4] == render(msgs)[:4] and result.tokens[-1] == 9


def test_truncate_tokens_rule() -> None:
    tokens = list(range(100))
    kept, dropped = truncate_tokens(tokens, 40, 4)
    assert kept[:4] == [0, 1, 2, 3] and kept[-1] == 99 and len(kept) == 20 and dropped == 80
    assert truncate_tokens(tokens, 200, 4) == (tokens, 0)
