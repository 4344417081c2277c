"""One response's output reading and decoding constraints: thinking, content and tool calls apart.

`ResponseParser` is fed the text deltas of a run and returns `Part`s (content, thinking or whole
tool calls), in order: the think splitter (thinking.py) first, then the family's tool-call
extractor (toolcall_stream.py) on the answer. `chat_decoding` / `generate_decoding` decide, from the
request plan, the parser and the `ConstraintPlan` the runner applies (grammar for `format` or a
forced tool call, two phases when the model thinks, banned markers for tool_choice "none").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..prompt import ChatPlan
from ..responses import ChatChunk, GenerateChunk, chat_chunk, generate_chunk
from .constraints import GrammarCompiler, GrammarSpec, tool_call_grammar
from .grammar_sampler import ConstraintPlan
from .thinking import OPEN_TAG, ThinkSplitter
from .toolcall_stream import make_extractor
from .toolcalls import ToolCallFactory, ToolFamily


@dataclass
class Part:
    content: str = ""
    thinking: str = ""
    tool_calls: list[dict[str, Any]] | None = None


class ResponseParser:
    """Text deltas in; content / thinking / tool-call parts out; nothing of a tag or a call leaks."""

    def __init__(self, splitter: ThinkSplitter | None = None,
                 extractor: Any | None = None) -> None:
        self.splitter = splitter or ThinkSplitter(enabled=False)
        self.extractor = extractor
        self.tool_calls: list[dict[str, Any]] = []

    def feed(self, text: str) -> list[Part]:
        thinking, content = self.splitter.feed(text)
        return self._parts(thinking, self.extractor.feed(content) if self.extractor and content else
                           [("content", content)])

    def finish(self) -> list[Part]:
        thinking, content = self.splitter.finish()
        events = [("content", content)]
        if self.extractor is not None:
            events = (self.extractor.feed(content) if content else []) + self.extractor.finish()
        return self._parts(thinking, events)

    def _parts(self, thinking: str, events: Iterable[tuple[str, Any]]) -> list[Part]:
        parts = [Part(thinking=thinking)] if thinking else []
        for kind, value in events:
            if kind == "calls":
                self.tool_calls.extend(value)
                parts.append(Part(tool_calls=list(value)))
            elif value:
                if parts and parts[-1].tool_calls is None and not parts[-1].thinking:
                    parts[-1].content += value
                else:
                    parts.append(Part(content=value))
        return parts


@dataclass
class Decoding:
    parser: ResponseParser
    constraint: ConstraintPlan | None = None
    warnings: list[str] = field(default_factory=list)


def prompt_opens_think(decode: Any, prompt: Sequence[int]) -> bool:
    """True when the rendered prompt ends inside a trace (the template added `<think>`)."""
    return str(decode(list(prompt[-16:]))).rstrip().endswith(OPEN_TAG)


def _think_setup(think: bool, thinking_model: bool, opens: bool) -> tuple[ThinkSplitter, str]:
    """The splitter and the constraint's thinking mode ("off" | "inside" | "maybe")."""
    if think:
        return ThinkSplitter(starts_inside=opens), "inside" if opens else "maybe"
    if thinking_model:  # think false: a trace the model writes anyway is dropped, never shown as content
        return ThinkSplitter(starts_inside=opens, keep_thinking=False), "inside" if opens else "off"
    return ThinkSplitter(enabled=False), "off"


def _warnings(spec: GrammarSpec | None) -> list[str]:
    return [f"format: {w}" for w in spec.warnings] if spec is not None else []


def chat_decoding(plan: ChatPlan, prompt: Sequence[int], *, decode: Any, grammars: GrammarCompiler | None,
                  format_spec: GrammarSpec | None, call_key: str, builder_family: ToolFamily | None) -> Decoding:
    """Parser and constraint of one chat request (grammars is needed only for a forced call)."""
    splitter, thinking = _think_setup(plan.think, plan.thinking_model, prompt_opens_think(decode, prompt))
    extractor = None
    family = plan.family
    if family is not None and (format_spec is None or family.tagged):
        extractor = make_extractor(family, ToolCallFactory(plan.tools, call_key))
    spec = format_spec
    if plan.forced and family is not None and plan.tools:
        assert grammars is not None
        specials = grammars.special_markers(*(family.markers or ()))
        spec = tool_call_grammar(family, plan.tools, plan.tool_choice, specials)
    if spec is not None:
        constraint = ConstraintPlan(spec=spec, thinking=thinking)
    elif plan.tool_choice == "none" and builder_family is not None and builder_family.markers:
        constraint = ConstraintPlan(banned_markers=(builder_family.markers[0],))
    else:
        constraint = None
    return Decoding(ResponseParser(splitter, extractor), constraint, _warnings(format_spec))


def generate_decoding(*, think: bool, thinking_model: bool, raw: bool, prompt: Sequence[int], decode: Any,
                      format_spec: GrammarSpec | None) -> Decoding:
    """Parser and constraint of one /api/generate request (raw prompts are not split)."""
    if raw:
        splitter, thinking = ThinkSplitter(enabled=False), "off"
    else:
        splitter, thinking = _think_setup(think, thinking_model, prompt_opens_think(decode, prompt))
    constraint = ConstraintPlan(spec=format_spec, thinking=thinking) if format_spec is not None else None
    return Decoding(ResponseParser(splitter), constraint, _warnings(format_spec))


def chat_chunks(model: str, parts: list[Part], logprobs: list[dict[str, Any]] | None) -> Iterator[ChatChunk]:
    """Chunks of parsed parts (thinking chunks have content ""); logprobs ride on the first one."""
    if not parts and logprobs:
        yield chat_chunk(model, logprobs=logprobs)
    for part in parts:
        yield chat_chunk(model, part.content, thinking=part.thinking or None, tool_calls=part.tool_calls,
                         logprobs=logprobs)
        logprobs = None


def generate_chunks(model: str, parts: list[Part], logprobs: list[dict[str, Any]] | None) -> Iterator[GenerateChunk]:
    if not parts and logprobs:
        yield generate_chunk(model, logprobs=logprobs)
    for part in parts:
        yield generate_chunk(model, part.content, thinking=part.thinking or None, logprobs=logprobs)
        logprobs = None
