"""Thinking: Ollama's `think` switch and the streaming split of `<think>...</think>` from the answer.

- `think` is true/false or a level ("low"/"medium"/"high"/"max", all meaning true here). Omitted on a
  thinking model means on (Ollama >= 0.12.4); on a model without thinking it is an error elsewhere
  (prompt.py raises Ollama's 400).
- `ThinkSplitter` takes generated text in arbitrary pieces and returns (thinking, content) deltas. It
  never emits a part of a tag: text that could still become `<think>` (at the start) or `</think>`
  (while thinking) is held back, like the stop-string hold-back in textstream.py. Whitespace around
  the trace and at the start of the answer is trimmed, as Ollama's qwen3 parser does.
- `strip_think` removes reasoning from earlier assistant turns (Ollama does it for qwen3/deepseek-r1).
"""

from __future__ import annotations

import re
from typing import Any

OPEN_TAG, CLOSE_TAG = "<think>", "</think>"
_START, _THINKING, _CONTENT = "start", "thinking", "content"
_THINK_BLOCK = re.compile(r"<think>.*?(</think>|$)\s*", re.DOTALL)


def think_requested(think: bool | str | None, supported: bool) -> bool:
    """Whether the model should think: a level string counts as true; omitted means on if supported."""
    if think is None:
        return supported
    return bool(think) and supported


def strip_think(text: str) -> str:
    """`text` without `<think>...</think>` blocks (an unclosed one runs to the end)."""
    if OPEN_TAG not in text:
        return text
    return _THINK_BLOCK.sub("", text).lstrip()


def strip_earlier_thinking(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop the reasoning of assistant messages before the last user message (Ollama, qwen3 style)."""
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    out = []
    for i, message in enumerate(messages):
        if i < last_user and message.get("role") == "assistant":
            message = {k: v for k, v in message.items() if k not in ("thinking", "reasoning_content")}
            message["content"] = strip_think(message.get("content") or "")
        out.append(message)
    return out


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ThinkSplitter:
    """Split a stream of generated text into thinking and content.

    enabled=False passes everything through as content. starts_inside=True when the prompt already
    opened the trace (templates that end the generation prompt with `<think>`). keep_thinking=False
    drops the trace (think=false on a model that thinks anyway): content stays clean either way.
    """

    def __init__(self, *, enabled: bool = True, starts_inside: bool = False, keep_thinking: bool = True,
                 open_tag: str = OPEN_TAG, close_tag: str = CLOSE_TAG) -> None:
        self.enabled, self.keep_thinking = enabled, keep_thinking
        self.open_tag, self.close_tag = open_tag, close_tag
        self.state = (_THINKING if starts_inside else _START) if enabled else _CONTENT
        self._held = ""  # text not emitted yet
        self._trim_content = False  # strip whitespace at the start of the answer (after a trace)
        self._thinking_started = False  # the trace emitted something (leading whitespace is trimmed)

    @property
    def in_content(self) -> bool:
        """True once the answer has begun (or thinking is off)."""
        return self.state == _CONTENT

    def feed(self, text: str) -> tuple[str, str]:
        """Consume a text delta; returns (thinking delta, content delta), either may be ""."""
        if not self.enabled:
            return "", text
        thinking: list[str] = []
        content: list[str] = []
        self._held += text
        while self._held:
            if self.state == _START and not self._start(content):
                break
            if self.state == _THINKING and not self._thinking(thinking):
                break
            if self.state == _CONTENT:
                content.append(self._content(self._held))
                self._held = ""
        return self._out(thinking), "".join(content)

    def finish(self) -> tuple[str, str]:
        """End of generation: release what was held (an unclosed trace stays thinking)."""
        held, self._held = self._held, ""
        if not self.enabled or not held:
            return "", ""
        if self.state == _THINKING:
            return self._out([held.rstrip() if self._thinking_started else held.strip()]), ""
        if self.state == _START:
            return "", held
        return "", self._content(held)

    # ---- states -----------------------------------------------------------------------------------

    def _start(self, content: list[str]) -> bool:
        """Before anything but whitespace: is the output a trace? False when more text is needed."""
        body = self._held.lstrip()
        if body.startswith(self.open_tag):
            self._held = body[len(self.open_tag):]
            self.state = _THINKING
            return True
        if self.open_tag.startswith(body):  # "", "<", "<th", ...: wait
            return False
        self.state = _CONTENT
        return True

    def _thinking(self, thinking: list[str]) -> bool:
        held = self._held
        if not self._thinking_started:
            held = held.lstrip()
            if not held:
                self._held = ""
                return False
        end = held.find(self.close_tag)
        if end >= 0:
            trace = held[:end].rstrip()
            if trace:
                thinking.append(trace)
            self._held = held[end + len(self.close_tag):]
            self.state, self._trim_content = _CONTENT, True
            return True
        keep = _partial_suffix(held, self.close_tag)
        body, tail = held[: len(held) - keep], held[len(held) - keep:]
        safe = body.rstrip()  # trailing whitespace waits: it is dropped if the tag comes next
        if safe:
            thinking.append(safe)
            self._thinking_started = True
        self._held = body[len(safe):] + tail
        return False

    def _content(self, text: str) -> str:
        if self._trim_content:
            text = text.lstrip()
            if text:
                self._trim_content = False
        return text

    def _out(self, parts: list[str]) -> str:
        return "".join(parts) if self.keep_thinking else ""
