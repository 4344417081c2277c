"""Grammars for constrained decoding with llguidance: `format` (json / JSON schema) and forced tool calls.

llguidance runs without torch, compiles a JSON schema lazily (the lexer/parser state is built as
tokens arrive; nothing is precomputed over vocab x grammar) and fills a next-token bitmask in tens of
microseconds for a 49k vocabulary. Pieces:

- `format_grammar(format)` -> `GrammarSpec`: validated without a tokenizer, so an invalid schema is
  a 400 before the request is queued ("invalid JSON schema in format: ..."). Cached (LRU, 128).
- `tool_call_grammar(family, tools, choice, ...)` -> the family's call syntax around `%json{...}`
  with the tool's parameter schema (Lark grammar), for `tool_choice` "required"/"any"/<name>.
- `GrammarCompiler`: one per loaded model. Holds the llguidance tokenizer (built once per tokenizer
  and vocab size, ~0.5 s, process-wide cache) and an LRU of compiled matchers per grammar; each
  request gets a `deep_copy()` of the pristine matcher (microseconds).

JSON is generated compactly with ", " and ": " separators and no free whitespace: Ollama's grammar
allows whitespace anywhere, which is where small models fall into whitespace loops.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..errors import InvalidRequestError
from .toolcalls import ToolFamily

log = logging.getLogger(__name__)

JSON_STYLE: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
# lenient: keywords llguidance does not implement (propertyNames, ...) are ignored with a warning,
# as Ollama's converter ignores them, instead of failing the request.
_COMPILE_OPTIONS: dict[str, Any] = {**JSON_STYLE, "lenient": True}


def _llg() -> Any:
    try:
        import llguidance
    except ImportError as exc:  # pragma: no cover - an optional dependency
        raise InvalidRequestError(
            "format and tool_choice need llguidance: pip install 'ax-llm-provider[structured]'") from exc
    return llguidance


@dataclass(frozen=True)
class GrammarSpec:
    """An llguidance grammar (serialized) and what it constrains."""

    grammar: str
    kind: str  # "json" (format json or a schema) or "tool" (a forced tool call)
    warnings: tuple[str, ...] = ()


def _validate(grammar: str, what: str) -> tuple[str, ...]:
    is_error, messages = _llg().LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise InvalidRequestError(f"invalid JSON schema in {what}: {'; '.join(messages)}")
    return tuple(messages)


@lru_cache(maxsize=128)
def _schema_spec(schema_json: str) -> GrammarSpec:
    llg = _llg()
    try:
        grammar = llg.LLMatcher.grammar_from_json_schema(schema_json, defaults=_COMPILE_OPTIONS)
    except ValueError as exc:
        raise InvalidRequestError(f"invalid JSON schema in format: {exc}") from exc
    return GrammarSpec(grammar, "json", _validate(grammar, "format"))


def format_grammar(fmt: str | Mapping[str, Any] | None) -> GrammarSpec | None:
    """The grammar for Ollama's `format` as the request models normalized it (requests.py checks the form
    once): None or "" (no constraint), "json" (any object) or a JSON schema, compiled here."""
    if not fmt:
        return None
    # "json" is the only string form the request models let through
    schema: Any = {"type": "object"} if isinstance(fmt, str) else dict(fmt)
    # no sort_keys: property order is the order the grammar generates them in
    return _schema_spec(json.dumps(schema, ensure_ascii=False))


def _closed_objects(schema: Any) -> Any:
    """Objects that list properties and say nothing of others get additionalProperties false.

    A narrowing (every output still validates against the tool's schema) that keeps a forced call
    from growing invented keys until num_predict.
    """
    if isinstance(schema, list):
        return [_closed_objects(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed_objects(v) if k in ("properties", "$defs", "definitions", "items", "anyOf", "oneOf",
                                              "allOf", "prefixItems") else v for k, v in schema.items()}
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: _closed_objects(v) for k, v in schema["properties"].items()}
        out.setdefault("additionalProperties", False)
    for key in ("$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            out[key] = {k: _closed_objects(v) for k, v in schema[key].items()}
    return out


def call_schema(family: ToolFamily, tool: Mapping[str, Any]) -> dict[str, Any]:
    """JSON schema of one call of `tool` as `family` writes it: {"name": const, "<args>": parameters}."""
    function = tool.get("function", tool)
    params = function.get("parameters") or {"type": "object", "properties": {}}
    return {"type": "object", "properties": {"name": {"const": function["name"]},
                                            family.args_key: _closed_objects(params)},
            "required": ["name", family.args_key], "additionalProperties": False}


def _literal(text: str, specials: Mapping[str, int]) -> str:
    """Lark for a fixed text; markers that are single special tokens are referenced as <[id]>."""
    parts: list[str] = []
    rest = text
    while rest:
        hits = [(rest.find(m), m) for m in specials if m and rest.find(m) >= 0]
        if not hits:
            parts.append(json.dumps(rest))
            break
        at, marker = min(hits)
        if at:
            parts.append(json.dumps(rest[:at]))
        parts.append(f"<[{specials[marker]}]>")
        rest = rest[at + len(marker):]
    return " ".join(parts)


def select_tools(tools: Sequence[Mapping[str, Any]], choice: str) -> list[Mapping[str, Any]]:
    """The tools a forcing tool_choice allows: all for "required"/"any", else the one named."""
    if choice in ("required", "any"):
        return list(tools)
    chosen = [t for t in tools if t.get("function", t).get("name") == choice]
    if not chosen:
        names = ", ".join(str(t.get("function", t).get("name")) for t in tools)
        raise InvalidRequestError(f'tool_choice "{choice}" names no tool of the request (tools: {names})')
    return chosen


@lru_cache(maxsize=64)
def _tool_spec(lark: str) -> GrammarSpec:
    grammar = _llg().LLMatcher.grammar_from_lark(lark)
    return GrammarSpec(grammar, "tool", _validate(grammar, "tool parameters"))


def tool_call_grammar(family: ToolFamily, tools: Sequence[Mapping[str, Any]], choice: str,
                      specials: Mapping[str, int] | None = None) -> GrammarSpec:
    """Exactly one call of one of the chosen tools, in the family's syntax, arguments per schema."""
    chosen = select_tools(tools, choice)
    schemas = [call_schema(family, t) for t in chosen]
    body: dict[str, Any] = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    body = {**body, "x-guidance": _COMPILE_OPTIONS}
    specials = dict(specials or {})
    pieces = [_literal(family.call_prefix, specials) if family.call_prefix else "",
              "%json " + json.dumps(body, ensure_ascii=False),
              _literal(family.call_suffix, specials) if family.call_suffix else ""]
    return _tool_spec("start: " + " ".join(p for p in pieces if p) + "\n")


# ---- per model ------------------------------------------------------------------------------------

_TOKENIZERS: OrderedDict[tuple[str, int, tuple[int, ...]], Any] = OrderedDict()
_TOKENIZERS_LOCK = threading.Lock()
_TOKENIZER_CACHE_SIZE = 4


def ll_tokenizer(hf_tokenizer: Any, n_vocab: int, eos_ids: Collection[int], key: str) -> Any:
    """llguidance's tokenizer for a transformers fast tokenizer, built once per (key, vocab, eos)."""
    cache_key = (key, n_vocab, tuple(sorted(eos_ids)))
    with _TOKENIZERS_LOCK:
        if cache_key in _TOKENIZERS:
            _TOKENIZERS.move_to_end(cache_key)
            return _TOKENIZERS[cache_key]
    import llguidance.hf

    built = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=n_vocab, eos_token=sorted(eos_ids) or None)
    with _TOKENIZERS_LOCK:
        _TOKENIZERS[cache_key] = built
        while len(_TOKENIZERS) > _TOKENIZER_CACHE_SIZE:
            _TOKENIZERS.popitem(last=False)
    return built


