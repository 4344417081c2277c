"""Structured outputs on the real SmolLM2-135M twin: 50/50 valid answers per mode, sampled (temperature > 0,
a seed per prompt), with a bounded num_predict.

What keeps every output complete within num_predict: the schema bounds what it can (maxLength, maxItems,
enums, integer ranges), and the engine's closing policy (engine/decoding/closing.py) ends the JSON when the budget
gets short (e.g. a number whose digits go on, or a model that would keep adding array items), so no
generation ends with done_reason "length" and unparseable text. The budgets leave room above the natural
answer (the grammar ends the generation as soon as the JSON is complete, so a larger num_predict costs
nothing), and the tests check that closing early stays the exception: a budget below the shortest
completion (about 40 tokens for PERSON with this tokenizer) would make every answer the minimal one.
SmolLM2's ChatML template has no tool syntax: forced tool calls use the generic JSON format with the
tools listed in the system message (engine/prompt.py).
"""

from __future__ import annotations

import json
import time
from typing import Any

import jsonschema
import pytest

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.engine.errors import CapabilityError

pytestmark = pytest.mark.golden
MODEL = "smollm2:135m"
N = 50

PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 12},
    "age": {"type": "number", "minimum": 0, "maximum": 120},
    "tags": {"type": "array", "items": {"enum": ["music", "sport", "books", "food"]}, "maxItems": 2},
    "home": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                              "floor": {"type": "integer", "minimum": 0, "maximum": 300}},
             "required": ["city", "floor"], "additionalProperties": False}},
    "required": ["name", "age", "tags", "home"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather forecast for a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 20, "description": "city name"},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "days", "unit"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current local time in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                   "required": ["city"]}}}

WHO = ["a retired teacher", "a young chess player", "a nurse", "a farmer", "a pilot", "a painter", "a baker",
       "a student", "a firefighter", "a programmer"]
WHERE = ["Lyon", "Osaka", "Lima", "Oslo", "Cairo"]
THINGS = ["a cat", "a car", "a book", "a city", "a song", "a fruit", "a planet", "a movie", "a chair", "a river"]
ASPECTS = ["its name", "its color", "its size", "its age", "its price"]
CITIES = ["Paris", "Tokyo", "Berlin", "Madrid", "Rome", "Cairo", "Lima", "Oslo", "Seoul", "Dublin"]


SPEED = {"tokens": 0, "ns": 0}


def chat(engine: Engine, content: str, **body: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    chunks = list(engine.chat({"model": MODEL, "messages": [{"role": "user", "content": content}], **body}))
    SPEED["tokens"] += chunks[-1].get("eval_count", 0)
    SPEED["ns"] += chunks[-1].get("eval_duration", 0)
    return chunks[:-1], chunks[-1]


def closed_early(final: dict[str, Any]) -> bool:
    return any("closed early" in w for w in final["ax"].get("warnings", []))


def speed() -> str:
    tokens, ns = SPEED["tokens"], SPEED["ns"]
    return f"{tokens} tokens generated so far at {tokens / max(ns, 1) * 1e9:.1f} tok/s"


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["message"]["content"] for c in chunks)


@pytest.mark.slow  # statistical: 50 generations
def test_schema_50_of_50(smollm2_engine: Engine) -> None:
    started, failures, closed, samples = time.monotonic(), [], 0, []
    prompts = [f"Describe {who} from {where} as a JSON profile." for who in WHO for where in WHERE]
    for i, prompt in enumerate(prompts[:N]):
        chunks, final = chat(smollm2_engine, prompt, format=PERSON,
                             options={"temperature": 0.8, "seed": 1000 + i, "num_predict": 128})
        text = text_of(chunks)
        closed += closed_early(final)
        samples.append(text)
        try:
            jsonschema.validate(json.loads(text), PERSON)
            assert final["done_reason"] == "stop"
        except (ValueError, AssertionError, jsonschema.ValidationError) as exc:
            failures.append((prompt, text, final["done_reason"], str(exc)[:120]))
    print(f"schema: {N - len(failures)}/{N} valid, {closed} closed early, {time.monotonic() - started:.1f}s; "
          + speed(), *samples[:3], sep="\n  ")
    assert not failures, failures
    assert closed <= N // 5, f"{closed}/{N} answers were cut short by the closing policy"


