"""Grammar masks: schemas compile (or fail with a clear 400), random-logit "models" always produce valid
JSON / tool calls within the budget, the overlapped mask worker changes nothing, the two thinking phases."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import numpy as np
import pytest
from tests.fixtures.tiny_models import train_tiny_tokenizer

from ax_llm_provider.engine.decoding.constraints import (
    GrammarCompiler,
    format_grammar,
    select_tools,
    tool_call_grammar,
)
from ax_llm_provider.engine.decoding.grammar_sampler import (
    BannedTokens,
    ConstraintPlan,
    GuidedSampler,
    JsonShape,
)
from ax_llm_provider.engine.decoding.toolcall_stream import make_extractor
from ax_llm_provider.engine.decoding.toolcalls import GENERIC_JSON, HERMES, ToolCallFactory
from ax_llm_provider.engine.errors import InvalidRequestError
from ax_llm_provider.engine.sampler import make_sampler

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string"},
    "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "kind": {"enum": ["cat", "dog"]},
    "tags": {"type": "array", "items": {"type": "string"}},
    "pos": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
            "required": ["x", "y"], "additionalProperties": False}},
    "required": ["name", "age", "kind", "pos"], "additionalProperties": False}
# Nothing bounded: free numbers, nested arrays of objects with required keys, strings of any length.
HARD = {"type": "object", "properties": {
    "n": {"type": "integer"}, "x": {"type": "number"},
    "rows": {"type": "array", "items": {"type": "object", "properties": {
        "k": {"type": "string"}, "v": {"type": "array", "items": {"type": "number"}}},
        "required": ["k", "v"], "additionalProperties": False}},
    "end": {"type": "string"}},
    "required": ["n", "x", "rows", "end"], "additionalProperties": False}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city", "days"]}}}
OTHER = {"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture(scope="module")
def hf_tokenizer() -> Any:
    from transformers import PreTrainedTokenizerFast

    tok = train_tiny_tokenizer(["<tool_call>", "</tool_call>", "<think>", "</think>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


@pytest.fixture(scope="module")
def compiler(hf_tokenizer: Any) -> GrammarCompiler:
    vocab = -(-len(hf_tokenizer) // 16) * 16  # padded logits rows, like real checkpoints
    return GrammarCompiler(hf_tokenizer, vocab=vocab, eos_ids=[2], key="tiny-test")


def run_guided(compiler: GrammarCompiler, sampler: GuidedSampler | BannedTokens, seed: int, limit: int,
               scripted: dict[int, int] | None = None) -> tuple[list[int], str]:
    """A random-logit model: each step gets fresh random logits; stops at EOS, the grammar end or the limit."""
    rng = np.random.default_rng(seed)
    history: list[int] = []
    sampler.start()
    try:
        for step in range(limit):
            logits = (rng.standard_normal(compiler.vocab) * 4).astype(np.float32)
            if scripted and step in scripted:
                logits[scripted[step]] = 1e4  # the "model" strongly wants this token here
            token = sampler(logits, history)
            history.append(token)
            if token in compiler.eos_ids or sampler.finished:
                break
    finally:
        sampler.close()
    text = b"".join(compiler.token_bytes(t) for t in history if t not in compiler.eos_ids).decode("utf-8", "replace")
    return history, text


def guided(compiler: GrammarCompiler, spec: Any, seed: int, **kwargs: Any) -> GuidedSampler:
    base = make_sampler(temperature=1.0, top_k=0, top_p=1.0, seed=seed)
    return GuidedSampler(compiler, spec, lambda logits, history: base(logits), **kwargs)


# ---- compiling -------------------------------------------------------------------------------------

def test_format_values() -> None:
    assert format_grammar(None) is None and format_grammar("") is None
    assert format_grammar("json").kind == "json"
    assert format_grammar(SCHEMA) is format_grammar(dict(SCHEMA))  # cached per schema


@pytest.mark.parametrize("schema", [{"type": "strin"}, {"properties": 5}, {"required": "a"},
                                    {"$ref": "#/nowhere"}, {"type": "string", "pattern": "(("}])
def test_invalid_schemas_are_clear_400s(schema: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError, match="^invalid JSON schema in format: "):
        format_grammar(schema)


def test_unimplemented_keywords_are_warnings() -> None:
    spec = format_grammar({"type": "object", "propertyNames": {"maxLength": 3}})
    assert spec is not None and any("propertyNames" in w for w in spec.warnings)


def test_tool_choice_must_name_a_tool() -> None:
    assert select_tools([TOOL, OTHER], "required") == [TOOL, OTHER]
    assert select_tools([TOOL, OTHER], "noop") == [OTHER]
    with pytest.raises(InvalidRequestError, match="names no tool"):
        select_tools([TOOL], "nope")


# ---- random-logit generation is always valid ----------------------------------------------------------

@pytest.mark.parametrize("seed", range(12))
def test_schema_outputs_validate_with_a_tight_budget(compiler: GrammarCompiler, seed: int) -> None:
    spec = format_grammar(SCHEMA)
    limit = 60  # random logits love long strings and arrays: the closing heuristics must end the JSON
    sampler = guided(compiler, spec, seed, max_tokens=limit)
    tokens, text = run_guided(compiler, sampler, seed, limit)
    assert sampler.finished, (len(tokens), text)
    jsonschema.validate(json.loads(text), SCHEMA)


@pytest.mark.parametrize("limit", [45, 70, 120])
@pytest.mark.parametrize("seed", range(6))
def test_unbounded_schema_closes_exactly_within_the_budget(compiler: GrammarCompiler, seed: int, limit: int) -> None:
    sampler = guided(compiler, format_grammar(HARD), seed, max_tokens=limit)
    tokens, text = run_guided(compiler, sampler, seed, limit)
    assert sampler.finished and len(tokens) <= limit, text
    jsonschema.validate(json.loads(text), HARD)


@pytest.mark.parametrize("seed", range(8))
def test_format_json_outputs_parse(compiler: GrammarCompiler, seed: int) -> None:
    sampler = guided(compiler, format_grammar("json"), seed, max_tokens=40)
    _, text = run_guided(compiler, sampler, seed, 40)
    assert isinstance(json.loads(text), dict)


def test_overlap_changes_nothing_but_timing(compiler: GrammarCompiler) -> None:
    spec = format_grammar(SCHEMA)
    a = run_guided(compiler, guided(compiler, spec, 5, max_tokens=80, overlap=True), 5, 80)
    b = run_guided(compiler, guided(compiler, spec, 5, max_tokens=80, overlap=False), 5, 80)
    assert a == b


def test_compact_sampling_is_the_same_draw(compiler: GrammarCompiler) -> None:
    spec = format_grammar(SCHEMA)
    a = run_guided(compiler, guided(compiler, spec, 9, max_tokens=80, compact=True), 9, 80)
    b = run_guided(compiler, guided(compiler, spec, 9, max_tokens=80, compact=False), 9, 80)
    assert a == b


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("family", [HERMES, GENERIC_JSON])
def test_forced_tool_calls_validate(compiler: GrammarCompiler, family: Any, seed: int) -> None:
    specials = compiler.special_markers(*(family.markers or ()))
    if family is HERMES:
        assert set(specials) == {"<tool_call>", "</tool_call>"}  # added tokens are referenced by id
    spec = tool_call_grammar(family, [TOOL, OTHER], "get_weather", specials)
    sampler = guided(compiler, spec, seed, max_tokens=90)  # the tiny vocabulary spells keys letter by letter
    _, text = run_guided(compiler, sampler, seed, 90)
    assert sampler.finished, text
    events = make_extractor(family, ToolCallFactory([TOOL, OTHER])).feed(text)
    events += make_extractor(family, ToolCallFactory([TOOL, OTHER])).finish() if not events else []
    calls = [c for kind, value in events if kind == "calls" for c in value]
    assert len(calls) == 1 and calls[0]["function"]["name"] == "get_weather", text
    jsonschema.validate(calls[0]["function"]["arguments"], TOOL["function"]["parameters"])


# ---- thinking phases -------------------------------------------------------------------------------

def test_maybe_thinking_lets_the_model_open_a_trace(compiler: GrammarCompiler) -> None:
    think_open, think_close = compiler.single_token("<think>"), compiler.single_token("</think>")
    assert think_open is not None and think_close is not None
    spec = format_grammar(SCHEMA)
    sampler = guided(compiler, spec, 3, max_tokens=120, thinking="maybe", think_open=think_open)
    tokens, text = run_guided(compiler, sampler, 3, 120, scripted={0: think_open, 6: think_close})
    assert tokens[0] == think_open and tokens[6] == think_close
    assert sampler.finished
    jsonschema.validate(json.loads(text.split("</think>", 1)[1]), SCHEMA)


def test_maybe_thinking_without_a_trace_is_constrained_at_once(compiler: GrammarCompiler) -> None:
    think_open, prose = compiler.single_token("<think>"), compiler.single_token("x")
    assert think_open is not None and prose is not None
    sampler = guided(compiler, format_grammar(SCHEMA), 4, max_tokens=60, thinking="maybe", think_open=think_open)
    # the "model" wants prose, not a trace: the first token must already be JSON
    tokens, text = run_guided(compiler, sampler, 4, 60, scripted={0: prose})
    assert tokens[0] not in (think_open, prose) and not text.startswith("x")
    jsonschema.validate(json.loads(text), SCHEMA)


def test_inside_thinking_is_unconstrained_until_the_close_tag(compiler: GrammarCompiler) -> None:
    think_close = compiler.single_token("</think>")
    sampler = guided(compiler, format_grammar(SCHEMA), 6, max_tokens=100, thinking="inside")
    tokens, text = run_guided(compiler, sampler, 6, 100, scripted={4: think_close})
    assert tokens[4] == think_close
    jsonschema.validate(json.loads(text.split("</think>", 1)[1]), SCHEMA)


# ---- pieces ----------------------------------------------------------------------------------------

def test_banned_tokens_are_never_sampled(compiler: GrammarCompiler) -> None:
    start = compiler.single_token("<tool_call>")
    plan = ConstraintPlan(banned_markers=("<tool_call>",))
    base = make_sampler(temperature=1.0, top_k=0, top_p=1.0, seed=0)
    sampler = plan.bind(compiler, lambda lg, h: base(lg), max_tokens=None, compact=True, want_logprobs=False)
    assert isinstance(sampler, BannedTokens)
    tokens, _ = run_guided(compiler, sampler, 0, 200, scripted={i: start for i in range(200)})
    assert start not in tokens


def test_json_shape_tracks_nesting() -> None:
    shape = JsonShape()
    shape.feed(b'{"a": [1, {"b": "x\\"}')
    assert shape.in_string and shape.need == 4
    shape.feed(b'"}]')
    assert shape.need == 1 and shape.closer == "}"
