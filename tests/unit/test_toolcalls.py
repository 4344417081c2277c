"""Tool-call registry, payload parsing, argument typing, stable ids and streaming extraction."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.fixtures.tiny_models import CHATML_TEMPLATE, QWEN_TEMPLATE

from ax_llm_provider.engine.decoding.toolcall_stream import JsonExtractor, TaggedExtractor, make_extractor
from ax_llm_provider.engine.decoding.toolcalls import (
    GENERIC_JSON,
    HERMES,
    LLAMA3,
    MISTRAL,
    ToolCallFactory,
    ToolFamily,
    coerce,
    family_by_name,
    family_for_template,
    parse_payload,
    register_family,
    request_key,
)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather forecast",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}, "metric": {"type": "boolean"},
        "ratio": {"type": "number"}, "tags": {"type": "array", "items": {"type": "integer"}},
        "where": {"type": "object", "properties": {"lat": {"type": "number"}}},
        "unit": {"enum": [1, 2]}, "maybe": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        "ref": {"$ref": "#/$defs/count"}},
        "required": ["city"], "$defs": {"count": {"type": "integer"}}}}}
TOOLS = [WEATHER, {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}}]

LLAMA3_TEMPLATE = ("<|start_header_id|>system<|end_header_id|>{% if tools %}Respond with a JSON "
                   '{"name": function name, "parameters": dictionary}{{ tools | tojson }}{% endif %}<|eot_id|>')
MISTRAL_TEMPLATE = "{% for m in messages %}[INST]{{ m.content }}[/INST]{% endfor %}{% if tools %}[AVAILABLE_TOOLS]" \
                   "{{ tools|tojson }}[/AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]"
GENERIC_TEMPLATE = "{% if tools %}{{ tools | tojson }}{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}"


def stream(extractor: TaggedExtractor | JsonExtractor, pieces: list[str]) -> tuple[str, list[dict]]:
    events = [e for p in pieces for e in extractor.feed(p)] + extractor.finish()
    content = "".join(v for k, v in events if k == "content")
    calls = [c for k, v in events if k == "calls" for c in v]
    return content, calls


def simple(calls: list[dict]) -> list[tuple[str, dict]]:
    return [(c["function"]["name"], c["function"]["arguments"]) for c in calls]


def test_families_are_detected_from_templates() -> None:
    assert family_for_template(QWEN_TEMPLATE) is HERMES
    assert family_for_template(LLAMA3_TEMPLATE) is LLAMA3
    assert family_for_template(MISTRAL_TEMPLATE) is MISTRAL
    assert family_for_template(GENERIC_TEMPLATE) is GENERIC_JSON
    assert family_for_template(CHATML_TEMPLATE) is None  # SmolLM2-style ChatML: no tool syntax
    assert family_for_template(None) is None
    assert family_by_name("hermes") is HERMES


def test_registry_accepts_new_families() -> None:
    custom = ToolFamily("custom", lambda t: "<<call>>" in t, markers=("<<call>>", "<</call>>"))
    register_family(custom)
    try:
        assert family_for_template("x <<call>> tools") is custom
    finally:
        from ax_llm_provider.engine.decoding import toolcalls

        toolcalls._REGISTRY.remove(custom)


def test_arguments_are_typed_against_the_schema() -> None:
    schema = WEATHER["function"]["parameters"]
    args = {"city": 7, "days": "3", "metric": "True", "ratio": "0.5", "tags": ["1", "2"], "where": {"lat": "48.8"},
            "unit": "2", "maybe": "5", "ref": "9", "extra": "x"}
    assert coerce(args, schema) == {"city": "7", "days": 3, "metric": True, "ratio": 0.5, "tags": [1, 2],
                                    "where": {"lat": 48.8}, "unit": 2, "maybe": 5, "ref": 9, "extra": "x"}
    assert coerce({"days": "three"}, schema) == {"days": "three"}  # not a number: left as the model wrote it
    assert coerce({"days": 3.0}, schema) == {"days": 3}
    assert coerce({"tags": "[1, 2]"}, schema) == {"tags": [1, 2]}  # stringified JSON


def test_payloads_in_every_shape() -> None:
    assert parse_payload('{"name": "add", "arguments": {"a": 1}}') == [("add", {"a": 1})]
    assert parse_payload('{"name": "add", "parameters": {"a": 1}}') == [("add", {"a": 1})]
    assert parse_payload("{'name': 'add', 'arguments': {'a': True}}") == [("add", {"a": True})]  # python dict
    assert parse_payload('[{"name": "a"}, {"name": "b", "arguments": "{\\"x\\": 1}"}]') == [
        ("a", {}), ("b", '{"x": 1}')]
    assert parse_payload('{"type": "function", "function": {"name": "add", "arguments": {}}}') == [("add", {})]
    assert parse_payload('{"name": "Bob", "age": 3}') is None  # an answer, not a call
    assert parse_payload('{"name": "Bob", "age": 3}', strict=False) == [("Bob", {})]
    assert parse_payload("not json") is None


def test_ids_are_stable_per_request_and_index() -> None:
    key = request_key("m", [{"role": "user", "content": "hi"}], TOOLS)
    a, b = ToolCallFactory(TOOLS, key), ToolCallFactory(TOOLS, key)
    first = [a.make("add", {"a": "1"}), a.make("add", {"a": 2})]
    again = [b.make("add", {"a": "1"}), b.make("add", {"a": 2})]
    assert first == again
    assert first[0]["id"] != first[1]["id"] and first[0]["id"].startswith("call_")
    assert [c["function"]["index"] for c in first] == [0, 1]
    assert first[0]["function"]["arguments"] == {"a": 1}
    other = ToolCallFactory(TOOLS, request_key("m", [{"role": "user", "content": "hello"}], TOOLS))
    assert other.make("add", {})["id"] != first[0]["id"]
    assert a.make("add", '{"a": "4"}')["function"]["arguments"] == {"a": 4}  # arguments given as a string


HERMES_CASES = [
    # (recorded output, content, calls)
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": "3"}}\n</tool_call>', "",
     [("get_weather", {"city": "Paris", "days": 3})]),
    ('Let me check both.\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": "2"}}\n</tool_call>\n'
     '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>', "Let me check both.\n",
     [("add", {"a": 1, "b": 2}), ("get_weather", {"city": "Oslo"})]),
    ("The answer uses < and <tool and <tool_cal but no call.", "The answer uses < and <tool and <tool_cal but no call.",
     []),
    ('<tool_call>\n{"name": "add", "arguments": {"a": 5}}', "", [("add", {"a": 5})]),  # ran out before closing
    ("<tool_call>\nnot json at all\n</tool_call>", "<tool_call>\nnot json at all\n</tool_call>", []),
]


@pytest.mark.parametrize(("text", "content", "calls"), HERMES_CASES)
def test_hermes_every_split_point(text: str, content: str, calls: list) -> None:
    for cut in range(len(text) + 1):
        got_content, got_calls = stream(TaggedExtractor(HERMES, ToolCallFactory(TOOLS)), [text[:cut], text[cut:]])
        assert got_content == content, cut
        assert simple(got_calls) == calls, cut
    got_content, got_calls = stream(TaggedExtractor(HERMES, ToolCallFactory(TOOLS)), list(text))
    assert (got_content, simple(got_calls)) == (content, calls)


def test_hermes_never_leaks_a_partial_marker() -> None:
    text = HERMES_CASES[1][0]
    extractor = TaggedExtractor(HERMES, ToolCallFactory(TOOLS))
    for ch in text:
        for kind, value in extractor.feed(ch):
            if kind == "content":
                assert "<" not in value and "{" not in value


JSON_CASES = [
    (GENERIC_JSON, '{"name": "add", "arguments": {"a": "1", "b": 2}}', "", [("add", {"a": 1, "b": 2})]),
    (GENERIC_JSON, '```json\n{"name": "add", "arguments": {"a": 1}}\n```', "", [("add", {"a": 1})]),
    (GENERIC_JSON, '  {"name": "Bob", "age": 3}', '  {"name": "Bob", "age": 3}', []),  # JSON answer, not a call
    (GENERIC_JSON, "Plain answer {not json}", "Plain answer {not json}", []),
    (LLAMA3, '<|python_tag|>{"name": "add", "parameters": {"a": 1}}; {"name": "add", "parameters": {"b": 2}}', "",
     [("add", {"a": 1}), ("add", {"b": 2})]),
    (LLAMA3, '{"name": "add", "parameters": {"a": 1}}\nDone.', "Done.", [("add", {"a": 1})]),
    (MISTRAL, '[{"name": "add", "arguments": {"a": 1}}, {"name": "get_weather", "arguments": {"city": "Rome"}}]', "",
     [("add", {"a": 1}), ("get_weather", {"city": "Rome"})]),
]


@pytest.mark.parametrize(("family", "text", "content", "calls"), JSON_CASES)
def test_json_families_every_split_point(family: ToolFamily, text: str, content: str, calls: list) -> None:
    for cut in range(len(text) + 1):
        got_content, got_calls = stream(make_extractor(family, ToolCallFactory(TOOLS)), [text[:cut], text[cut:]])
        assert (got_content, simple(got_calls)) == (content, calls), cut


@settings(max_examples=150, deadline=None)
@given(data=st.data(), case=st.sampled_from(HERMES_CASES))
def test_hermes_random_chunkings(data: st.DataObject, case: tuple) -> None:
    text, content, calls = case
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=10)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    got_content, got_calls = stream(TaggedExtractor(HERMES, ToolCallFactory(TOOLS)), pieces)
    assert (got_content, simple(got_calls)) == (content, calls)
