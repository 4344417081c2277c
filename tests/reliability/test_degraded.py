"""Degraded mode on the simulated card: faults until the ladder is FATAL, the CPU fallback answers, the card
comes back, requests move back to it, and every request sent meanwhile is accounted for.

The card model and the fallback are two tiny twins with different weights, so each greedy answer tells which
model gave it: an answer is either the card model's own (taken before the faults) or the fallback's own (taken
from a plain CPU engine), never a mix, and exactly one final chunk per request.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ax_llm_provider import Client
from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.engine.ops.degraded import FallbackConfig
from ax_llm_provider.engine.ops.health import HealthConfig
from ax_llm_provider.engine.ops.recovery import DeviceFatalError, RecoveryPolicy
from ax_llm_provider.model.embedding_model import EMBED_FORMAT
from ax_llm_provider.model.errors import ModelNotFoundError
from ax_llm_provider.model.store import ModelStore
from ax_llm_provider.runtime import axcl_codes as codes
from ax_llm_provider.runtime.errors import DeviceTimeoutError
from ax_llm_provider.runtime.simcard import SimCard
from ax_llm_provider.runtime.simcard.memory import Fail

from .conftest import WORDS, assert_no_leaks, report, resources

HEALTH = HealthConfig(period_s=0.05, execute_timeout_s=5.0, hang_reboot_s=None, hang_fatal_s=None)
POLICY = RecoveryPolicy(step_wait_s=0.001, step_wait_max_s=0.002, cmm_retry_wait_s=0.01, reboot_wait_s=0.3,
                        reboot_poll_s=0.05)
PROMPTS = [" ".join(WORDS[i:i + 5]) for i in range(0, 15, 3)]
KINDS = ("chat", "generate", "stream", "achat")
OPTIONS = {"num_predict": 8, "temperature": 0}


@pytest.fixture(scope="module")
def fallback_twin(tiny_twin: Callable[..., Path]) -> str:
    """Another tiny twin (other weights) standing for the operator's CPU model."""
    return str(tiny_twin("llama", seed=1, decode_capacity=255, prefill_chunk=16,
                         prefill_histories=(0, 16, 32, 64, 128)))


def body(kind: str, model: str, prompt: str) -> dict[str, Any]:
    """Only the "stream" kind streams; the others are non-streamed requests (as the Client sends them)."""
    if kind == "generate":
        return {"model": model, "prompt": prompt, "options": OPTIONS, "stream": False}
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "options": OPTIONS,
            "stream": kind == "stream"}


def send(engine: Engine, kind: str, model: str, prompt: str) -> list[dict[str, Any]]:
    if kind == "generate":
        return list(engine.generate(body(kind, model, prompt)))
    if kind == "achat":
        async def collect() -> list[dict[str, Any]]:
            return [chunk async for chunk in engine.achat(body(kind, model, prompt))]

        return asyncio.run(collect())
    return list(engine.chat(body(kind, model, prompt)))


def text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c.get("response") or (c.get("message") or {}).get("content", "") for c in chunks)


def answers(engine: Engine, model: str) -> dict[str, str]:
    """Greedy answers per prompt (chat and generate render prompts differently: keyed by both)."""
    return {f"{kind}:{p}": text(send(engine, kind, model, p)) for kind in ("chat", "generate") for p in PROMPTS}


def key(kind: str, prompt: str) -> str:
    return f"{'generate' if kind == 'generate' else 'chat'}:{prompt}"


@dataclass
class Outcome:
    index: int
    kind: str
    prompt: str
    chunks: list[dict[str, Any]] = field(default_factory=list)
    error: BaseException | None = None


def client(engine: Engine, model: str, stop: threading.Event, out: list[Outcome], start: int) -> None:
    index = start
    while not stop.is_set():
        kind, prompt = KINDS[index % len(KINDS)], PROMPTS[index % len(PROMPTS)]
        outcome = Outcome(index, kind, prompt)
        try:
            if kind == "stream":  # keep the chunks that reached the caller, even when the stream then fails
                for chunk in engine.chat(body(kind, model, prompt)):
                    outcome.chunks.append(chunk)
            else:
                outcome.chunks = send(engine, kind, model, prompt)
        except Exception as exc:  # noqa: BLE001 -- every outcome is recorded and judged below
            outcome.error = exc
        out.append(outcome)
        index += 2


