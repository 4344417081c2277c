"""Streaming tool-call extraction: text deltas in, content and whole calls out, no call text leaking.

Two extractors cover the families of toolcalls.py:

- `TaggedExtractor` (hermes): content passes through except text that may still become the start
  marker (held back, like a stop string); between the markers everything is buffered and becomes
  one call when the end marker arrives (or at the end of generation, if the model stopped before
  closing and the payload parses). A payload that does not parse comes out as content, unchanged.
- `JsonExtractor` (llama3, mistral, generic json): if the answer starts (after whitespace, a
  python_tag-like prefix or a ```json fence) with `{` or `[`, it is held until it is a complete JSON
  value; call-shaped values become calls, anything else is released as content.

Events are `("content", str)` or `("calls", [call, ...])`, in output order.
"""

from __future__ import annotations

import json
from typing import Any

from .toolcalls import ToolCallFactory, ToolFamily, call_entries

Event = tuple[str, Any]
_DECODER = json.JSONDecoder()
_FENCES = ("```json", "```")


def _partial_suffix(text: str, tag: str) -> int:
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class TaggedExtractor:
    def __init__(self, family: ToolFamily, factory: ToolCallFactory) -> None:
        assert family.markers is not None
        self.start, self.end = family.markers
        self.factory = factory
        self._held = ""
        self._in_call = False
        self._after_call = False  # trim whitespace between/after calls

    def feed(self, text: str) -> list[Event]:
        self._held += text
        events: list[Event] = []
        while self._held:
            if self._in_call:
                end = self._held.find(self.end)
                if end < 0:
                    break
                payload, self._held = self._held[:end], self._held[end + len(self.end):]
                self._in_call = False
                events.extend(self._call(payload, closed=True))
                continue
            start = self._held.find(self.start)
            if start >= 0:
                self._content(events, self._held[:start])
                self._held, self._in_call = self._held[start + len(self.start):], True
                continue
            keep = _partial_suffix(self._held, self.start)
            self._content(events, self._held[: len(self._held) - keep])
            self._held = self._held[len(self._held) - keep:]
            break
        return events

    def finish(self) -> list[Event]:
        held, self._held = self._held, ""
        events: list[Event] = []
        if self._in_call:
            self._in_call = False
            events.extend(self._call(held, closed=False))
        else:
            self._content(events, held)
        return events

    def _call(self, payload: str, *, closed: bool) -> list[Event]:
        calls = self.factory.from_payload(payload, strict=False) if payload.strip() else None
        if calls is None:
            raw = self.start + payload + (self.end if closed else "")
            return [("content", raw)]
        self._after_call = True
        return [("calls", calls)]

    def _content(self, events: list[Event], text: str) -> None:
        if self._after_call:
            text = text.lstrip()
        if text:
            self._after_call = False
            events.append(("content", text))


class JsonExtractor:
    def __init__(self, family: ToolFamily, factory: ToolCallFactory) -> None:
        self.prefixes = tuple(sorted((*family.json_prefixes, *_FENCES), key=len, reverse=True))
        self.factory = factory
        self._state = "start"  # start -> json -> (content) ; content passes through
        self._raw = ""  # everything received while undecided / in JSON (released if not a call)
        self._held = ""  # JSON text not decoded yet
        self._emitted = 0

    def feed(self, text: str) -> list[Event]:
        if self._state == "content":
            return [("content", text)] if text else []
        self._raw += text
        if self._state == "start":
            self._decide()
            if self._state == "content":
                return self._release(self._raw)
        else:
            self._held += text
        return self._drain(final=False) if self._state == "json" else []

    def finish(self) -> list[Event]:
        events = self._drain(final=True) if self._state == "json" else []
        if self._state == "start":
            events += self._release(self._raw)
        elif self._state == "json":
            rest = self._held if self._emitted else self._raw
            if rest.strip(" \n\r\t;,`"):
                events += self._release(rest)
        self._state, self._raw, self._held = "content", "", ""
        return events

    def _decide(self) -> None:
        body, stripped = self._raw.lstrip(), True
        while stripped:
            if any(p.startswith(body) for p in self.prefixes):
                return  # nothing yet, or maybe the start of a prefix ("```j"): wait
            stripped = False
            for prefix in self.prefixes:  # longest first: "```json" before "```"
                if body.startswith(prefix):
                    body, stripped = body[len(prefix):].lstrip(), True
                    break
        if body[0] in "{[":
            self._state, self._held = "json", body
        else:
            self._state = "content"

    def _drain(self, *, final: bool) -> list[Event]:
        """Decode complete JSON values at the front of the held text: calls out, the rest waits."""
        events: list[Event] = []
        while True:
            body = self._held.lstrip(" \n\r\t;,")
            if self._emitted:
                body = body.removeprefix("```").lstrip()
            self._held = body
            if not body or (self._emitted and "```".startswith(body)):
                return events
            if body[0] not in "{[":  # text after the calls: the rest is content
                return events + self._release(body)
            try:
                value, end = _DECODER.raw_decode(body)
            except json.JSONDecodeError:
                if final:  # incomplete or not strict JSON: one lenient try at the end
                    calls = self.factory.from_payload(body.rstrip().removesuffix("```"))
                    if calls is not None:
                        self._emitted += len(calls)
                        self._held = ""
                        events.append(("calls", calls))
                return events
            entries = call_entries(value)
            if entries is None:  # an answer that happens to be JSON
                return events + self._release(body if self._emitted else self._raw)
            calls = [self.factory.make(n, a) for n, a in entries]
            self._emitted += len(calls)
            events.append(("calls", calls))
            self._held = body[end:]

    def _release(self, text: str) -> list[Event]:
        self._state, self._raw, self._held = "content", "", ""
        return [("content", text)] if text else []


def make_extractor(family: ToolFamily, factory: ToolCallFactory) -> TaggedExtractor | JsonExtractor:
    return TaggedExtractor(family, factory) if family.tagged else JsonExtractor(family, factory)
