"""deploy/installation_app.py --sentences: each reply's sentences reach the sentence sink as they form."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.model.store import ModelStore
from ax_llm_provider.runtime.simcard import SimCard

APP = Path(__file__).resolve().parents[2] / "deploy" / "installation_app.py"


@pytest.fixture(scope="module")
def app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("installation_app_sentences", APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = Engine(ModelStore(tmp_path / "store"), backend="simulated", card=SimCard(), auto_pull=False,
                 keep_alive=-1, request_timeout=10)
    yield eng
    eng.close()


def squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


@pytest.mark.parametrize("responder", ["make_responder", "client_responder"])
def test_sentences_reach_the_sink_and_add_up_to_the_reply(app: ModuleType, engine: Engine, reliability_twin: str,
                                                          responder: str) -> None:
    engine.load(reliability_twin)
    options = {**app.OPTIONS, "num_predict": 24, "stop": []}
    respond = getattr(app, responder)(engine, reliability_twin, app.SYSTEM, options)
    replies: list[tuple[str, str]] = []
    spoken: list[tuple[str, str]] = []
    prompts = iter([("a", "hello"), ("b", "tell me about the sea")])
    code = app.serve(engine, respond, prompts, lambda name, reply: replies.append((name, reply)), "FALLBACK",
                     sentence_sink=lambda name, sentence: spoken.append((name, sentence)))
    assert code == app.EXIT_OK
    assert [name for name, _ in replies] == ["a", "b"]
    for name, reply in replies:
        assert reply != "FALLBACK"
        said = [s for n, s in spoken if n == name]
        assert said and all(s == s.strip() and s for s in said)
        assert squeeze("".join(said)) == squeeze(reply)


def test_directory_sentence_sink_appends_lines(app: ModuleType, tmp_path: Path) -> None:
    sink = app.directory_sentence_sink(tmp_path)
    sink("v.txt", "One.")
    sink("v.txt", "Two\nlines.")
    assert (tmp_path / "replies" / "v.txt.sentences").read_text(encoding="utf-8") == "One.\nTwo lines.\n"
