"""Tool calls: the per-template-family registry, payload parsing, argument typing and stable ids.

A family says how a model writes a call and how our grammar forces one:

| family  | detected by (chat template)          | the model writes                                             |
|---------|--------------------------------------|--------------------------------------------------------------|
| hermes  | `<tool_call>` (Qwen2.5/3, Hermes)    | `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>` |
| mistral | `[TOOL_CALLS]`                       | `[TOOL_CALLS][{"name": ..., "arguments": {...}}]` (*)          |
| llama3  | `<|start_header_id|>` + "parameters" | `<|python_tag|>`? `{"name": ..., "parameters": {...}}`         |
| json    | any other template that uses `tools` | `{"name": ..., "arguments": {...}}` (the generic fallback)     |

(*) the `[TOOL_CALLS]` marker is a control token.

Models whose template cannot express tools at all (SmolLM2's ChatML) get the generic tools prompt and
its hermes-style `prompt` family (tools_prompt.py, i16). New families: `register_family(ToolFamily(...))`.

Parsed calls come out in Ollama's shape, arguments typed against the tool's parameter schema
(`"3"` -> `3` for an integer parameter), ids `call_<hash>` deterministic from the request and index.
Streaming extraction lives in toolcall_stream.py.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

ToolCallDict = dict[str, Any]


@dataclass(frozen=True)
class ToolFamily:
    """How one template family writes tool calls."""

    name: str
    detect: Callable[[str], bool]
    args_key: str = "arguments"  # the key the model writes arguments under
    markers: tuple[str, str] | None = None  # (start, end) around each call; None: a bare JSON value
    call_prefix: str = ""  # what a forced call looks like around its JSON (grammar and rendering)
    call_suffix: str = ""
    json_prefixes: tuple[str, ...] = ()  # text the model may put before a bare JSON call

    @property
    def tagged(self) -> bool:
        return self.markers is not None


HERMES = ToolFamily("hermes", lambda t: "<tool_call>" in t, markers=("<tool_call>", "</tool_call>"),
                    call_prefix="<tool_call>\n", call_suffix="\n</tool_call>")
MISTRAL = ToolFamily("mistral", lambda t: "[TOOL_CALLS]" in t, json_prefixes=("[TOOL_CALLS]",))
LLAMA3 = ToolFamily("llama3", lambda t: "<|start_header_id|>" in t and "parameters" in t,
                    args_key="parameters", json_prefixes=("<|python_tag|>",))
GENERIC_JSON = ToolFamily("json", lambda t: "tools" in t)

_REGISTRY: list[ToolFamily] = [HERMES, MISTRAL, LLAMA3, GENERIC_JSON]


def register_family(family: ToolFamily, *, first: bool = True) -> None:
    """Add a family; by default it is tried before the built-in ones."""
    _REGISTRY.insert(0 if first else len(_REGISTRY) - 1, family)


def family_for_template(template: str | None) -> ToolFamily | None:
    """The family whose syntax this chat template renders, or None if it cannot express tools."""
    if not template:
        return None
    return next((f for f in _REGISTRY if f.detect(template)), None)


def family_by_name(name: str) -> ToolFamily:
    for family in _REGISTRY:
        if family.name == name:
            return family
    raise KeyError(name)


# ---- payload parsing --------------------------------------------------------------------------------

def _loads_lenient(text: str) -> Any:
    """JSON, or a Python literal (single-quoted dicts, True/False/None) as small models write them."""
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        value, end = json.JSONDecoder().raw_decode(text)
        if not text[end:].strip(" \n;,`"):
            return value
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def call_entries(value: Any, args_keys: Sequence[str] = ("arguments", "parameters"), *,
                 strict: bool = True) -> list[tuple[str, Any]] | None:
    """(name, raw arguments) of each call in a decoded payload; None if it is not call-shaped.

    strict (bare JSON, which may just be an answer): only name/arguments/type/id keys make a call.
    """
    items = value if isinstance(value, list) else [value]
    out: list[tuple[str, Any]] = []
    for item in items:
        if not isinstance(item, dict):
            return None
        if isinstance(item.get("function"), dict):  # OpenAI shape {"type": "function", "function": {...}}
            item = item["function"]
        name = item.get("name")
        if not isinstance(name, str) or not name:
            return None
        args: Any = next((item[k] for k in args_keys if k in item), {})
        if strict and set(item) - {"name", "type", "id", *args_keys}:
            return None  # an object with a "name" field is not necessarily a call
        out.append((name, args))
    return out or None


def parse_payload(text: str, args_keys: Sequence[str] = ("arguments", "parameters"), *,
                  strict: bool = True) -> list[tuple[str, Any]] | None:
    """Calls in a payload text (one JSON object or a list of them), or None."""
    value = _loads_lenient(text)
    return None if value is None else call_entries(value, args_keys, strict=strict)


# ---- argument typing ---------------------------------------------------------------------------------

_INT = re.compile(r"[+-]?\d+")


def _resolve(schema: Any, root: Mapping[str, Any]) -> Any:
    ref = schema.get("$ref") if isinstance(schema, dict) else None
    if isinstance(ref, str) and ref.startswith("#/"):
        node: Any = root
        for part in ref[2:].split("/"):
            node = node.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(node, dict) else None
        return node if isinstance(node, dict) else {}
    return schema


def _types(schema: Mapping[str, Any]) -> list[str]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return [kind]
    return [k for k in kind if isinstance(k, str)] if isinstance(kind, list) else []


def _from_string(value: str, types: Sequence[str]) -> Any:
    s = value.strip()
    if "integer" in types and _INT.fullmatch(s):
        return int(s)
    if "number" in types:
        try:
            number = float(s)
        except ValueError:
            pass
        else:
            return int(number) if _INT.fullmatch(s) else number
    if "boolean" in types and s.lower() in ("true", "false"):
        return s.lower() == "true"
    if "null" in types and s.lower() in ("null", "none", ""):
        return None
    if ("object" in types and s.startswith("{")) or ("array" in types and s.startswith("[")):
        parsed = _loads_lenient(s)
        if parsed is not None:
            return parsed
    return value


def coerce(value: Any, schema: Any, root: Mapping[str, Any] | None = None) -> Any:
    """`value` with strings turned into the types `schema` asks for, recursively (never raises)."""
    root = root if root is not None else (schema if isinstance(schema, dict) else {})
    schema = _resolve(schema, root)
    if not isinstance(schema, dict):
        return value
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and not _types(schema):
            branches = [_resolve(s, root) for s in schema[key]]
            merged = [t for b in branches if isinstance(b, dict) for t in _types(b)]
            return coerce(value, {**schema, "type": merged, key: None}, root) if merged else value
    types = _types(schema)
    if isinstance(value, str) and types and "string" not in types:
        value = _from_string(value, types)
    elif types == ["string"] and isinstance(value, (int, float, bool)):
        value = json.dumps(value)
    if isinstance(value, int | float) and not isinstance(value, bool) and types == ["integer"] \
            and float(value).is_integer():
        value = int(value)
    enum = schema.get("enum")
    if isinstance(enum, list) and value not in enum:
        value = next((e for e in enum if str(e) == str(value)), value)
    if isinstance(value, dict):
        props = found if isinstance(found := schema.get("properties"), dict) else {}
        extra = schema.get("additionalProperties")
        value = {k: coerce(v, props.get(k, extra), root) for k, v in value.items()}
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value = [coerce(v, schema["items"], root) for v in value]
    return value


# ---- calls in Ollama's shape --------------------------------------------------------------------------

def request_key(*parts: Any) -> str:
    """A digest of what identifies a request (model, messages, tools): the seed of stable call ids."""
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class ToolCallFactory:
    """Numbers, types and names the calls of one response."""

    def __init__(self, tools: Sequence[Mapping[str, Any]] | None, key: str = "") -> None:
        self.schemas: dict[str, Any] = {}
        for tool in tools or ():
            function = tool.get("function", tool)
            if isinstance(function, Mapping) and function.get("name"):
                self.schemas[str(function["name"])] = function.get("parameters") or {}
        self.key = key
        self.count = 0

    def make(self, name: str, arguments: Any) -> ToolCallDict:
        if isinstance(arguments, str):
            parsed = _loads_lenient(arguments) if arguments.strip() else {}
            arguments = parsed if isinstance(parsed, dict) else {"value": arguments}
        if not isinstance(arguments, dict):
            arguments = {"value": arguments}
        schema = self.schemas.get(name)
        if schema is not None:
            arguments = coerce(arguments, schema)
        index = self.count
        self.count += 1
        digest = hashlib.sha256(f"{self.key}|{index}|{name}".encode()).hexdigest()[:24]
        return {"id": f"call_{digest}", "function": {"index": index, "name": name, "arguments": arguments}}

    def from_payload(self, text: str, *, strict: bool = True) -> list[ToolCallDict] | None:
        entries = parse_payload(text, strict=strict)
        return None if entries is None else [self.make(n, a) for n, a in entries]
