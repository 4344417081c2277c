"""Sentences as they form: cut streamed text into sentences (or clauses) the moment each is complete.

Made for a speech engine that should start speaking the first sentence while the model still writes the
rest. Feed text chunks of any size; each call returns the units completed so far; `flush()` returns what
is left at the end of the stream. The result does not depend on how the text was chunked: a boundary
that needs to see what follows (a period that may start "3.14", an ellipsis, a closing quote after
"。") waits for the next chunk.

    splitter = SentenceSplitter()
    for chunk in stream:
        for sentence in splitter.feed(chunk):
            speak(sentence)
    for sentence in splitter.flush():
        speak(sentence)

or `for sentence in sentences(chain.stream(...))`, which also takes LangChain message chunks,
LangChain generation chunks and ollama-style response dicts. Units come out with surrounding whitespace
removed; the inner text is unchanged.

Rules: ".", "!", "?" (with any run of them and closing quotes or brackets after) end a sentence when
whitespace follows; not after a known abbreviation ("Dr.", "e.g."), a single capital initial ("J.") or a
list number at the start of a line ("1."); no whitespace, no end ("3.14", "U.S.A"). An ellipsis ends a
sentence only when the next word does not start in lower case. "。！？" (and their full-width kin) end a
sentence without whitespace. A newline ends a line of text. With `clauses=True`, ",", ";", ":" and
"，、；：" also end a unit once it is at least `min_clause_chars` long.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any

TERMINATORS = ".!?…"
CJK_TERMINATORS = "。！？｡"
CLOSERS = "\"'”’)]}»」』）】〉》"
CLAUSE_MARKS = ",;:"
CJK_CLAUSE_MARKS = "，、；："
ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "cf", "approx", "fig", "no", "vol",
    "inc", "ltd", "co", "corp", "dept", "est", "gen", "gov", "lt", "col", "sgt", "capt", "rev", "hon",
    "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
})


class SentenceSplitter:
    """Incremental splitter; one instance per stream (not thread-safe)."""

    def __init__(self, *, clauses: bool = False, min_clause_chars: int = 24,
                 abbreviations: Iterable[str] = ABBREVIATIONS) -> None:
        if min_clause_chars < 1:
            raise ValueError(f"min_clause_chars must be at least 1, got {min_clause_chars}")
        self.clauses = clauses
        self.min_clause_chars = min_clause_chars
        self.abbreviations = frozenset(a.lower().rstrip(".") for a in abbreviations)
        self._buffer = ""

    def feed(self, chunk: str) -> list[str]:
        """Add a chunk of text; return the units it completed (often none)."""
        self._buffer += chunk
        return self._drain(final=False)

    def flush(self) -> list[str]:
        """End of the stream: return every unit still held, the last one possibly without an end mark."""
        units = self._drain(final=True)
        rest, self._buffer = self._buffer.strip(), ""
        return [*units, rest] if rest else units

    @property
    def pending(self) -> str:
        """Text received but not yet handed out."""
        return self._buffer

    def _drain(self, *, final: bool) -> list[str]:
        units = []
        while (end := self._boundary(self._buffer, final)) is not None:
            unit, self._buffer = self._buffer[:end].strip(), self._buffer[end:]
            if unit:
                units.append(unit)
        return units

    def _boundary(self, text: str, final: bool) -> int | None:
        """End (exclusive) of the first complete unit in text; None when there is none yet."""
        i, n = 0, len(text)
        while i < n:
            ch = text[i]
            if ch == "\n":
                if text[:i].strip():
                    return i + 1
            elif ch in CJK_TERMINATORS:
                end = _skip(text, i, CJK_TERMINATORS + TERMINATORS, CLOSERS)
                if end < n or final:
                    return end
                return None  # a closing quote may follow in the next chunk
            elif ch in TERMINATORS:
                end = _skip(text, i, TERMINATORS, CLOSERS)
                if end == n:
                    return end if final else None
                if text[end].isspace():
                    verdict = self._ends_sentence(text, i, end, final)
                    if verdict is None or verdict:
                        return end if verdict else None
                i = end
                continue
            elif self.clauses and len(text[:i].strip()) >= self.min_clause_chars:
                if ch in CJK_CLAUSE_MARKS:
                    return i + 1
                if ch in CLAUSE_MARKS:
                    if i + 1 == n:
                        return i + 1 if final else None
                    if text[i + 1].isspace():
                        return i + 1
            i += 1
        return None

    def _ends_sentence(self, text: str, start: int, end: int, final: bool) -> bool | None:
        """Does the terminator run text[start:end] (whitespace after it) end a sentence? None: wait and see."""
        run = text[start:end].rstrip(CLOSERS)
        if "!" in run or "?" in run:
            return True
        if run == ".":
            word = _word_before(text, start)
            bare = word.lstrip("\"'“‘([{«")
            if bare.lower() in self.abbreviations or "." in bare:
                return False
            if len(bare) == 1 and bare.isupper():
                return False  # an initial: "J. R. R. Tolkien"
            line_start = not text[:start - len(word)].rstrip(" \t").rpartition("\n")[2]
            return not (bare.isdigit() and line_start)  # a list number at the start of a line: "1. Apples"
        # an ellipsis: a sentence ends unless the next word carries on in lower case
        following = text[end:].lstrip()
        if not following:
            return True if final else None
        return not following[0].islower()


def _skip(text: str, i: int, marks: str, closers: str) -> int:
    """Index after the run of `marks` starting at i and the closing quotes/brackets that follow it."""
    while i < len(text) and text[i] in marks:
        i += 1
    while i < len(text) and text[i] in closers:
        i += 1
    return i


def _word_before(text: str, i: int) -> str:
    """The non-space characters just before index i."""
    start = i
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    return text[start:i]


def chunk_text(chunk: Any) -> str:
    """The text of one streamed chunk.

    Accepts str, LangChain message chunks (`.content` a string or a list of content blocks), LangChain
    generation chunks (`.text`) and ollama-style dicts ({"message": {"content"}} or {"response"}).
    """
    if isinstance(chunk, str):
        return chunk
    if isinstance(chunk, dict):
        if "message" in chunk:
            return str((chunk["message"] or {}).get("content") or "")
        if "response" in chunk:
            return str(chunk["response"] or "")
        raise TypeError(f"a chunk dict needs 'message' or 'response', got keys {sorted(chunk)}")
    content = getattr(chunk, "content", None)
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content blocks: strings or {"type": "text", "text": ...}
        return "".join(b if isinstance(b, str) else str(b.get("text", "")) for b in content
                       if isinstance(b, str) or b.get("type", "text") == "text")
    message = getattr(chunk, "message", None)  # ollama ChatResponse objects
    if message is not None and isinstance(getattr(message, "content", None), str):
        return str(message.content)
    text = getattr(chunk, "text", None) if content is None else None
    if isinstance(text, str):
        return text
    raise TypeError(f"cannot take text from a {type(chunk).__name__} chunk; pass str, message or generation chunks")


def sentences(chunks: Iterable[Any], **options: Any) -> Iterator[str]:
    """Sentences (or clauses, with clauses=True) of a stream of chunks, each yielded as soon as it is complete."""
    splitter = SentenceSplitter(**options)
    for chunk in chunks:
        yield from splitter.feed(chunk_text(chunk))
    yield from splitter.flush()


async def asentences(chunks: AsyncIterable[Any], **options: Any) -> AsyncIterator[str]:
    """`sentences` over an async stream (LangChain `astream`, AsyncClient)."""
    splitter = SentenceSplitter(**options)
    async for chunk in chunks:
        for unit in splitter.feed(chunk_text(chunk)):
            yield unit
    for unit in splitter.flush():
        yield unit
