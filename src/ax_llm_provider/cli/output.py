"""Writing a streamed reply to the terminal (word wrap, thinking) and Ollama's `--verbose` statistics."""

from __future__ import annotations

import shutil
from typing import TextIO

from ..engine.responses import FinalFields
from .common import human_duration_ns


class WordWrapper:
    """Wraps streamed text at word boundaries for a terminal of `width` columns (ollama run's word wrap).

    A word is held back until its end is seen, so it never splits across lines; explicit newlines pass.
    """

    def __init__(self, out: TextIO, width: int) -> None:
        self.out, self.width = out, max(20, width)
        self.column = 0
        self.word = ""

    def _flush_word(self) -> None:
        if not self.word:
            return
        if self.column > 0 and self.column + len(self.word) > self.width:
            self.out.write("\n")
            self.column = 0
        self.out.write(self.word)
        self.column += len(self.word)
        self.word = ""

    def write(self, text: str) -> None:
        for ch in text:
            if ch == "\n":
                self._flush_word()
                self.out.write("\n")
                self.column = 0
            elif ch == " ":
                self._flush_word()
                if self.column >= self.width:
                    self.out.write("\n")
                    self.column = 0
                elif self.column > 0:
                    self.out.write(" ")
                    self.column += 1
            else:
                self.word += ch
                if len(self.word) >= self.width:
                    self._flush_word()
        self.out.flush()

    def finish(self) -> None:
        self._flush_word()
        self.out.flush()


class ReplyPrinter:
    """Prints one streamed reply: thinking first (unless hidden), then the answer."""

    def __init__(self, out: TextIO, *, wordwrap: bool, hide_thinking: bool = False) -> None:
        self.out = out
        self.hide_thinking = hide_thinking
        width = shutil.get_terminal_size((80, 24)).columns - 5 if wordwrap else 0
        self.wrapper = WordWrapper(out, width) if wordwrap else None
        self.thinking = False
        self.wrote_anything = False
        self.ends_with_newline = False

    def _write(self, text: str) -> None:
        if not text:
            return
        if self.wrapper is not None:
            self.wrapper.write(text)
        else:
            self.out.write(text)
            self.out.flush()
        self.wrote_anything = True
        self.ends_with_newline = text.endswith("\n")

    def thinking_delta(self, text: str) -> None:
        if self.hide_thinking or not text:
            return
        if not self.thinking:
            self._write("Thinking...\n")
            self.thinking = True
        self._write(text)

    def content_delta(self, text: str) -> None:
        if not text:
            return
        if self.thinking:
            self._end_thinking()
        self._write(text)

    def _end_thinking(self) -> None:
        self._write("\n...done thinking.\n\n")
        self.thinking = False

    def finish(self) -> None:
        if self.thinking:
            self._end_thinking()
        if self.wrapper is not None:
            self.wrapper.finish()
        if self.wrote_anything and not self.ends_with_newline:
            self.out.write("\n")
        self.out.flush()


def _rate(count: int, ns: int) -> str:
    return f"{count / (ns / 1e9):.2f} tokens/s" if ns else "n/a"


def verbose_stats(final: FinalFields) -> str:
    """The block `ollama run --verbose` prints after a reply, plus the prefix-reuse and truncation figures."""
    ax = final.get("ax") or {}
    prompt_n, prompt_ns = final.get("prompt_eval_count", 0), final.get("prompt_eval_duration", 0)
    eval_n, eval_ns = final.get("eval_count", 0), final.get("eval_duration", 0)
    rows = [
        ("total duration", human_duration_ns(final.get("total_duration", 0))),
        ("load duration", human_duration_ns(final.get("load_duration", 0))),
        ("prompt eval count", f"{prompt_n} token(s)"),
        ("prompt eval duration", human_duration_ns(prompt_ns)),
        ("prompt eval rate", _rate(max(prompt_n - ax.get("prompt_cache_reused_tokens", 0), 0), prompt_ns)),
        ("eval count", f"{eval_n} token(s)"),
        ("eval duration", human_duration_ns(eval_ns)),
        ("eval rate", _rate(eval_n, eval_ns)),
        ("prompt cache reuse", f"{ax.get('prompt_cache_reused_tokens', 0)} of {prompt_n} prompt token(s)"),
    ]
    truncation = ax.get("truncation")
    if truncation:
        rows.append(("truncation", f"dropped {truncation.get('dropped_messages', 0)} message(s) and "
                                   f"{truncation.get('truncated_tokens', 0)} token(s) to fit a "
                                   f"{truncation.get('window')}-token window"))
    else:
        rows.append(("truncation", "none"))
    rows += [("done reason", str(final.get("done_reason", ""))), ("backend", str(ax.get("backend", "")))]
    for warning in ax.get("warnings") or []:
        rows.append(("warning", warning))
    return "\n".join(f"{label + ':':<22}{value}" for label, value in rows)
