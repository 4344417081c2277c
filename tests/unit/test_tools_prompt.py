"""The generic tools prompt for chat templates without tool syntax: messages rewritten, calls parsed."""

from __future__ import annotations

from ax_llm_provider.engine.decoding.toolcall_stream import make_extractor
from ax_llm_provider.engine.decoding.toolcalls import ToolCallFactory
from ax_llm_provider.engine.decoding.tools_prompt import (
    PROMPT_TOOLS,
    has_tool_history,
    inject_tools,
    tools_instruction,
)

TOOL = {"type": "function", "function": {"name": "add", "description": "Add two integers",
                                         "parameters": {"type": "object", "properties": {
                                             "a": {"type": "integer"}, "b": {"type": "integer"}}}}}


def test_tools_go_into_the_system_turn() -> None:
    fresh = inject_tools([{"role": "user", "content": "2+3?"}], [TOOL])
    assert [m["role"] for m in fresh] == ["system", "user"] and fresh[0]["content"] == tools_instruction([TOOL])
    kept = inject_tools([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"}], [TOOL])
    assert kept[0]["content"].startswith("Be brief.\n\n# Tools") and '"name": "add"' in kept[0]["content"]
    assert inject_tools([{"role": "user", "content": "hi"}], None) == [{"role": "user", "content": "hi"}]


def test_history_calls_and_results_become_text() -> None:
    history = [{"role": "user", "content": "2+3 and 4+5?"},
               {"role": "assistant", "content": "", "tool_calls": [
                   {"function": {"name": "add", "arguments": {"a": 2, "b": 3}}},
                   {"function": {"name": "add", "arguments": {"a": 4, "b": 5}}}]},
               {"role": "tool", "content": "5"}, {"role": "tool", "content": "9"}]
    assert has_tool_history(history) and not has_tool_history(history[:1])
    out = inject_tools(history, None)
    assert [m["role"] for m in out] == ["user", "assistant", "user"]  # the two results share one user turn
    assert out[1]["content"] == ('<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>\n'
                                 '<tool_call>\n{"name": "add", "arguments": {"a": 4, "b": 5}}\n</tool_call>')
    assert out[2]["content"] == "<tool_response>\n5\n</tool_response>\n<tool_response>\n9\n</tool_response>"
    assert "tool_calls" in history[1]  # the caller's messages are not changed


def test_calls_in_the_output_are_parsed_by_the_tagged_extractor() -> None:
    extractor = make_extractor(PROMPT_TOOLS, ToolCallFactory([TOOL], "key"))
    text = 'Sure.\n<tool_call>\n{"name": "add", "arguments": {"a": "2", "b": 3}}\n</tool_call>'
    events = [e for i in range(0, len(text), 5) for e in extractor.feed(text[i:i + 5])] + extractor.finish()
    content = "".join(v for k, v in events if k == "content")
    calls = [c for k, v in events if k == "calls" for c in v]
    assert content == "Sure.\n" and len(calls) == 1
    assert calls[0]["function"]["name"] == "add" and calls[0]["function"]["arguments"] == {"a": 2, "b": 3}
