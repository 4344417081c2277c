"""`ax-llm run`: one-shot answers and the chat session behind the interactive mode, through Engine.chat.

Every turn is an Ollama /api/chat request with the whole conversation (as the installation's stateless
clients send it), so options, the prefix cache (only the new turn is prefilled) and context fitting
apply exactly as they do for the Client and the framework adapters.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from ..engine.keepalive import parse_keep_alive
from ..engine.options import OPTION_NAMES, InvalidOptionError, parse_options
from ..engine.responses import ChatChunk
from .common import UsageError, engine_for
from .output import ReplyPrinter, verbose_stats

if TYPE_CHECKING:
    from ..engine.engine import Engine

THINK_VALUES: dict[str, bool | str] = {"true": True, "false": False, "low": "low", "medium": "medium", "high": "high",
                                       "max": "max"}


def parse_value(raw: str) -> Any:
    """A command-line option value: JSON when it parses (numbers, true/false, lists), else the string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    """Validate options as the engine will, but stricter: an unknown name is a usage error here."""
    unknown = sorted(k for k in options if k not in OPTION_NAMES)
    if unknown:
        raise UsageError(f"unknown option {unknown[0]!r}; Ollama's options are: {', '.join(sorted(OPTION_NAMES))}")
    try:
        parse_options(options)
    except InvalidOptionError as exc:
        raise UsageError(str(exc)) from None
    return options


def collect_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in args.option or []:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--option takes NAME=VALUE (e.g. -o temperature=0.2), got {item!r}")
        value = parse_value(raw)
        if name == "stop":  # repeatable, like /set parameter stop a b
            options.setdefault("stop", []).extend(value if isinstance(value, list) else [raw])
        else:
            options[name] = value
    if args.num_predict is not None:
        options["num_predict"] = args.num_predict
    return check_options(options)


def parse_think(raw: str | None) -> bool | str | None:
    if raw is None:
        return None
    value = THINK_VALUES.get(raw.lower())
    if value is None:
        raise UsageError(f"--think takes true, false, low, medium, high or max, got {raw!r}")
    return value


def parse_format(raw: str | None) -> str | dict[str, Any] | None:
    if raw is None or raw == "":
        return None
    if raw == "json":
        return "json"
    if raw.lstrip().startswith("{"):
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise UsageError(f"--format: not a valid JSON schema ({exc})") from None
    raise UsageError(f'--format takes "json" or a JSON schema object, got {raw!r}')


@dataclass
class ChatSession:
    """One conversation with one model; `send` streams a reply to `out` and keeps the history."""

    engine: Engine
    model: str
    out: TextIO
    err: TextIO
    options: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    format: str | dict[str, Any] | None = None
    think: bool | str | None = None
    hide_thinking: bool = False
    keep_alive: str | None = None
    verbose: bool = False
    wordwrap: bool = False
    messages: list[dict[str, Any]] = field(default_factory=list)
    last_final: ChatChunk | None = None

    def request(self) -> dict[str, Any]:
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + self.messages
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": True,
                                "options": dict(self.options)}
        for key, value in (("format", self.format), ("think", self.think), ("keep_alive", self.keep_alive)):
            if value is not None:
                body[key] = value
        return body

    def send(self, text: str) -> ChatChunk:
        """One turn. On an error or Ctrl-C the turn is forgotten, as if it was never asked."""
        self.messages.append({"role": "user", "content": text})
        try:
            stream = self.engine.chat(self.request())  # a bad request fails here, before anything is queued
        except BaseException:
            self.messages.pop()
            raise
        printer = ReplyPrinter(self.out, wordwrap=self.wordwrap, hide_thinking=self.hide_thinking)
        content: list[str] = []
        thinking: list[str] = []
        final: ChatChunk = {}
        try:
            for chunk in stream:
                message = chunk.get("message", {})
                printer.thinking_delta(message.get("thinking") or "")
                printer.content_delta(message.get("content") or "")
                content.append(message.get("content") or "")
                thinking.append(message.get("thinking") or "")
                if chunk.get("done"):
                    final = chunk
        except BaseException:
            self.messages.pop()
            raise
        finally:
            stream.close()  # cancels the request on the device if we stopped early
            printer.finish()
        reply: dict[str, Any] = {"role": "assistant", "content": "".join(content)}
        if any(thinking):
            reply["thinking"] = "".join(thinking)
        self.messages.append(reply)
        self.last_final = final
        if self.verbose:
            print(verbose_stats(final), file=self.err)
        return final

    def clear(self) -> None:
        self.messages.clear()


def session_from_args(args: argparse.Namespace, out: TextIO, err: TextIO) -> ChatSession:
    options = collect_options(args)
    if args.keepalive is not None:
        try:
            parse_keep_alive(args.keepalive, default=0.0)
        except ValueError as exc:
            raise UsageError(f"--keepalive: {exc}") from None
    return ChatSession(
        engine=engine_for(args), model=args.model, out=out, err=err, options=options,
        format=parse_format(args.format), think=parse_think(args.think), hide_thinking=args.hidethinking,
        keep_alive=args.keepalive, verbose=args.verbose,
        wordwrap=not args.nowordwrap and out.isatty(),
    )
