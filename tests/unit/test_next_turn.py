"""The known next-turn prefix: everything before the user's text, nothing of it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ax_llm_provider.engine.next_turn import PLACEHOLDERS, known_next_prefix, shared_prefix


def chatml(messages: Sequence[Mapping[str, Any]]) -> str:
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def char_render(messages: Sequence[Mapping[str, Any]]) -> list[int]:
    return [ord(c) for c in chatml(messages)]


def merging_render(messages: Sequence[Mapping[str, Any]]) -> list[int]:
    """A tokenizer that merges a newline with the character after it (a BPE merge across the boundary)."""
    text, out, i = chatml(messages), [], 0
    while i < len(text):
        if text[i] == "\n" and i + 1 < len(text):
            out.append(1000 + ord(text[i + 1]))
            i += 2
        else:
            out.append(ord(text[i]))
            i += 1
    return out


CONVERSATION = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hello"}]
REPLY = {"role": "assistant", "content": "hi there"}


def test_shared_prefix() -> None:
    assert shared_prefix([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert shared_prefix([[1, 2], [1, 2]]) == 2
    assert shared_prefix([[5], [6]]) == 0
    assert shared_prefix([]) == 0


def test_prefix_ends_with_the_user_header() -> None:
    prefix = known_next_prefix(char_render, CONVERSATION, REPLY)
    text = "".join(chr(t) for t in prefix)
    assert text == chatml([*CONVERSATION, REPLY])[: -len("<|im_start|>assistant\n")] + "<|im_start|>user\n"


def test_every_real_next_prompt_starts_with_it() -> None:
    for render in (char_render, merging_render):
        prefix = known_next_prefix(render, CONVERSATION, REPLY)
        for said in ("what now?", "\nodd", " spaced", "Yes", "1", *PLACEHOLDERS):
            nxt = render([*CONVERSATION, REPLY, {"role": "user", "content": said}])
            assert nxt[: len(prefix)] == prefix


def test_a_merge_across_the_boundary_is_left_out() -> None:
    plain = known_next_prefix(char_render, CONVERSATION, REPLY)
    merged = known_next_prefix(merging_render, CONVERSATION, REPLY)
    # the header's last newline merges with the user's first character, so it is not known in advance
    assert "".join(chr(t) for t in plain).endswith("user\n")
    assert len(merged) < len(merging_render([*CONVERSATION, REPLY]))
    assert merged[-1] == ord("r")  # "...<|im_start|>user" and no more