class GrammarCompiler:
    """Matchers for one model's vocabulary: `matcher(spec)` is a fresh matcher at the grammar's start."""

    def __init__(self, hf_tokenizer: Any, *, vocab: int, eos_ids: Collection[int], key: str,
                 cache_size: int = 32) -> None:
        self._hf = hf_tokenizer
        self.vocab = max(int(vocab), len(hf_tokenizer))
        self.eos_ids = tuple(sorted(eos_ids))
        self._key = key
        self._ll: Any = None
        self._matchers: OrderedDict[str, Any] = OrderedDict()
        self._cache_size = cache_size
        self._bytes: dict[int, bytes] = {}

    @property
    def tokenizer(self) -> Any:
        if self._ll is None:
            self._ll = ll_tokenizer(self._hf, self.vocab, self.eos_ids, self._key)
        return self._ll

    def matcher(self, spec: GrammarSpec) -> Any:
        pristine = self._matchers.get(spec.grammar)
        if pristine is None:
            pristine = _llg().LLMatcher(self.tokenizer, spec.grammar, log_level=0)
            if pristine.is_error():
                raise InvalidRequestError(f"invalid JSON schema in format: {pristine.get_error()}")
            self._matchers[spec.grammar] = pristine
            while len(self._matchers) > self._cache_size:
                self._matchers.popitem(last=False)
        else:
            self._matchers.move_to_end(spec.grammar)
        return pristine.deep_copy()

    def single_token(self, text: str) -> int | None:
        """The id of `text` if the tokenizer has it as one token (markers like <tool_call>, <think>)."""
        ids = self._hf.encode(text, add_special_tokens=False)
        return int(ids[0]) if len(ids) == 1 else None

    def special_markers(self, *markers: str) -> dict[str, int]:
        """Markers that are single tokens llguidance treats as special (they must be referenced by id)."""
        out = {}
        for marker in markers:
            token = self.single_token(marker) if marker else None
            if token is not None and self.tokenizer.is_special_token(token):
                out[marker] = token
        return out

    def token_bytes(self, token: int) -> bytes:
        piece = self._bytes.get(token)
        if piece is None:
            piece = self._bytes[token] = bytes(self.tokenizer.decode_bytes([token]))
        return piece
