"""The incremental sentence splitter: boundaries, chunking invariance, stream adapters."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ax_llm_provider.sentences import SentenceSplitter, asentences, chunk_text, sentences


def split_all(text: str, **options: object) -> list[str]:
    return list(sentences([text], **options))


def fed_in_pieces(text: str, cuts: list[int], **options: object) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    return list(sentences(pieces, **options))


@pytest.mark.parametrize(("text", "expected"), [
    ("Hello there. How are you? Fine!", ["Hello there.", "How are you?", "Fine!"]),
    ("Pi is 3.14 today. Yes.", ["Pi is 3.14 today.", "Yes."]),
    ("Dr. Smith met Mrs. Jones, e.g. at noon. Then left.", ["Dr. Smith met Mrs. Jones, e.g. at noon.", "Then left."]),
    ("J. R. R. Tolkien wrote it. Really.", ["J. R. R. Tolkien wrote it.", "Really."]),
    ("Wait... what? Well... Maybe.", ["Wait... what?", "Well...", "Maybe."]),
    ('He said "Stop." Then he went (quietly.) Done', ['He said "Stop."', "Then he went (quietly.)", "Done"]),
    ("Really?! No way.", ["Really?!", "No way."]),
    ("你好。今天天气很好！是吗？", ["你好。", "今天天气很好！", "是吗？"]),
    ("「走吧。」他说。", ["「走吧。」", "他说。"]),
    ("Primes:\n101\n103\n\nDone", ["Primes:", "101", "103", "Done"]),
    ("Steps:\n1. Mix it.\n2. Bake it.", ["Steps:", "1. Mix it.", "2. Bake it."]),
    ("I was born in 1989. Then I grew.", ["I was born in 1989.", "Then I grew."]),
    ("The U.S.A. is big", ["The U.S.A. is big"]),
    ("", []),
    ("   \n  ", []),
])
def test_boundaries(text: str, expected: list[str]) -> None:
    assert split_all(text) == expected


def test_units_come_out_as_soon_as_they_are_complete() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("The sea is calm") == []
    assert splitter.feed(". It") == ["The sea is calm."]  # the space after "." decides
    assert splitter.pending == " It"
    splitter = SentenceSplitter()
    assert splitter.feed("The sea is calm.") == []  # could be "calm.5" or "calm..."
    assert splitter.feed(" ") == ["The sea is calm."]
    assert splitter.feed("Waves") == []
    assert splitter.flush() == ["Waves"]
    assert splitter.flush() == []


def test_clauses_split_long_units_at_commas() -> None:
    text = "When the tide comes in at night, the shore goes quiet; short, not split."
    assert split_all(text, clauses=True, min_clause_chars=12) == [
        "When the tide comes in at night,", "the shore goes quiet;",
                                             "short, not split."]
    assert split_all(
        "一二三四五六七八九十，好。", clauses=True, min_clause_chars=5) == ["一二三四五六七八九十，", "好。"]
    with pytest.raises(ValueError, match="min_clause_chars"):
        SentenceSplitter(min_clause_chars=0)


TEXT = st.lists(st.sampled_from([*"ab Z.!?…,;:\n\t\"'”)3。！？「」，é ", "Dr", "e.g", " 1", "..."]),
                max_size=60).map("".join)


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_nothing_is_lost_or_added(text: str) -> None:
    units = split_all(text)
    assert re.sub(r"\s+", "", "".join(units)) == re.sub(r"\s+", "", text)
    assert all(u and u == u.strip() for u in units)


@settings(max_examples=300, deadline=None)
@given(TEXT, st.lists(st.integers(min_value=0, max_value=200), max_size=12), st.booleans())
def test_chunking_does_not_change_the_units(text: str, cuts: list[int], clauses: bool) -> None:
    assert fed_in_pieces(text, cuts, clauses=clauses) == split_all(text, clauses=clauses)


def test_langchain_chunks_and_ollama_dicts() -> None:
    messages = pytest.importorskip("langchain_core.messages")
    outputs = pytest.importorskip("langchain_core.outputs")
    stream = [messages.AIMessageChunk(content="Hi the"), messages.AIMessageChunk(content="re. Bye"),
              outputs.GenerationChunk(text="! Ok"), {"message": {"content": ". Z"}}, {"response": "z."}]
    assert list(sentences(stream)) == ["Hi there.", "Bye!", "Ok.", "Zz."]
    assert chunk_text(messages.AIMessageChunk(content=[{"type": "text", "text": "a"}, "b",
                                                       {"type": "image_url", "image_url": "x"}])) == "ab"
    with pytest.raises(TypeError, match="cannot take text"):
        chunk_text(42)
    with pytest.raises(TypeError, match="'message' or 'response'"):
        chunk_text({"other": 1})


def test_async_stream() -> None:
    async def stream() -> AsyncIterator[str]:
        for piece in ("One. Tw", "o? Three"):
            yield piece

    async def collect() -> list[str]:
        return [s async for s in asentences(stream())]

    assert asyncio.run(collect()) == ["One.", "Two?", "Three"]