@pytest.mark.slow  # statistical: 50 generations
def test_format_json_50_of_50(smollm2_engine: Engine) -> None:
    started, failures, shapes, closed, samples = time.monotonic(), [], set(), 0, []
    prompts = [f"Answer in JSON: describe {thing}, with {aspect}." for thing in THINGS for aspect in ASPECTS]
    for i, prompt in enumerate(prompts[:N]):
        chunks, final = chat(smollm2_engine, prompt, format="json",
                             options={"temperature": 0.8, "seed": 2000 + i, "num_predict": 32})
        text = text_of(chunks)
        closed += closed_early(final)
        samples.append(text)
        try:
            value = json.loads(text)
            assert isinstance(value, dict) and final["done_reason"] == "stop"
            shapes.add(len(value))
        except (ValueError, AssertionError) as exc:
            failures.append((prompt, text, final["done_reason"], str(exc)[:120]))
    print(f"json: {N - len(failures)}/{N} parse, object sizes {sorted(shapes)}, {closed} closed early, "
          f"{time.monotonic() - started:.1f}s; " + speed(), *samples[:3], sep="\n  ")
    assert not failures, failures  # free-form objects: this model often nests on until the budget closes them


@pytest.mark.slow  # statistical: 50 generations
def test_forced_tool_calls_50_of_50(smollm2_engine: Engine) -> None:
    started, failures, closed, samples = time.monotonic(), [], 0, []
    schemas = {"get_weather": WEATHER["function"]["parameters"], "get_time": TIME["function"]["parameters"]}
    for i in range(N):
        city = CITIES[i % len(CITIES)]
        prompt = (f"What will the weather be in {city} over the next {i % 7 + 1} days?" if i % 2 else
                  f"What time is it now in {city}?")
        choice = "get_weather" if i % 4 == 1 else "required"  # by name, and "any of the tools"
        chunks, final = chat(smollm2_engine, prompt, tools=[WEATHER, TIME], tool_choice=choice,
                             options={"temperature": 0.8, "seed": 3000 + i, "num_predict": 96})
        calls = [c for ch in chunks for c in ch["message"].get("tool_calls") or []]
        closed += closed_early(final)
        samples.append(json.dumps([c["function"] for c in calls]))
        try:
            assert len(calls) == 1 and final["done_reason"] == "stop", (calls, text_of(chunks))
            call = calls[0]["function"]
            assert choice == "required" or call["name"] == choice
            jsonschema.validate(call["arguments"], schemas[call["name"]])
            assert not text_of(chunks).strip()  # the call never leaks into content
            assert calls[0]["id"].startswith("call_") and call["index"] == 0
            assert sum(1 for ch in chunks if ch["message"].get("tool_calls")) == 1  # one chunk, whole
        except (AssertionError, jsonschema.ValidationError) as exc:
            failures.append((prompt, choice, calls, str(exc)[:160]))
    print(f"tools: {N - len(failures)}/{N} valid calls, {closed} closed early, {time.monotonic() - started:.1f}s; "
          + speed(), *samples[:3], sep="\n  ")
    assert not failures, failures
    assert closed <= N // 5, f"{closed}/{N} calls were cut short by the closing policy"


def test_capability_errors(smollm2_engine: Engine) -> None:
    _, final = chat(smollm2_engine, "hi", tools=[WEATHER], options={"num_predict": 2})
    assert final["done"]  # tool_choice "auto" on a template without tool syntax: the generic tools prompt
    with pytest.raises(CapabilityError, match='"smollm2:135m" does not support thinking'):
        chat(smollm2_engine, "hi", think=True)
    _, final = chat(smollm2_engine, "hi", tools=[WEATHER], tool_choice="none", options={"num_predict": 2})
    assert final["done"]  # "none" on such a model: the tools are simply not used
