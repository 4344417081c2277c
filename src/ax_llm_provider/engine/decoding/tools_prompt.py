"""Tools for a chat model whose template cannot express them (SmolLM2's ChatML, Llama-2-style templates).

Ollama gives such models a tools section in its own library templates (ollama.com/library, e.g. the
qwen2.5 and smollm2 templates): the tools are listed in the system turn, the model is told to answer
a call as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, earlier calls are written the
same way in the assistant turns and tool results come back in a user turn inside `<tool_response>`.
This module does the same through the model's own chat template, so the turn format (ChatML,
[INST], ...) stays the model's: `inject_tools` rewrites the messages, the template renders them.

Calls in the output are read by the tagged extractor of the tool-call registry (`PROMPT_TOOLS` is a
hermes-style family that is never detected from a template). A forced call (tool_choice
"required"/"any"/a name) is generated through a grammar, so it is always well formed; its grammar
writes the call as the bare JSON object (`FORCED_PROMPT_TOOLS`, the registry's generic json family),
without the tags: measured on SmolLM2-135M (langchain-tests' unicode tool call), the forced
`<tool_call>` prefix made the model leave every string argument empty, the bare object did not.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .toolcalls import GENERIC_JSON, ToolFamily

TemplateMessage = dict[str, Any]

# How a template-less model is asked to write calls: the hermes syntax, found by no template detection.
PROMPT_TOOLS = ToolFamily("prompt", lambda template: False, markers=("<tool_call>", "</tool_call>"),
                          call_prefix="<tool_call>\n", call_suffix="\n</tool_call>")
# How a forced call of a template-less model is written by the grammar (see the module doc).
FORCED_PROMPT_TOOLS = GENERIC_JSON


def tools_instruction(tools: Sequence[Mapping[str, Any]]) -> str:
    """The system-turn text that lists the tools and the call syntax."""
    listed = "\n".join(json.dumps({"type": "function", "function": t.get("function", t)}, ensure_ascii=False)
                       for t in tools)
    return ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n"
            f"<tools>\n{listed}\n</tools>\n\n"
            "For each function call, return a json object with function name and arguments within "
            "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
            "<args-json-object>}\n</tool_call>")


def calls_text(calls: Sequence[Mapping[str, Any]]) -> str:
    """Earlier assistant calls, written the way the model is told to write them."""
    parts = []
    for call in calls:
        function = call.get("function", call)
        body = json.dumps({"name": function.get("name"), "arguments": function.get("arguments") or {}},
                          ensure_ascii=False)
        parts.append(PROMPT_TOOLS.call_prefix + body + PROMPT_TOOLS.call_suffix)
    return "\n".join(parts)


def has_tool_history(messages: Sequence[Mapping[str, Any]]) -> bool:
    return any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)


def inject_tools(messages: Sequence[Mapping[str, Any]],
                 tools: Sequence[Mapping[str, Any]] | None) -> list[TemplateMessage]:
    """The messages with tool calls and results as text, and (when `tools`) the tools in the system turn.

    Consecutive tool results become one user turn (templates that require alternating roles accept it).
    """
    out: list[TemplateMessage] = []
    for message in messages:
        message = dict(message)
        calls = message.pop("tool_calls", None)
        if calls and message.get("role") == "assistant":
            message["content"] = "\n".join(p for p in (message.get("content") or "", calls_text(calls)) if p)
        if message.get("role") == "tool":
            result = f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"
            if out and out[-1].get("role") == "user" and out[-1].get("_tool_results"):
                out[-1]["content"] += "\n" + result
                continue
            message = {"role": "user", "content": result, "_tool_results": True}
        out.append(message)
    for message in out:
        message.pop("_tool_results", None)
    if tools:
        text = tools_instruction(tools)
        if out and out[0].get("role") == "system":
            out[0]["content"] = f"{out[0].get('content') or ''}\n\n{text}".lstrip()
        else:
            out.insert(0, {"role": "system", "content": text})
    return out
