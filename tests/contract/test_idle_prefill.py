"""Idle prefill never changes a reply and makes the next request reuse more of its prompt (tiny twins).

The same greedy conversation runs on an engine with idle prefill and on one without: every turn's text,
eval_count and prompt_eval_count (all the prompt's tokens, reused or not, both ways) must be equal, and from
the second turn on the idle engine reuses more of each prompt (the reply's end-of-turn tokens and the user
header were evaluated while it waited).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("onnxruntime")

from ax_llm_provider.engine.engine import Engine  # noqa: E402
from ax_llm_provider.model.store import ModelStore  # noqa: E402

QUESTIONS = ["the cat sat on a mat", "and the dog ran far away", "while birds sang songs", "of old times"]


def wait_for_idle_work(engine: Engine, done: int) -> None:
    """Synchronise with the background job (not a timing assertion: the deadline only stops a hang)."""
    assert engine.idle is not None
    deadline = time.monotonic() + 60
    while engine.idle.evaluated + engine.idle.skipped < done:
        assert time.monotonic() < deadline, "the idle prefill job never ran"
        time.sleep(0.01)


def converse(engine: Engine, model: str, *, wait: bool, family: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "you are a poet"}]
    turns = []
    for turn, question in enumerate(QUESTIONS, 1):
        messages.append({"role": "user", "content": question})
        request: dict[str, Any] = {"model": model, "messages": messages,
                                   "options": {"temperature": 0, "num_predict": 8}}
        if family == "qwen3":
            request["think"] = False
        chunks = list(engine.chat(request))
        reply = "".join(c["message"]["content"] for c in chunks)
        final = chunks[-1]
        turns.append({"text": reply, "eval_count": final.get("eval_count", 0),
                      "prompt_eval_count": final["prompt_eval_count"], "done_reason": final["done_reason"],
                      "reused": final["ax"]["prompt_cache_reused_tokens"]})
        messages.append({"role": "assistant", "content": reply})
        if wait and engine.idle is not None:
            wait_for_idle_work(engine, turn)
    return turns


@pytest.mark.parametrize(("family", "backend"), [("llama", "onnx"), ("qwen3", "onnx"), ("qwen3", "simulated")])
def test_idle_prefill_changes_no_reply_and_grows_reuse(tiny_twin: Callable[..., Path], tmp_path: Path,
                                                       family: str, backend: str) -> None:
    model = str(tiny_twin(family, decode_capacity=511, prefill_chunk=32, prefill_histories=(0, 32, 64, 128, 256)))
    runs = {}
    for idle, wait in ((False, False), (True, True), (True, False)):
        engine = Engine(ModelStore(tmp_path / f"{idle}-{wait}"), backend=backend, keep_alive=-1, auto_pull=False,
                        idle_prefill=idle)
        try:
            runs[idle, wait] = converse(engine, model, wait=wait, family=family)
            if idle and wait:
                assert engine.idle is not None and engine.idle.evaluated > 0
        finally:
            engine.close()
    plain, idle_run, racing = runs[False, False], runs[True, True], runs[True, False]
    for got in (idle_run, racing):  # with or without time to run, the idle work changes no reply
        assert [{k: t[k] for k in ("text", "eval_count", "prompt_eval_count", "done_reason")} for t in got] == \
               [{k: t[k] for k in ("text", "eval_count", "prompt_eval_count", "done_reason")} for t in plain]
    grown = [i for i, (a, b) in enumerate(zip(plain, idle_run, strict=True)) if b["reused"] > a["reused"]]
    assert grown == list(range(1, len(QUESTIONS)))  # every turn after the first reused more
    assert all(b["reused"] >= a["reused"] for a, b in zip(plain, idle_run, strict=True))
