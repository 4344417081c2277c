"""A tiny Qwen3-style model (Qwen tool template + <think> switch): recorded outputs streamed token by token
through the real detokenizer and parser, prompt plans and errors, and the engine end to end (random weights:
only the grammar makes its output valid)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from tests.fixtures.tiny_models import QWEN_TEMPLATE, make_tiny_hf_model

from ax_llm_provider.engine.decoding.response_parser import ResponseParser, prompt_opens_think
from ax_llm_provider.engine.decoding.thinking import ThinkSplitter
from ax_llm_provider.engine.decoding.toolcall_stream import TaggedExtractor
from ax_llm_provider.engine.decoding.toolcalls import HERMES, ToolCallFactory
from ax_llm_provider.engine.decoding.tools_prompt import FORCED_PROMPT_TOOLS, PROMPT_TOOLS
from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.engine.errors import CapabilityError, InvalidRequestError
from ax_llm_provider.engine.prompt import PromptBuilder
from ax_llm_provider.engine.requests import ChatRequest
from ax_llm_provider.engine.textstream import TextStream
from ax_llm_provider.model.store import ModelStore
from ax_llm_provider.model.tokenizer import ChatTokenizer

GEN_PROMPT = "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
QWEN3_TEMPLATE = QWEN_TEMPLATE.replace(GEN_PROMPT, (
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"))
R1_TEMPLATE = QWEN_TEMPLATE.replace(GEN_PROMPT, "{{- '<|im_start|>assistant\\n<think>\\n' }}")  # deepseek-r1 style
assert QWEN3_TEMPLATE != QWEN_TEMPLATE

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Forecast for a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                     "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "days"]}}}
ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
TOOLS = [WEATHER, ADD]
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"},
                                           "tags": {"type": "array", "items": {"enum": ["a", "b"]}}},
          "required": ["ok", "n", "tags"], "additionalProperties": False}

# What Qwen3 writes (recorded from qwen3 runs on these tools, shortened): thinking, then calls / an answer.
RECORDED = [
    ('<think>\nThe user wants the weather in Paris for 3 days. I will call get_weather.\n</think>\n\n'
     '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": "3"}}\n</tool_call>',
     "The user wants the weather in Paris for 3 days. I will call get_weather.", "",
     [("get_weather", {"city": "Paris", "days": 3})]),
    ('<think>\nTwo things: add and weather.\n</think>\n\nLet me do both.\n<tool_call>\n{"name": "add", '
     '"arguments": {"a": 2, "b": 40}}\n</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": '
     '{"city": "Oslo", "days": 1}}\n</tool_call>',
     "Two things: add and weather.", "Let me do both.\n", [("add", {"a": 2, "b": 40}),
                                                           ("get_weather", {"city": "Oslo", "days": 1})]),
    ("<think>\n\n</think>\n\nThe weather in Paris is sunny, 21 degrees.", "",
     "The weather in Paris is sunny, 21 degrees.", []),
    ('<think>\nThe result was 42.\n</think>\n\n{"ok": true, "n": 42, "tags": ["a"]}', "The result was 42.",
     '{"ok": true, "n": 42, "tags": ["a"]}', []),
]


@pytest.fixture(scope="module")
def qwen3_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture's tiny qwen3 checkpoint with <think>/</think> tokens and a Qwen3-style thinking template."""
    from tokenizers import AddedToken, Tokenizer

    src = make_tiny_hf_model(tmp_path_factory.mktemp("qwen3think"), "qwen3")
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("<think>", "</think>")])
    tok.save(str(src / "tokenizer.json"))
    config = json.loads((src / "tokenizer_config.json").read_text())
    config["chat_template"] = QWEN3_TEMPLATE
    (src / "tokenizer_config.json").write_text(json.dumps(config))
    return src


@pytest.fixture(scope="module")
def tokenizer(qwen3_src: Path) -> ChatTokenizer:
    return ChatTokenizer(qwen3_src)


