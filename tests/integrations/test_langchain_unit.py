"""ChatAXOllama / AXOllamaLLM / AXOllamaEmbeddings without a model: standard unit suites, request
building, message conversion and response conversion against a scripted fake engine."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import ollama
import pydantic
import pytest
from langchain_core.messages import (
    AIMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.tools import tool
from langchain_ollama import ChatOllama, OllamaEmbeddings, OllamaLLM
from langchain_tests.unit_tests import ChatModelUnitTests, EmbeddingsUnitTests
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from ax_llm_provider.engine.errors import CapabilityError
from ax_llm_provider.integrations.langchain import AXOllamaEmbeddings, AXOllamaLLM, ChatAXOllama
from ax_llm_provider.model.errors import ModelNotFoundError
from ax_llm_provider.model.store import ModelStore

MODEL = "smollm2:135m"
CHATOLLAMA_METADATA_KEYS = {"model", "created_at", "done", "done_reason", "total_duration", "load_duration",
                            "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration",
                            "model_name", "model_provider"}


class TestChatAXOllamaStandardUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatAXOllama]:
        return ChatAXOllama

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": MODEL}


class TestAXOllamaEmbeddingsStandardUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[AXOllamaEmbeddings]:
        return AXOllamaEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": "all-minilm:l6-v2"}


def _final(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "created_at": "2026-01-01T00:00:00.000000Z",
            "message": {"role": "assistant", "content": ""},
            "done": True, "done_reason": "stop", "total_duration": 10, "load_duration": 1, "prompt_eval_count": 7,
            "prompt_eval_duration": 2, "eval_count": 3, "eval_duration": 3,
            "ax": {"prompt_cache_reused_tokens": 5, "backend": "fake", "warnings": ["w"]}, **extra}


def _delta(content: str = "", **message: Any) -> dict[str, Any]:
    return {"model": MODEL, "created_at": "2026-01-01T00:00:00.000000Z",
            "message": {"role": "assistant", "content": content, **message}, "done": False}


class FakeEngine:
    """Records requests; answers with scripted Ollama response dicts (or raises)."""

    def __init__(self, chunks: list[dict[str, Any]] | None = None, error: Exception | None = None) -> None:
        self.chunks = chunks if chunks is not None else [_delta("Hi"), _delta(" there"), _final()]
        self.error = error
        self.requests: list[dict[str, Any]] = []
        self.store = ModelStore("/nonexistent-store")

    def _run(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        return [dict(c) for c in self.chunks]

    def chat(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        return iter(self._run(request))

    def generate(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        return iter(self._run(request))

    async def _aiter(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        for chunk in self._run(request):
            await asyncio.sleep(0)
            yield chunk

    def achat(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        return self._aiter(request)

    def agenerate(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        return self._aiter(request)

    def embed(self, request: dict[str, Any]) -> dict[str, Any]:
        self._run(request)
        return {"model": request["model"], "embeddings": [[0.6, 0.8] for _ in request["input"]]}

    async def aembed(self, request: dict[str, Any]) -> dict[str, Any]:
        return self.embed(request)


# ---- fields and construction -----------------------------------------------------------------------

@pytest.mark.parametrize(("theirs", "ours"), [(ChatOllama, ChatAXOllama), (OllamaLLM, AXOllamaLLM),
                                              (OllamaEmbeddings, AXOllamaEmbeddings)])
def test_every_langchain_ollama_field_with_its_default(theirs: Any, ours: Any) -> None:
    for name, field in theirs.model_fields.items():
        assert name in ours.model_fields, name
        ours_default = ours.model_fields[name].get_default(call_default_factory=True)
        assert ours_default == field.get_default(call_default_factory=True), name


def test_extra_options_and_ignored_http_settings() -> None:
    llm = ChatAXOllama(model=MODEL, min_p=0.05, typical_p=0.9, presence_penalty=0.1, frequency_penalty=0.2,
                       num_keep=8, base_url="http://elsewhere:11434", client_kwargs={"timeout": 3},
                       sync_client_kwargs={"a": 1}, async_client_kwargs={"b": 2}, timeout=5, max_retries=2,
                       api_key="x", streaming=True, engine=FakeEngine())
    request = llm._chat_request([HumanMessage("hi")])
    assert request["options"] == {"min_p": 0.05, "typical_p": 0.9, "presence_penalty": 0.1,
                                  "frequency_penalty": 0.2, "num_keep": 8}


def test_construction_loads_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import ax_llm_provider.integrations.langchain_common as common

    monkeypatch.setattr(common, "get_engine", lambda: pytest.fail("construction must not create the engine"))
    ChatAXOllama(model=MODEL, temperature=0)
    AXOllamaLLM(model=MODEL)
    AXOllamaEmbeddings(model="all-minilm:l6-v2")


def test_validate_model_on_init(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AX_LLM_MODELS", str(tmp_path))
    ChatAXOllama(model=MODEL, validate_model_on_init=True)  # not stored, but the registry can pull it
    # pydantic's ValidationError, as ChatOllama's model validator raises it (a ValueError subclass)
    with pytest.raises(pydantic.ValidationError, match="not found"):
        ChatAXOllama(model="nosuchmodel:7b", validate_model_on_init=True)
    with pytest.raises(pydantic.ValidationError, match="not found"):
        AXOllamaLLM(model="nosuchmodel:7b", validate_model_on_init=True)
    with pytest.raises(pydantic.ValidationError, match="not found"):
        AXOllamaEmbeddings(model="nosuchmodel:7b", validate_model_on_init=True)
    base = tmp_path / "base" / "1b"  # a model made by `create` is valid when its base is stored
    base.mkdir(parents=True)
    (base / "ax_model.json").write_text('{"format": "ax-llm-twin/1"}')
    from ax_llm_provider.model.derived import DerivedModel, DerivedStore
    from ax_llm_provider.model.store import ModelStore

    DerivedStore(ModelStore(tmp_path)).save(DerivedModel(name="coyote:latest", base="base:1b"))
    ChatAXOllama(model="coyote", validate_model_on_init=True)


def test_top_logprobs_turns_logprobs_on() -> None:
    with pytest.warns(UserWarning, match="Setting `logprobs=True` automatically"):  # ChatOllama's warning
        assert ChatAXOllama(model=MODEL, top_logprobs=2).logprobs is True
    with pytest.raises(ValueError):
        ChatAXOllama(model=MODEL, top_logprobs=2, logprobs=False)
    with pytest.raises(ValueError):
        ChatAXOllama(model=MODEL, top_logprobs=0)


# ---- request building --------------------------------------------------------------------------------

def test_max_tokens_is_num_predict() -> None:
    llm = ChatAXOllama(model=MODEL, max_tokens=7)
    assert llm.num_predict == 7 and llm.max_tokens == 7
    assert llm._chat_request([HumanMessage("x")])["options"]["num_predict"] == 7
    assert llm._chat_request([HumanMessage("x")], max_tokens=3)["options"]["num_predict"] == 3
    assert ChatAXOllama(model=MODEL, max_tokens=7, num_predict=9).num_predict == 9
    assert llm._get_ls_params()["ls_max_tokens"] == 7


def test_call_stop_overrides_default() -> None:
    messages = [HumanMessage("x")]
    assert ChatAXOllama(model=MODEL, stop=[])._chat_request(messages, ["you"])["options"]["stop"] == ["you"]
    assert ChatAXOllama(model=MODEL, stop=["a"])._chat_request(messages, ["b"])["options"]["stop"] == ["b"]
    assert ChatAXOllama(model=MODEL, stop=["a"])._chat_request(messages)["options"]["stop"] == ["a"]
    assert "stop" not in ChatAXOllama(model=MODEL, stop=[])._chat_request(messages)["options"]


def test_options_merge_and_per_call_options() -> None:
    llm = ChatAXOllama(model=MODEL, temperature=0.5, top_k=10)
    request = llm._chat_request([HumanMessage("x")], options={"top_k": 3, "seed": 1}, temperature=0.1, min_p=0.2)
    assert request["options"] == {"temperature": 0.1, "top_k": 3, "seed": 1, "min_p": 0.2}
    request = llm._chat_request([HumanMessage("x")], options=ollama.Options(repeat_penalty=1.5))
    assert request["options"] == {"temperature": 0.5, "top_k": 10, "repeat_penalty": 1.5}


def test_request_fields_and_unknown_kwargs() -> None:
    llm = ChatAXOllama(model=MODEL, keep_alive=-1, reasoning=False, format="json", logprobs=True)
    request = llm._chat_request([HumanMessage("x")], model="other:1b", truncate=False, stream=True, strict=True)
    assert request["model"] == "other:1b"
    assert request["keep_alive"] == -1 and request["think"] is False and request["format"] == "json"
    assert request["logprobs"] is True and request["truncate"] is False
    assert llm._chat_request([HumanMessage("x")], reasoning=True)["think"] is True
    assert llm._chat_request([HumanMessage("x")],
                             response_format={"type": "json_object"}, format=None)["format"] == "json"
    with pytest.raises(TypeError, match="bogus"):
        llm._chat_request([HumanMessage("x")], bogus=1)


def test_ls_params_report_model_override() -> None:
    llm = ChatAXOllama(model=MODEL, temperature=0.3, stop=["#"])
    params = llm._get_ls_params(model="x:1b")
    assert params["ls_model_name"] == "x:1b" and params["ls_provider"] == "ollama"
    assert params["ls_temperature"] == 0.3 and params["ls_stop"] == ["#"]
    assert AXOllamaLLM(model=MODEL)._get_ls_params(model="y:2b")["ls_model_name"] == "y:2b"


# ---- message conversion ------------------------------------------------------------------------------

def test_message_conversion() -> None:
    png = "iVBORw0KGgo="
    messages = [
        SystemMessage("sys"),
        HumanMessage([{"type": "text", "text": "look"},
                      {"type": "image_url", "image_url": f"data:image/png;base64,{png}"},
                      {"type": "image", "base64": png, "mime_type": "image/png"}], name="visitor"),
        AIMessage([{"type": "text", "text": "calling"}, {"type": "tool_use", "id": "c1", "name": "add", "input": {}}],
                  tool_calls=[{"name": "add", "args": {"a": 1}, "id": "c1", "type": "tool_call"}],
                  additional_kwargs={"reasoning_content": "hmm"}),
        ToolMessage("3", tool_call_id="c1"),
        ToolMessage("err", tool_call_id="c9", name="other", status="error"),
        ChatMessage(role="narrator", content="meanwhile"),
    ]
    out = ChatAXOllama(model=MODEL)._chat_request(messages)["messages"]
    assert out[0] == {"role": "system", "content": "sys"}
    assert out[1] == {"role": "user", "content": "look", "images": [png, png]}
    assert out[2] == {"role": "assistant", "content": "calling", "thinking": "hmm",
                      "tool_calls": [{"type": "function", "id": "c1",
                                      "function": {"name": "add", "arguments": {"a": 1}}}]}
    assert out[3] == {"role": "tool", "tool_call_id": "c1", "tool_name": "add", "content": "3"}
    assert out[4] == {"role": "tool", "tool_call_id": "c9", "tool_name": "other", "content": "err"}
    assert out[5] == {"role": "narrator", "content": "meanwhile"}


def test_empty_reasoning_is_sent_back_as_empty_thinking() -> None:
    out = ChatAXOllama(model=MODEL)._chat_request([AIMessage("a", additional_kwargs={"reasoning_content": ""}),
                                                   AIMessage("b")])["messages"]
    assert out == [{"role": "assistant", "content": "a", "thinking": ""}, {"role": "assistant", "content": "b"}]


def test_message_conversion_errors() -> None:
    llm = ChatAXOllama(model=MODEL)
    with pytest.raises(ValueError, match="remote image"):
        llm._chat_request([HumanMessage([{"type": "image_url", "image_url": {"url": "https://x/y.png"}}])])
    with pytest.raises(ValueError, match="Unsupported"):
        llm._chat_request([HumanMessage([{"type": "audio", "base64": "AA=="}])])
    with pytest.raises(TypeError, match="unsupported message type"):
        llm._chat_request([FunctionMessage(content="x", name="f")])


# ---- responses ---------------------------------------------------------------------------------------

def test_invoke_response_metadata_usage_and_ax() -> None:
    result = ChatAXOllama(model=MODEL, engine=FakeEngine()).invoke("hi")
    assert result.content == "Hi there"
    assert set(result.response_metadata) >= CHATOLLAMA_METADATA_KEYS
    assert result.response_metadata["model_name"] == MODEL
    assert result.response_metadata["ax"]["prompt_cache_reused_tokens"] == 5
    assert result.usage_metadata == {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10,
                                     "input_token_details": {"cache_read": 5}}


def test_stream_usage_on_the_final_chunk_only() -> None:
    chunks = list(ChatAXOllama(model=MODEL, engine=FakeEngine()).stream("hi"))
    with_usage = [c for c in chunks if c.usage_metadata]
    assert len(with_usage) == 1 and with_usage[0].response_metadata["done"] is True
    assert chunks[-1].chunk_position == "last"
    assert "".join(c.text for c in chunks) == "Hi there"


def test_tool_calls_thinking_and_logprobs_from_the_engine() -> None:
    chunks = [
        {**_delta("", thinking="let me see"), "logprobs": [{"token": "x", "logprob": -0.1}]},
        _delta("", tool_calls=[{"id": "call_1", "function": {"name": "add", "arguments": {"a": 1, "b": "2"}}}]),
        _delta("", tool_calls=[{"function": {"name": "mul", "arguments": '{"x": 3}'}},
                               {"function": {"name": "bad", "arguments": "{not json"}}]),
        _final(),
    ]
    engine = FakeEngine(chunks)
    result = ChatAXOllama(model=MODEL, engine=engine).invoke("hi")
    assert result.additional_kwargs["reasoning_content"] == "let me see"
    assert [(c["name"], c["args"]) for c in result.tool_calls] == [("add", {"a": 1, "b": "2"}), ("mul", {"x": 3})]
    assert result.tool_calls[0]["id"] == "call_1" and result.tool_calls[1]["id"]
    assert [c["name"] for c in result.invalid_tool_calls] == ["bad"]
    assert result.response_metadata["logprobs"] == [{"token": "x", "logprob": -0.1}]
    streamed = None
    for chunk in ChatAXOllama(model=MODEL, engine=engine).stream("hi"):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed is not None and [c["name"] for c in streamed.tool_calls][:2] == ["add", "mul"]
    dropped = ChatAXOllama(model=MODEL, engine=engine, reasoning=False).invoke("hi")
    assert "reasoning_content" not in dropped.additional_kwargs


def test_load_only_response_is_skipped_and_empty_stream_fails() -> None:
    load = {**_final(), "done_reason": "load"}
    assert ChatAXOllama(model=MODEL, engine=FakeEngine([load, _delta("ok"), _final()])).invoke("x").content == "ok"
    with pytest.raises(ValueError, match="No data"):
        ChatAXOllama(model=MODEL, engine=FakeEngine([load])).invoke("x")


@pytest.mark.parametrize(("error", "status"), [(CapabilityError("m does not support tools"), 400),
                                               (ModelNotFoundError("model 'x' not found"), 404)])
def test_engine_errors_are_ollama_response_errors(error: Exception, status: int) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        ChatAXOllama(model=MODEL, engine=FakeEngine(error=error)).invoke("x")
    assert info.value.status_code == status
    with pytest.raises(ollama.ResponseError):
        asyncio.run(ChatAXOllama(model=MODEL, engine=FakeEngine(error=error)).ainvoke("x"))


def test_async_invoke_and_stream() -> None:
    llm = ChatAXOllama(model=MODEL, engine=FakeEngine())

    async def run() -> tuple[AIMessage, list[Any]]:
        return await llm.ainvoke("hi"), [c async for c in llm.astream("hi")]

    result, chunks = asyncio.run(run())
    assert result.content == "Hi there" and result.usage_metadata is not None
    assert sum(1 for c in chunks if c.usage_metadata) == 1


# ---- tools and structured output ----------------------------------------------------------------------

@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@pytest.mark.parametrize(("choice", "sent"), [("any", "any"), ("required", "required"), ("add", "add"),
                                              (True, "add"), ({"type": "function", "function": {"name": "add"}}, "add"),
                                              (None, None)])
def test_bind_tools_passes_tool_choice(choice: Any, sent: str | None) -> None:
    engine = FakeEngine()
    ChatAXOllama(model=MODEL, engine=engine).bind_tools([add], tool_choice=choice).invoke("1+2?")
    request = engine.requests[-1]
    assert request["tools"][0]["function"]["name"] == "add"
    assert request.get("tool_choice") == sent


class Joke(BaseModel):
    """A joke."""

    setup: str = Field(description="the question")
    punchline: str = Field(description="the answer")


class JokeDict(TypedDict):
    setup: str
    punchline: str


def test_structured_output_methods() -> None:
    payload = json.dumps({"setup": "s", "punchline": "p"})
    engine = FakeEngine([_delta(payload), _final()])
    llm = ChatAXOllama(model=MODEL, engine=engine)
    assert llm.with_structured_output(Joke).invoke("joke") == Joke(setup="s", punchline="p")
    assert engine.requests[-1]["format"] == Joke.model_json_schema()
    assert llm.with_structured_output(JokeDict).invoke("joke") == {"setup": "s", "punchline": "p"}
    assert engine.requests[-1]["format"]["required"] == ["setup", "punchline"]
    assert llm.with_structured_output(Joke, method="json_mode").invoke("joke") == Joke(setup="s", punchline="p")
    assert engine.requests[-1]["format"] == "json"
    raw = llm.with_structured_output(Joke, include_raw=True).invoke("joke")
    assert raw["parsed"] == Joke(setup="s", punchline="p") and raw["parsing_error"] is None
    call = _delta("", tool_calls=[{"function": {"name": "Joke", "arguments": {"setup": "s", "punchline": "p"}}}])
    engine.chunks = [call, _final()]
    assert llm.with_structured_output(Joke, method="function_calling").invoke("joke") == Joke(setup="s", punchline="p")
    assert engine.requests[-1]["tool_choice"] == "Joke"
    with pytest.raises(ValueError):
        llm.with_structured_output(Joke, method="nope")  # type: ignore[arg-type]


# ---- AXOllamaLLM ---------------------------------------------------------------------------------------

def test_llm_generate_semantics() -> None:
    final = {"model": MODEL, "created_at": "t", "response": "", "done": True, "done_reason": "stop",
             "prompt_eval_count": 4, "eval_count": 2, "context": [1, 2, 3], "ax": {"prompt_cache_reused_tokens": 0}}
    engine = FakeEngine([{"model": MODEL, "response": "", "thinking": "hm", "done": False},
                         {"model": MODEL, "response": "Once", "done": False}, final])
    llm = AXOllamaLLM(model=MODEL, engine=engine, max_tokens=5, stop=["#"])
    result = llm.generate(["tell"], system="be short", context=[9], raw=False, format="json", reasoning=True)
    request = engine.requests[-1]
    assert request["prompt"] == "tell" and request["system"] == "be short" and request["context"] == [9]
    assert request["format"] == "json" and request["think"] is True
    assert request["options"] == {"num_predict": 5, "stop": ["#"]}
    generation = result.generations[0][0]
    assert generation.text == "Once"
    assert generation.generation_info is not None
    assert generation.generation_info["context"] == [1, 2, 3] and generation.generation_info["thinking"] == "hm"
    assert generation.generation_info["done_reason"] == "stop"
    assert "".join(chunk for chunk in llm.stream("tell")) == "Once"
    assert asyncio.run(llm.ainvoke("tell")) == "Once"
    assert "format" not in AXOllamaLLM(model=MODEL)._generate_request("x")  # "" = not set


# ---- AXOllamaEmbeddings ---------------------------------------------------------------------------------

def test_embeddings_request_and_results() -> None:
    engine = FakeEngine()
    emb = AXOllamaEmbeddings(model="all-minilm:l6-v2", dimensions=2, keep_alive="5m", temperature=0, engine=engine)
    assert emb.embed_documents(["a", "b"]) == [[0.6, 0.8], [0.6, 0.8]]
    assert engine.requests[-1] == {"model": "all-minilm:l6-v2", "input": ["a", "b"], "truncate": True,
                                   "dimensions": 2, "keep_alive": "5m", "options": {"temperature": 0}}
    assert emb.embed_query("a") == [0.6, 0.8]
    assert asyncio.run(emb.aembed_query("a")) == [0.6, 0.8]
    assert emb.embed_documents([]) == []
    with pytest.raises(ValueError):
        AXOllamaEmbeddings(model="m", dimensions=0)
    with pytest.raises(ValueError):
        AXOllamaEmbeddings(model="m", bogus=1)  # extra="forbid", as OllamaEmbeddings
    engine.error = ModelNotFoundError("model 'x' not found")
    with pytest.raises(ollama.ResponseError):
        emb.embed_query("a")


def test_integrations_package_imports_no_framework() -> None:
    code = ("import sys, ax_llm_provider, ax_llm_provider.integrations; "
            "assert not [m for m in sys.modules if m.startswith(('langchain', 'llama_index'))]")
    subprocess.run([sys.executable, "-c", code], check=True)
