"""AXOllama / AXOllamaEmbedding without a model: conversions, request bodies, metadata, reference parity.

A scripted engine records the Ollama request bodies and replays Ollama response chunks, so these
tests pin the LlamaIndex-facing behaviour (llama-index-llms-ollama 0.11's shapes) in milliseconds.
The reference-parity tests are skipped when llama-index-llms-ollama / -embeddings-ollama are absent.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import importlib.util
import inspect
from typing import Any

import ollama
import pytest
from llama_index.core.base.llms.types import (
    AudioBlock,
    CacheControl,
    CachePoint,
    ChatMessage,
    ImageBlock,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from pydantic import BaseModel

from ax_llm_provider.engine.errors import CapabilityError
from ax_llm_provider.integrations.llamaindex import AXOllama, AXOllamaEmbedding, tool_choice_name
from ax_llm_provider.integrations.llamaindex_convert import (
    StreamAccumulator,
    chat_response,
    to_ollama_messages,
)

HAS_REFERENCE_LLM = importlib.util.find_spec("llama_index.llms.ollama") is not None
HAS_REFERENCE_EMBEDDING = importlib.util.find_spec("llama_index.embeddings.ollama") is not None
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJ"
                       "AAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")


def _chunk(content: str = "", thinking: str | None = None, calls: list[dict[str, Any]] | None = None,
           **final: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking is not None:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = calls
    return {"model": "m", "created_at": "2026-01-01T00:00:00Z", "message": message, "done": bool(final), **final}


def _call(name: str, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    return {"id": call_id, "function": {"name": name, "arguments": args}}


FINAL = {"done_reason": "stop", "prompt_eval_count": 11, "eval_count": 5,
         "total_duration": 9, "ax": {"backend": "fake"}}
THINK_AND_CALLS = [
    _chunk(thinking="Need "), _chunk(thinking="a tool."), _chunk("Let me "), _chunk("check."),
    _chunk(calls=[_call("lookup", {"q": 1}, "call_a")]),
    _chunk(calls=[_call("lookup", {"q": 1}, "call_a"), _call("other", {}, "call_b")]),  # a repeat is dropped
    _chunk(**FINAL),
]
THINK_AND_TWO_CALLS = [c for i, c in enumerate(THINK_AND_CALLS) if i != 4]  # each call once, as engines send


class ScriptedEngine:
    """What AXOllama needs from an Engine: chat/achat streams, show/load, embed/aembed; requests recorded."""

    def __init__(self, chunks: list[dict[str, Any]] | None = None, capabilities: tuple[str, ...] = ("completion",),
                 capacity: int = 2047, loaded: bool = True, error: Exception | None = None) -> None:
        self.chunks = chunks if chunks is not None else [_chunk("Hi"), _chunk(" there"), _chunk(**FINAL)]
        self.capabilities, self.capacity, self.loaded, self.error = capabilities, capacity, loaded, error
        self.requests: list[dict[str, Any]] = []
        self.loads: list[tuple[str, Any]] = []

    def show(self, model: str) -> dict[str, Any]:
        info: dict[str, Any] = {"general.architecture": "llama", "llama.trained_context_length": 8192}
        if not self.loaded:
            return {"model_info": info, "capabilities": ["completion"]}
        return {"model_info": {**info, "llama.context_length": self.capacity}, "capabilities": list(self.capabilities)}

    def load(self, model: str, keep_alive: Any = None) -> None:
        self.loads.append((model, keep_alive))
        self.loaded = True

    def _start(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        self.requests.append(copy.deepcopy(body))
        if self.error is not None:
            raise self.error
        return copy.deepcopy(self.chunks)

    def chat(self, body: dict[str, Any]) -> Any:
        return iter(self._start(body))

    def achat(self, body: dict[str, Any]) -> Any:
        chunks = self._start(body)

        async def gen() -> Any:
            for chunk in chunks:
                yield chunk

        return gen()

    def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(copy.deepcopy(body))
        texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
        return {"model": body["model"], "embeddings": [[float(len(t)), 1.0] for t in texts], "ax": {}}

    async def aembed(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.embed(body)


def _llm(engine: ScriptedEngine | None = None, **kwargs: Any) -> AXOllama:
    return AXOllama(model="smollm2:135m", engine=engine or ScriptedEngine(), **kwargs)  # type: ignore[arg-type]


def _tool() -> FunctionTool:
    def lookup(q: int) -> str:
        """Look something up."""
        return str(q)

    return FunctionTool.from_defaults(fn=lookup)


# ---- message conversion ------------------------------------------------------------------------

def test_messages_text_images_thinking_and_tool_correlation() -> None:
    history = [
        ChatMessage(role=MessageRole.SYSTEM, content="Be brief."),
        ChatMessage(role=MessageRole.USER, blocks=[TextBlock(text="What is "), TextBlock(text="this?"),
                                                   ImageBlock(image=PNG),
                                                   CachePoint(cache_control=CacheControl(type="ephemeral"))]),
        ChatMessage(role=MessageRole.ASSISTANT, blocks=[ThinkingBlock(content="hmm"), TextBlock(text=""),
                                                        ToolCallBlock(tool_call_id="call_1", tool_name="lookup",
                                                                      tool_kwargs='{"q": 3}')]),
        ChatMessage(role=MessageRole.TOOL, content="3", additional_kwargs={"tool_call_id": "call_1"}),
    ]
    system, user, assistant, tool = to_ollama_messages(history)
    assert system == {"role": "system", "content": "Be brief."}
    assert user["content"] == "What is this?" and base64.b64decode(user["images"][0]) == PNG
    assert assistant == {"role": "assistant", "content": "", "thinking": "hmm",
                         "tool_calls": [{"id": "call_1", "function": {"name": "lookup", "arguments": {"q": 3}}}]}
    assert tool == {"role": "tool", "content": "3", "tool_call_id": "call_1", "tool_name": "lookup"}


def test_messages_legacy_tool_calls_and_unsupported_blocks() -> None:
    legacy = [{"function": {"name": "f", "arguments": {}}}]
    [message] = to_ollama_messages([ChatMessage(role="assistant", content="x",
                                                additional_kwargs={"tool_calls": legacy})])
    assert message["tool_calls"] == legacy
    with pytest.raises(ValueError, match="Unsupported block type"):
        to_ollama_messages([ChatMessage(role="user", blocks=[AudioBlock(audio=b"RIFF", format="wav")])])


@pytest.mark.skipif(not HAS_REFERENCE_LLM, reason="llama-index-llms-ollama is not installed")
def test_messages_match_the_reference_without_ids() -> None:
    from llama_index.llms.ollama import Ollama

    history = [
        ChatMessage(role="system", content="S"),
        ChatMessage(role="user", blocks=[TextBlock(text="a"), TextBlock(text="b"), ImageBlock(image=PNG)]),
        ChatMessage(role="assistant", blocks=[ThinkingBlock(content="t"), TextBlock(text="c"),
                                              ToolCallBlock(tool_name="f", tool_kwargs={"x": 1}),
                                              ToolCallBlock(tool_name="g", tool_kwargs={})]),
        ChatMessage(role="tool", content="r"),
    ]
    assert to_ollama_messages(history) == Ollama(model="m")._convert_to_ollama_messages(history)


# ---- responses -----------------------------------------------------------------------------------

def test_chat_response_blocks_usage_and_ids() -> None:
    merged = _chunk("Let me check.", "Need a tool.", [_call("lookup", {"q": 1}, "call_a"),
                                                      _call("other", {}, "call_b")],
                    **FINAL)
    response = chat_response(merged)
    kinds = [type(b).__name__ for b in response.message.blocks]
    assert kinds == ["ThinkingBlock", "TextBlock", "ToolCallBlock", "ToolCallBlock"]
    assert response.message.content == "Let me check."
    assert response.raw["usage"] == {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
    assert response.raw["ax"] == {"backend": "fake"}
    assert [b.tool_call_id for b in response.message.blocks if isinstance(b, ToolCallBlock)] == ["call_a", "call_b"]
    assert len([b for b in chat_response(merged, parallel_tool_calls=False).message.blocks
                if isinstance(b, ToolCallBlock)]) == 1


def test_stream_accumulator_is_cumulative_with_deltas() -> None:
    acc = StreamAccumulator()
    responses = [r for r in map(acc.feed, copy.deepcopy(THINK_AND_CALLS)) if r is not None]
    assert [r.delta for r in responses] == ["", "", "Let me ", "check.", "", "", ""]
    assert [r.additional_kwargs["thinking_delta"] for r in responses][:2] == ["Need ", "a tool."]
    last = responses[-1]
    assert last.message.content == "Let me check."
    assert isinstance(last.message.blocks[0], ThinkingBlock) and last.message.blocks[0].content == "Need a tool."
    assert [b.tool_name for b in last.message.blocks if isinstance(b, ToolCallBlock)] == ["lookup", "other"]
    assert last.raw["usage"]["total_tokens"] == 16 and "usage" not in responses[0].raw
    single = StreamAccumulator(parallel_tool_calls=False)
    for chunk in copy.deepcopy(THINK_AND_CALLS):
        single.feed(chunk)
    assert [c["function"]["name"] for c in single.calls] == ["lookup"]


# ---- requests --------------------------------------------------------------------------------------

def test_request_options_format_think_keep_alive() -> None:
    engine = ScriptedEngine()
    llm = _llm(engine, temperature=0.2, additional_kwargs={"num_predict": 50, "top_k": 5}, thinking=True)
    llm.chat([ChatMessage(role="user", content="q")], think=False, max_tokens=7, seed=3, options={"top_k": 9},
             unknown_kwarg="ignored as the reference does")
    body = engine.requests[-1]
    assert body["options"] == {"temperature": 0.2, "num_ctx": 2047, "num_predict": 7, "top_k": 9, "seed": 3}
    assert body["think"] is False and "keep_alive" not in body and "format" not in body and "tools" not in body
    assert body["messages"] == [{"role": "user", "content": "q"}]
    json_llm = _llm(engine, json_mode=True, keep_alive=-1, thinking="high")
    json_llm.chat([ChatMessage(role="user", content="q")])
    assert engine.requests[-1]["format"] == "json" and engine.requests[-1]["keep_alive"] == -1
    assert engine.requests[-1]["think"] == "high"
    json_llm.chat([ChatMessage(role="user", content="q")], format={"type": "object"})
    assert engine.requests[-1]["format"] == {"type": "object"}


def test_complete_goes_through_chat_as_one_user_message() -> None:
    engine = ScriptedEngine()
    assert _llm(engine).complete("Say hi").text == "Hi there"
    assert engine.requests[-1]["messages"] == [{"role": "user", "content": "Say hi"}]
    assert "".join(r.delta for r in _llm(engine).stream_complete("x")) == "Hi there"


@pytest.mark.parametrize(("capabilities", "emulate", "history_roles", "call_kwargs", "expected"), [
    (("completion",), True, ["user"], {}, "required"),            # emulated auto: a call after the user turn
    (("completion",), True, ["user", "assistant", "tool"], {}, "none"),  # ... and an answer after tool results
    (("completion", "tools"), True, ["user"], {}, "auto"),        # native tool syntax: the model decides
    (("completion",), False, ["user"], {}, "auto"),               # emulation off: the engine's 400
    (("completion",), True, ["user"], {"tool_required": True}, "required"),
    (("completion",), True, ["user"], {"tool_choice": "lookup"}, "lookup"),  # FunctionAgent initial_tool_choice
    (("completion",), True, ["user"], {"tool_choice": {"type": "function", "function": {"name": "lookup"}}}, "lookup"),
    (("completion", "tools"), True, ["user"], {"tool_choice": "none"}, "none"),
])
def test_tool_choice(capabilities: tuple[str, ...], emulate: bool, history_roles: list[str],
                     call_kwargs: dict[str, Any], expected: str) -> None:
    engine = ScriptedEngine(capabilities=capabilities)
    history = [ChatMessage(role=role, content="x") for role in history_roles]
    _llm(engine, emulate_tool_choice=emulate).chat_with_tools([_tool()], chat_history=history, **call_kwargs)
    body = engine.requests[-1]
    assert body["tool_choice"] == expected
    assert body["tools"][0]["function"]["name"] == "lookup"
    assert len(history) == len(history_roles)  # the caller's list is not appended to (the reference does)


def test_tool_choice_name_and_field_default() -> None:
    assert tool_choice_name({"type": "required"}) == "required" and tool_choice_name(None) is None
    with pytest.raises(ValueError):
        tool_choice_name(3)
    engine = ScriptedEngine(capabilities=("completion", "tools"))
    _llm(engine, tool_choice="any").chat_with_tools([_tool()], user_msg="q")
    assert engine.requests[-1]["tool_choice"] == "any"


def test_tool_calls_from_response_and_parallel_rule() -> None:
    engine = ScriptedEngine(chunks=THINK_AND_TWO_CALLS)
    llm = _llm(engine)
    single = llm.chat_with_tools([_tool()], user_msg="q")
    assert [(s.tool_id, s.tool_name, s.tool_kwargs) for s in llm.get_tool_calls_from_response(single)] == [
        ("call_a", "lookup", {"q": 1})]
    both = llm.chat_with_tools([_tool()], user_msg="q", allow_parallel_tool_calls=True)
    assert [s.tool_name for s in llm.get_tool_calls_from_response(both)] == ["lookup", "other"]
    streamed = list(llm.stream_chat_with_tools([_tool()], user_msg="q"))[-1]
    assert [s.tool_name for s in llm.get_tool_calls_from_response(streamed)] == ["lookup"]
    plain = _llm(ScriptedEngine()).chat([ChatMessage(role="user", content="q")])
    assert llm.get_tool_calls_from_response(plain, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="Expected at least one tool call"):
        llm.get_tool_calls_from_response(plain)


def test_async_paths() -> None:
    engine = ScriptedEngine(chunks=THINK_AND_CALLS)
    llm = _llm(engine)

    async def run() -> tuple[Any, Any, Any]:
        response = await llm.achat([ChatMessage(role="user", content="q")])
        last = [r async for r in await llm.astream_chat([ChatMessage(role="user", content="q")])][-1]
        completion = await llm.acomplete("q")
        return response, last, completion

    response, last, completion = asyncio.run(run())
    assert response.message.content == last.message.content == completion.text == "Let me check."
    assert last.message.blocks[0].content == "Need a tool."  # type: ignore[union-attr]


def test_engine_errors_are_ollama_response_errors() -> None:
    llm = _llm(ScriptedEngine(error=CapabilityError('"smollm2:135m" does not support thinking')))
    with pytest.raises(ollama.ResponseError) as info:
        llm.chat([ChatMessage(role="user", content="q")], think=True)
    assert info.value.status_code == 400 and "does not support thinking" in str(info.value)


def test_structured_predict_sends_the_schema() -> None:
    class Person(BaseModel):
        name: str
        age: int

    engine = ScriptedEngine(chunks=[_chunk('{"name": "Ada", '), _chunk('"age": 36}'), _chunk(**FINAL)])
    llm = _llm(engine)
    assert llm.structured_predict(Person, PromptTemplate("Who: {x}"), x="Ada, 36") == Person(name="Ada", age=36)
    assert engine.requests[-1]["format"] == Person.model_json_schema()
    assert engine.requests[-1]["messages"] == [{"role": "user", "content": "Who: Ada, 36"}]
    partials = list(llm.stream_structured_predict(Person, PromptTemplate("Who: {x}"), x="Ada"))
    assert partials[-1] == Person(name="Ada", age=36)
    assert asyncio.run(llm.astructured_predict(Person, PromptTemplate("{x}"), x="Ada")) == Person(name="Ada", age=36)


# ---- metadata ----------------------------------------------------------------------------------------

def test_metadata_reports_the_compiled_capacity_and_loads_once() -> None:
    engine = ScriptedEngine(loaded=False, capacity=2047)
    llm = _llm(engine, keep_alive="10m")
    meta = llm.metadata
    assert (meta.context_window, meta.num_output, meta.model_name) == (2047, 256, "smollm2:135m")
    assert meta.is_chat_model and meta.is_function_calling_model
    assert engine.loads == [("smollm2:135m", "10m")]
    llm.metadata  # noqa: B018 - cached: no second load
    assert len(engine.loads) == 1
    assert _llm(ScriptedEngine(), context_window=1024).metadata.context_window == 1024
    assert _llm(ScriptedEngine(), context_window=8192).metadata.context_window == 2047  # never beyond capacity
    assert _llm(ScriptedEngine(), additional_kwargs={"num_predict": 64}).metadata.num_output == 64


def test_metadata_function_calling_follows_the_template() -> None:
    assert not _llm(ScriptedEngine(), emulate_tool_choice=False).metadata.is_function_calling_model
    native = _llm(ScriptedEngine(capabilities=("completion", "tools")), emulate_tool_choice=False)
    assert native.metadata.is_function_calling_model and native.supports_native_tools
    assert not _llm(ScriptedEngine(), is_function_calling_model=False).metadata.is_function_calling_model


def test_client_injection() -> None:
    from ax_llm_provider.ollama.client import Client

    engine = ScriptedEngine()
    assert AXOllama(model="m", client=Client(engine=engine)).engine is engine  # type: ignore[arg-type]
    llm = AXOllama(model="m", engine=engine)  # type: ignore[arg-type]
    assert llm.client.engine is engine and llm.async_client.engine is engine
    assert llm.client.show("m").modelinfo["llama.context_length"] == 2047
    with pytest.raises(TypeError, match="ax_llm_provider Client"):
        AXOllama(model="m", client=ollama.Client())


# ---- field defaults vs the reference -------------------------------------------------------------------

def _defaults(cls: type) -> dict[str, Any]:
    def value(field: Any) -> Any:
        default = field.default_factory() if field.default_factory else field.default
        return type(default).__name__ if type(default).__name__ == "CallbackManager" else default  # fresh objects

    return {name: value(field) for name, field in cls.model_fields.items()}


def _init_defaults(cls: type) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.POSITIONAL_OR_KEYWORD and p.name != "self"}


@pytest.mark.skipif(not HAS_REFERENCE_LLM, reason="llama-index-llms-ollama is not installed")
def test_llm_fields_and_defaults_match_the_reference() -> None:
    from llama_index.llms.ollama import Ollama

    ours, ref = _defaults(AXOllama), _defaults(Ollama)
    assert set(ref) <= set(ours)
    assert {k: ours[k] for k in ref} == ref
    assert set(ours) - set(ref) == {"tool_choice", "emulate_tool_choice"}
    assert _init_defaults(AXOllama) == _init_defaults(Ollama)  # same positional order and defaults
    mine, theirs = AXOllama(model="m", engine=ScriptedEngine()), Ollama(model="m")  # type: ignore[arg-type]
    values = [k for k in ref if k != "callback_manager"]
    assert {k: getattr(mine, k) for k in values} == {k: getattr(theirs, k) for k in values}  # keep_alive None
    for name in ("chat", "achat", "stream_chat", "astream_chat", "complete", "acomplete", "stream_complete",
                 "astream_complete", "structured_predict", "astructured_predict", "stream_structured_predict",
                 "astream_structured_predict", "get_tool_calls_from_response", "_prepare_chat_with_tools",
                 "_validate_chat_with_tools_response"):
        ref_params = list(inspect.signature(getattr(Ollama, name)).parameters)
        our_params = list(inspect.signature(getattr(AXOllama, name)).parameters)
        assert our_params[:len(ref_params)] == ref_params or set(ref_params) <= set(our_params), name


@pytest.mark.skipif(not HAS_REFERENCE_EMBEDDING, reason="llama-index-embeddings-ollama is not installed")
def test_embedding_fields_and_defaults_match_the_reference() -> None:
    from llama_index.embeddings.ollama import OllamaEmbedding

    ours, ref = _defaults(AXOllamaEmbedding), _defaults(OllamaEmbedding)
    assert {k: ours[k] for k in ref} == ref
    assert set(ours) - set(ref) == {"truncate", "dimensions"}
    assert _init_defaults(AXOllamaEmbedding) == _init_defaults(OllamaEmbedding)


# ---- embeddings -----------------------------------------------------------------------------------

def test_embedding_requests_and_instructions() -> None:
    engine = ScriptedEngine()
    emb = AXOllamaEmbedding(model_name="all-minilm", engine=engine, query_instruction="query: ",  # type: ignore[arg-type]
                            text_instruction=" passage:", ollama_additional_kwargs={"num_ctx": 128}, dimensions=2)
    assert emb.get_query_embedding(" hi ") == [9.0, 1.0]  # "query: hi" has 9 characters
    assert engine.requests[-1] == {"model": "all-minilm", "input": ["query: hi"], "truncate": True,
                                   "options": {"num_ctx": 128}, "dimensions": 2}
    assert emb.get_text_embedding_batch(["a", "bb"]) == [[10.0, 1.0], [11.0, 1.0]]
    assert engine.requests[-1]["input"] == ["passage: a", "passage: bb"]  # one call per batch
    assert asyncio.run(emb.aget_text_embedding("abc")) == [12.0, 1.0]
    assert emb.get_general_text_embeddings([]) == []