@pytest.fixture(scope="module")
def engine(qwen3_src: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from ax_llm_provider.convert import convert

    root = tmp_path_factory.mktemp("qwen3twin")
    twin = convert(qwen3_src, root / "tiny-qwen3-think", name="tiny-qwen3-think", decode_capacity=511,
                   prefill_chunk=64, prefill_histories=(0, 64, 128, 256, 384))
    eng = Engine(ModelStore(root / "store"), backend="onnx", keep_alive=-1, auto_pull=False)
    yield eng, str(twin)
    eng.close()


def parse_tokens(tokenizer: ChatTokenizer, ids: list[int], splitter: ThinkSplitter) -> tuple[str, str, list, list]:
    """Token by token, as the runner streams: detokenizer -> think splitter -> tool-call extractor."""
    text = TextStream(lambda i: tokenizer.decode(i, skip_special_tokens=True))
    parser = ResponseParser(splitter, TaggedExtractor(HERMES, ToolCallFactory(TOOLS, "k")))
    parts = []
    for token in ids:
        parts += parser.feed(text.push(token))
    parts += parser.feed(text.finish("stop")) + parser.finish()
    calls = [(c["function"]["name"], c["function"]["arguments"]) for p in parts for c in p.tool_calls or []]
    return "".join(p.thinking for p in parts), "".join(p.content for p in parts), calls, parts


@pytest.mark.parametrize(("output", "thinking", "content", "calls"), RECORDED)
def test_recorded_outputs_token_by_token(tokenizer: ChatTokenizer, output: str, thinking: str, content: str,
                                         calls: list) -> None:
    ids = tokenizer.encode(output)
    for marker in ("<think>", "</think>", "<tool_call>", "</tool_call>"):
        if marker in output:
            assert tokenizer.encode(marker)[0] in ids  # the markers are single added tokens, as in Qwen3
    got_thinking, got_content, got_calls, parts = parse_tokens(tokenizer, ids, ThinkSplitter())
    assert (got_thinking, got_content, got_calls) == (thinking, content, calls)
    for part in parts:  # thinking parts carry no content; call text never reaches content
        assert not (part.thinking and part.content)
        assert "<tool_call>" not in part.content and "</think>" not in part.content


@pytest.mark.parametrize(("output", "thinking", "content", "calls"), RECORDED)
def test_recorded_outputs_every_split_point(output: str, thinking: str, content: str, calls: list) -> None:
    for cut in range(len(output) + 1):
        parser = ResponseParser(ThinkSplitter(), TaggedExtractor(HERMES, ToolCallFactory(TOOLS, "k")))
        parts = parser.feed(output[:cut]) + parser.feed(output[cut:]) + parser.finish()
        got = ("".join(p.thinking for p in parts), "".join(p.content for p in parts),
               [(c["function"]["name"], c["function"]["arguments"]) for p in parts for c in p.tool_calls or []])
        assert got == (thinking, content, calls), cut


def test_prompt_plans(tokenizer: ChatTokenizer, tmp_path: Path) -> None:
    qwen3 = PromptBuilder(tokenizer, "tiny-qwen3")
    req = ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}], tools=TOOLS)
    plan = qwen3.chat_plan(req)
    assert plan.family is HERMES and plan.think and plan.tool_choice == "auto" and not plan.forced
    rendered = tokenizer.decode(plan.render(plan.messages))
    assert "<tools>" in rendered and rendered.endswith("<|im_start|>assistant\n")
    assert not prompt_opens_think(tokenizer.decode, plan.render(plan.messages))
    off = qwen3.chat_plan(ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}], think=False))
    assert tokenizer.decode(off.render(off.messages)).endswith("<think>\n\n</think>\n\n") and not off.think
    none = qwen3.chat_plan(ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}], tools=TOOLS,
                                       tool_choice="none"))
    assert none.family is None and "<tools>" not in tokenizer.decode(none.render(none.messages))
    history = qwen3.chat_plan(ChatRequest(model="m", messages=[
        {"role": "user", "content": "q1"}, {"role": "assistant", "content": "<think>old</think>\n\nA1"},
        {"role": "user", "content": "q2"}]))
    assert "old" not in tokenizer.decode(history.render(history.messages))  # earlier reasoning dropped

    chatml = PromptBuilder(ChatTokenizer(make_tiny_hf_model(tmp_path, "llama")), "tiny-llama")
    auto = chatml.chat_plan(req)  # no tool syntax in the template: the generic tools prompt, tagged calls
    assert auto.family is PROMPT_TOOLS and not auto.forced
    prompt_text = chatml.tokenizer.decode(auto.render(auto.messages))
    assert prompt_text.startswith("<|im_start|>system\n# Tools") and '"name": "get_weather"' in prompt_text
    assert "<tool_call>" in prompt_text and prompt_text.endswith("<|im_start|>assistant\n")
    with pytest.raises(CapabilityError, match='"tiny-llama" does not support thinking'):
        chatml.chat_plan(ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}], think="high"))
    forced = chatml.chat_plan(req.model_copy(update={"tool_choice": "add", "messages": [
        ChatRequest.model_validate({"model": "m", "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "add", "arguments": {"a": 1}}}]},
            {"role": "tool", "content": "1", "tool_name": "add"},
            {"role": "user", "content": "again"}]}).messages][0]}))
    assert forced.family is FORCED_PROMPT_TOOLS and forced.forced
    text = chatml.tokenizer.decode(forced.render(forced.messages))
    assert "<tools>" in text and '"name": "get_weather"' in text
    # the earlier call, written as the model is told to write it, and its result in a user turn
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>' in text
    assert "<|im_start|>user\n<tool_response>\n1\n</tool_response><|im_end|>" in text
    for bad, message in [("nope", "is not"), ("required", "needs tools")]:
        with pytest.raises(InvalidRequestError, match=message):
            qwen3.chat_plan(ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}],
                                        tools=None if bad == "required" else TOOLS, tool_choice=bad))
    with pytest.raises(InvalidRequestError, match="format cannot be combined"):
        qwen3.chat_plan(req.model_copy(update={"tool_choice": "add", "format": "json"}))

    r1 = ChatTokenizer(make_tiny_hf_model(tmp_path / "r1", "qwen2"))
    r1.chat_template = r1.hf.chat_template = R1_TEMPLATE
    r1_plan = PromptBuilder(r1, "r1").chat_plan(ChatRequest(model="m", messages=[{"role": "user", "content": "x"}]))
    assert prompt_opens_think(r1.decode, r1_plan.render(r1_plan.messages))


