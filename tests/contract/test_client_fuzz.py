"""Issue 15 item 8: the public Client raises only ollama's documented error types, whatever it is given.

Hypothesis drives every public method with random values for its own parameters over a tiny twin; each
call either answers or raises ollama.ResponseError / ollama.RequestError (TypeError only for a keyword the
method does not have, as ollama's Client).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ollama
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.model.store import ModelStore
from ax_llm_provider.ollama.client import AsyncClient, Client

METHODS = ["chat", "generate", "embed", "embeddings", "show", "ps", "list", "delete", "copy", "create"]
DOCUMENTED = (ollama.ResponseError, ollama.RequestError)

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["5m", "-1", "nan", "1e12", "json", "user", "assistant"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=8)


@pytest.fixture(scope="module")
def twin(tiny_twin: Callable[..., Path]) -> str:
    return str(tiny_twin("llama", decode_capacity=127, prefill_chunk=32, prefill_histories=(0, 32, 64)))


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    eng = Engine(ModelStore(tmp_path_factory.mktemp("fuzz-store")), backend="onnx", keep_alive=-1, auto_pull=False)
    yield eng
    eng.close()


def _arguments(method: str, twin: str) -> st.SearchStrategy[dict[str, Any]]:
    params = [p for p in inspect.signature(getattr(Client, method)).parameters.values() if p.name != "self"]
    models = st.one_of(st.just(twin), st.text(max_size=10), values)
    messages = st.lists(st.one_of(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "tool", "x"]),
                                                         "content": st.one_of(st.text(max_size=20), values)}),
                                  values), max_size=3)
    special = {"model": models, "source": models, "destination": st.text(max_size=10), "from_": models,
               "messages": st.one_of(messages, values), "options": st.one_of(
                   st.fixed_dictionaries({"num_predict": st.integers(-2, 3)}), values),
               "prompt": st.one_of(st.text(max_size=30), values), "stream": st.booleans()}
    return st.fixed_dictionaries(
        {p.name: special.get(p.name, values) for p in params if p.name in ("model", "source", "destination")},
        optional={p.name: special.get(p.name, values) for p in params
                  if p.name not in ("model", "source", "destination")})


def _consume(result: Any) -> None:
    if inspect.isgenerator(result):
        for _ in result:
            pass


async def _aconsume(result: Any) -> None:
    if inspect.isawaitable(result):
        result = await result
    if inspect.isasyncgen(result):
        async for _ in result:
            pass


@st.composite
def calls(draw: st.DrawFn, twin: str) -> tuple[str, dict[str, Any]]:
    method = draw(st.sampled_from(METHODS))
    kwargs = draw(_arguments(method, twin))
    if kwargs.get("options") is None or isinstance(kwargs.get("options"), dict):
        opts = dict(kwargs.get("options") or {})
        opts.setdefault("num_predict", 2)  # keep generations short
        kwargs["options"] = opts
    if "options" not in inspect.signature(getattr(Client, method)).parameters:
        kwargs.pop("options")
    return method, kwargs


def test_public_client_raises_only_documented_errors(engine: Engine, twin: str) -> None:
    client, aclient = Client(engine=engine), AsyncClient(engine=engine)

    @settings(max_examples=120, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(call=calls(twin), use_async=st.booleans())
    def check(call: tuple[str, dict[str, Any]], use_async: bool) -> None:
        method, kwargs = call
        try:
            if use_async:
                asyncio.run(_aconsume(getattr(aclient, method)(**kwargs)))
            else:
                _consume(getattr(client, method)(**kwargs))
        except DOCUMENTED:
            pass

    check()


def test_wrong_keyword_is_a_type_error(engine: Engine, twin: str) -> None:
    with pytest.raises(TypeError):
        Client(engine=engine).generate(model=twin, prompt="hi", no_such_option=1)  # type: ignore[call-arg]