def until(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


@pytest.fixture()
def card() -> SimCard:
    return SimCard()


def degraded_engine(tmp_path: Path, card: SimCard, fallback: str) -> Engine:
    return Engine(ModelStore(tmp_path), backend="simulated", card=card, auto_pull=False, keep_alive=-1,
                  request_timeout=60, health=HEALTH, recovery=POLICY,
                  fallback_model=FallbackConfig(fallback, probe_interval_s=0.05))


def lose_card(card: SimCard) -> None:
    """The heartbeat dies and the firmware reboot does not bring it back: the ladder ends at FATAL."""
    card.lib_rt.axclrtRebootDevice = lambda device_id: 0  # type: ignore[method-assign]
    card.faults.go_offline()


def card_returns(card: SimCard) -> None:
    del card.lib_rt.axclrtRebootDevice
    card.faults.come_online()


@pytest.fixture()
def expected(tmp_path_factory: pytest.TempPathFactory, reliability_twin: str, fallback_twin: str
             ) -> dict[str, dict[str, str]]:
    """Each model's own greedy answers: the card model on a healthy simulated card, the fallback on the CPU."""
    with Engine(ModelStore(tmp_path_factory.mktemp("own")), backend="simulated", card=SimCard(), auto_pull=False,
                health=HEALTH) as on_card:
        card_answers = answers(on_card, reliability_twin)
    with Engine(ModelStore(tmp_path_factory.mktemp("cpu")), backend="onnx", auto_pull=False) as cpu:
        cpu_answers = answers(cpu, fallback_twin)
    assert all(card_answers[k] != cpu_answers[k] for k in card_answers)  # each answer tells its model
    return {"card": card_answers, "cpu": cpu_answers}


def test_card_lost_fallback_answers_card_returns_nothing_lost(tmp_path: Path, card: SimCard, reliability_twin: str,
                                                              fallback_twin: str,
                                                              expected: dict[str, dict[str, str]]) -> None:
    before = resources()
    engine = degraded_engine(tmp_path, card, fallback_twin)
    outcomes: list[Outcome] = []
    stop = threading.Event()
    clients = [threading.Thread(target=client, args=(engine, reliability_twin, stop, outcomes, start))
               for start in (0, 1)]
    try:
        assert text(send(engine, "chat", reliability_twin, PROMPTS[0])) == expected["card"][key("chat", PROMPTS[0])]
        for thread in clients:
            thread.start()
        assert until(lambda: len(outcomes) >= 6)
        lose_card(card)
        assert until(lambda: engine.health().state == "degraded")
        on_cpu = len(outcomes)
        assert until(lambda: len(outcomes) >= on_cpu + 8)  # answered from the fallback meanwhile
        health = engine.health().degraded
        assert health is not None and health["probes"] >= 1 and health["last_probe_error"]
        card_returns(card)
        assert until(lambda: engine.health().state == "ok")
        back = len(outcomes)
        assert until(lambda: len(outcomes) >= back + 6)
    finally:
        stop.set()
        for thread in clients:
            thread.join(60)
        engine.close()
    assert not any(thread.is_alive() for thread in clients)
    leaks = assert_no_leaks(before)  # the prober and the fallback engine's threads end with the engine

    # every request is accounted for: one final answer from one model, or a typed error after streaming
    sources: list[str] = []
    for outcome in sorted(outcomes, key=lambda o: o.index):
        expected_key = key(outcome.kind, outcome.prompt)
        if outcome.error is not None:  # only a stream that had already delivered chunks may fail
            assert outcome.kind == "stream" and outcome.chunks, outcome
            assert isinstance(outcome.error, DeviceFatalError), outcome.error
            assert "degraded mode now answers" in "".join(getattr(outcome.error, "__notes__", []))
            sources.append("error")
            continue
        finals = [c for c in outcome.chunks if c.get("done")]
        assert len(finals) == 1 and outcome.chunks[-1] is finals[0], outcome
        assert all(c["model"] == reliability_twin for c in outcome.chunks)  # the name that was asked for
        degraded = finals[0]["ax"].get("degraded")
        source = "cpu" if degraded else "card"
        assert text(outcome.chunks) == expected[source][expected_key], (outcome.index, source)
        if degraded:
            assert degraded["fallback_model"] == fallback_twin and finals[0]["ax"]["backend"] == "onnx"
        sources.append(source)
    for start in (0, 1):  # none lost: each client's requests (start, start + 2, ...) all came back, once
        indexes = sorted(o.index for o in outcomes if o.index % 2 == start)
        assert indexes == list(range(start, start + 2 * len(indexes), 2))
    assert "cpu" in sources and sources[0] == "card" and sources[-1] == "card"
    first_cpu, last_cpu = sources.index("cpu"), len(sources) - 1 - sources[::-1].index("cpu")
    assert "cpu" not in sources[:first_cpu] and "card" in sources[last_cpu:]
    status = engine.health().degraded
    assert status is not None and status["switches"] == {"to_fallback": 1, "to_card": 1}
    report("degraded_mode", requests=len(outcomes), card=sources.count("card"), cpu=sources.count("cpu"),
           errors_after_streaming=sources.count("error"), probes=status["probes"], **leaks)


def test_a_card_absent_at_start_serves_the_fallback_then_the_card(tmp_path: Path, card: SimCard,
                                                                  reliability_twin: str, fallback_twin: str,
                                                                  expected: dict[str, dict[str, str]]) -> None:
    lose_card(card)  # before the first load
    engine = degraded_engine(tmp_path, card, fallback_twin)
    try:
        engine.load(reliability_twin)  # the installation's preload: answered by loading the fallback
        assert engine.health().state == "degraded" and engine.ps()["models"] == []
        chunks = send(engine, "generate", reliability_twin, PROMPTS[1])
        assert text(chunks) == expected["cpu"][key("generate", PROMPTS[1])]
        assert chunks[-1]["ax"]["degraded"]["fallback_model"] == fallback_twin
        reply = Client(engine=engine).chat(reliability_twin, [{"role": "user", "content": PROMPTS[1]}],
                                           options=OPTIONS)
        assert reply.model == reliability_twin and reply.ax["degraded"]["fallback_model"] == fallback_twin
        assert reply.message.content == expected["cpu"][key("chat", PROMPTS[1])]
        card_returns(card)
        assert until(lambda: engine.health().state == "ok")
        assert len(engine.ps()["models"]) == 1  # reloaded on the card by the probe, before the switch
        chunks = send(engine, "chat", reliability_twin, PROMPTS[2])
        assert text(chunks) == expected["card"][key("chat", PROMPTS[2])] and "degraded" not in chunks[-1]["ax"]
    finally:
        engine.close()


def test_degraded_mode_is_off_by_default(tmp_path: Path, card: SimCard, reliability_twin: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AX_LLM_FALLBACK_MODEL", raising=False)
    with Engine(ModelStore(tmp_path), backend="simulated", card=card, auto_pull=False, health=HEALTH,
                recovery=POLICY) as engine:
        send(engine, "chat", reliability_twin, PROMPTS[0])
        lose_card(card)
        with pytest.raises(DeviceFatalError):
            send(engine, "chat", reliability_twin, PROMPTS[0])
        assert engine.health().state == "failed" and engine.health().degraded is None


def test_a_stream_cut_by_the_loss_ends_typed_and_the_next_request_is_answered(
        tmp_path: Path, card: SimCard, reliability_twin: str, fallback_twin: str,
        expected: dict[str, dict[str, str]]) -> None:
    with degraded_engine(tmp_path, card, fallback_twin) as engine:
        long = {**body("stream", reliability_twin, PROMPTS[0]), "options": {**OPTIONS, "num_predict": 40}}
        stream = engine.chat(long)
        first = next(stream)
        assert not first["done"]
        lose_card(card)
        with pytest.raises(DeviceFatalError) as info:
            list(stream)  # part of it reached the caller: not re-run, not answered twice
        assert "degraded mode now answers" in "".join(info.value.__notes__)
        chunks = send(engine, "chat", reliability_twin, PROMPTS[0])
        assert text(chunks) == expected["cpu"][key("chat", PROMPTS[0])] and chunks[-1]["ax"]["degraded"]


def test_a_hang_that_never_ends_degrades_and_says_a_restart_brings_the_card_back(
        tmp_path: Path, card: SimCard, reliability_twin: str, fallback_twin: str,
        expected: dict[str, dict[str, str]]) -> None:
    health = HealthConfig(period_s=0.05, execute_timeout_s=0.2, hang_reboot_s=None, hang_fatal_s=0.6)
    engine = Engine(ModelStore(tmp_path), backend="simulated", card=card, auto_pull=False, health=health,
                    recovery=POLICY, fallback_model=FallbackConfig(fallback_twin, probe_interval_s=0.05))
    hang = card.faults.hang_execute(after=1, timeout_s=30)
    try:
        queued: list[list[dict[str, Any]]] = []
        with pytest.raises(DeviceTimeoutError):  # cut at the execute timeout, before the card was declared lost
            send(engine, "chat", reliability_twin, PROMPTS[0])
        waiter = threading.Thread(target=lambda: queued.append(send(engine, "chat", reliability_twin, PROMPTS[1])))
        waiter.start()  # queued behind the hung execute: failed by the worker's stop, answered by the fallback
        waiter.join(30)
        assert not waiter.is_alive() and text(queued[0]) == expected["cpu"][key("chat", PROMPTS[1])]
        assert engine.health().state == "degraded"
        chunks = send(engine, "generate", reliability_twin, PROMPTS[2])
        assert text(chunks) == expected["cpu"][key("generate", PROMPTS[2])]
        assert until(lambda: "restart of the service" in
                     ((engine.health().degraded or {}).get("last_probe_error") or ""))
    finally:
        hang.released.set()
        engine.close()


def test_the_installation_app_keeps_answering_instead_of_exiting(app: ModuleType, tmp_path: Path, card: SimCard,
                                                                 reliability_twin: str, fallback_twin: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AX_LLM_FALLBACK_MODEL", fallback_twin)
    assert app.parse_args([]).fallback_model == fallback_twin  # the unit file's Environment= line reaches it
    assert app.parse_args(["--fallback-model", ""]).fallback_model == ""
    with degraded_engine(tmp_path, card, fallback_twin) as engine:
        engine.load(reliability_twin)
        respond = app.make_responder(engine, reliability_twin, app.SYSTEM, {**app.OPTIONS, "num_predict": 8})
        replies: list[tuple[str, str]] = []

        def prompts() -> Iterator[tuple[str, str]]:
            yield "a", "hello there"
            card.faults.fail_execute(after=0, times=-1)  # every execute fails now, and the reboot does not help
            card.lib_rt.axclrtRebootDevice = lambda device_id: 0  # type: ignore[method-assign]
            yield "b", "and now?"
            yield "c", "still there?"

        code = app.serve(engine, respond, prompts(), lambda name, reply: replies.append((name, reply)), "FALLBACK")
        assert code == app.EXIT_OK and engine.health().state == "degraded"  # no exit 3: the fallback answers
        assert [name for name, _ in replies] == ["a", "b", "c"]
        # b may end with its own error (a fault the ladder recovered from, then one more) before the card is
        # declared lost; from then on the CPU model answers
        assert replies[0][1] != "FALLBACK" and replies[2][1] and replies[2][1] != "FALLBACK"
        # the card still loads but cannot execute: the probes see it (one token each) and do not switch back
        assert until(lambda: (engine.health().degraded or {}).get("probes", 0) >= 3)
        status = engine.health().degraded
        assert status is not None and status["switches"] == {"to_fallback": 1, "to_card": 0}, status
        assert "EXECUTE_FAIL" in (status["last_probe_error"] or "") and engine.ps()["models"] == []


def test_a_fallback_that_cannot_answer_fails_the_start(tmp_path: Path) -> None:
    before = resources()
    with pytest.raises(ModelNotFoundError, match="fallback model 'no-such:1b' is not in the store.*AX_LLM_FALLBACK"):
        Engine(ModelStore(tmp_path), backend="simulated", auto_pull=False, fallback_model="no-such:1b")
    embedding = tmp_path / "embedder"  # an embedding model's manifest (model/embedding_model.py)
    embedding.mkdir()
    (embedding / "ax_model.json").write_text(json.dumps({"format": EMBED_FORMAT, "dimension": 8,
                                                          "max_seq_length": 16}), encoding="utf-8")
    with pytest.raises(ModelNotFoundError, match="is an embedding model"):
        Engine(ModelStore(tmp_path), backend="simulated", auto_pull=False, fallback_model=str(embedding))
    assert_no_leaks(before)  # refused before any thread started


def test_a_non_streamed_request_cut_mid_generation_is_answered_whole_by_the_fallback(
        tmp_path: Path, card: SimCard, reliability_twin: str, fallback_twin: str,
        expected: dict[str, dict[str, str]]) -> None:
    with degraded_engine(tmp_path, card, fallback_twin) as engine:
        send(engine, "chat", reliability_twin, PROMPTS[3])
        target = card.counters.executes + 4  # the prefill and a few decode steps run, then the heartbeat dies
        original = card.inject_execute_faults

        def inject() -> None:
            if card.counters.executes >= target and not card.faults.offline:
                lose_card(card)
                raise Fail(codes.ERR_DEVICE_NO_CONNECT, "injected: heartbeat dead mid-generation")
            original()

        card.inject_execute_faults = inject  # type: ignore[method-assign]
        chunks = send(engine, "chat", reliability_twin, PROMPTS[3])  # "stream": false, as the Client sends it
        assert card.faults.offline and card.counters.executes >= target
        finals = [c for c in chunks if c.get("done")]
        assert len(finals) == 1 and finals[0]["ax"]["degraded"]["fallback_model"] == fallback_twin
        assert text(chunks) == expected["cpu"][key("chat", PROMPTS[3])]  # the fallback's whole answer, nothing else