# ---- the engine, end to end --------------------------------------------------------------------

def chat(engine: Any, **body: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    eng, model = engine
    chunks = list(eng.chat({"model": model, "messages": [{"role": "user", "content": "Weather in Paris?"}],
                            **body}))
    return chunks[:-1], chunks[-1]


@pytest.mark.parametrize("seed", range(4))
def test_forced_tool_call_end_to_end(engine: Any, seed: int) -> None:
    chunks, final = chat(engine, tools=TOOLS, tool_choice="get_weather", think=False,
                         options={"seed": seed, "temperature": 1.0, "num_predict": 80})
    calls = [c for ch in chunks for c in ch["message"].get("tool_calls") or []]
    assert len(calls) == 1 and final["done_reason"] == "stop", chunks
    assert calls[0]["function"]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    jsonschema.validate(calls[0]["function"]["arguments"], WEATHER["function"]["parameters"])
    assert not "".join(ch["message"]["content"] for ch in chunks).strip()
    again, _ = chat(engine, tools=TOOLS, tool_choice="get_weather", think=False,
                    options={"seed": seed, "temperature": 1.0, "num_predict": 80})
    assert [c for ch in again for c in ch["message"].get("tool_calls") or []] == calls  # stable ids, same seed


def test_required_picks_one_of_the_tools(engine: Any) -> None:
    chunks, _ = chat(engine, tools=TOOLS, tool_choice="required", think=False,
                     options={"seed": 1, "temperature": 1.0, "num_predict": 80})
    calls = [c for ch in chunks for c in ch["message"].get("tool_calls") or []]
    assert len(calls) == 1 and calls[0]["function"]["name"] in ("get_weather", "add")


@pytest.mark.parametrize("seed", range(4))
def test_format_schema_end_to_end(engine: Any, seed: int) -> None:
    chunks, final = chat(engine, format=SCHEMA, think=False,
                         options={"seed": seed, "temperature": 1.0, "num_predict": 40})
    jsonschema.validate(json.loads("".join(ch["message"]["content"] for ch in chunks)), SCHEMA)
    assert final["done_reason"] == "stop"


@pytest.mark.parametrize("seed", range(3))
def test_thinking_and_format_are_two_phases(engine: Any, seed: int) -> None:
    chunks, final = chat(engine, format=SCHEMA, think=True,
                         options={"seed": seed, "temperature": 1.0, "num_predict": 60})
    for ch in chunks:
        assert not (ch["message"].get("thinking") and ch["message"]["content"])  # thinking chunks: content ""
    content = "".join(ch["message"]["content"] for ch in chunks)
    if content:  # the answer, whenever the model got to it, follows the schema
        jsonschema.validate(json.loads(content), SCHEMA)
    else:
        assert "".join(ch["message"].get("thinking") or "" for ch in chunks) and final["done_reason"] == "length"


def test_tool_choice_none_never_starts_a_call(engine: Any) -> None:
    chunks, _ = chat(engine, tools=TOOLS, tool_choice="none", think=False,
                     options={"seed": 0, "temperature": 2.0, "num_predict": 60})
    assert not any(ch["message"].get("tool_calls") for ch in chunks)
    assert "<tool_call>" not in "".join(ch["message"]["content"] for ch in chunks)


def test_invalid_schema_is_refused_before_queueing(engine: Any) -> None:
    eng, model = engine
    with pytest.raises(InvalidRequestError, match="invalid JSON schema in format"):
        eng.chat({"model": model, "messages": [{"role": "user", "content": "x"}], "format": {"type": "nope"}})



def test_generate_format_and_thinking(engine: Any) -> None:
    eng, model = engine
    chunks = list(eng.generate({"model": model, "prompt": "Give JSON.", "format": SCHEMA, "think": False,
                                "options": {"seed": 2, "temperature": 1.0, "num_predict": 40}}))
    jsonschema.validate(json.loads("".join(c["response"] for c in chunks)), SCHEMA)
    assert chunks[-1]["done_reason"] == "stop" and chunks[-1]["context"]
    chunks = list(eng.generate({"model": model, "prompt": "Think first.", "think": "high",
                                "options": {"seed": 3, "temperature": 1.0, "num_predict": 30}}))
    for c in chunks[:-1]:
        assert not (c.get("thinking") and c["response"])
        assert "<think>" not in c["response"] and "</think>" not in c["response"]
    with pytest.raises(InvalidRequestError, match="invalid JSON schema in format"):
        eng.generate({"model": model, "prompt": "x", "format": {"required": "a"}})
