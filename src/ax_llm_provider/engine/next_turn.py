"""The part of the next chat prompt that is known once a reply has ended (issue 17, idle prefill).

After a reply the next request resends the conversation, the reply and a new user message. Everything the
chat template writes before the user's text (the assistant turn's end-of-turn tokens, the next user turn's
header) is already known, so the device can evaluate it while the visitor is still speaking.

The known part is found without knowing the template: render the conversation with several different
placeholder user messages and keep the tokens they all share. The placeholders start with a letter, a
capital, a space and a newline, so a token that a real message could merge with the header (a BPE merge
across the boundary) differs between them and is left out. A wrong guess cannot change any output: the
prefix cache matches by tokens, so a prefix the real prompt does not share is simply not reused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

Render = Callable[[Sequence[Mapping[str, Any]]], list[int]]
PLACEHOLDERS = ("a", "Z?", " x", "\n1")


def shared_prefix(sequences: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every sequence has in common."""
    if not sequences:
        return 0
    length = min(len(s) for s in sequences)
    for i in range(length):
        first = sequences[0][i]
        if any(s[i] != first for s in sequences[1:]):
            return i
    return length


def known_next_prefix(render: Render, messages: Sequence[Mapping[str, Any]], reply: Mapping[str, Any]) -> list[int]:
    """The tokens the next prompt starts with whatever the user says next: conversation, reply, user header.

    render: messages -> prompt tokens (the request's own renderer: its tools and thinking switch);
    reply: the assistant message as the client will resend it.
    """
    history = [*messages, reply]
    rendered = [render([*history, {"role": "user", "content": text}]) for text in PLACEHOLDERS]
    return rendered[0][:shared_prefix(rendered)]
