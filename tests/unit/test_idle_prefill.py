"""The idle prefill job yields to real work: dropped when superseded, skipped when anything is queued."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

from ax_llm_provider.engine.idle_prefill import IdlePrefill, idle_prefill_from_env
from ax_llm_provider.engine.runner import RunStats, RunStep
from ax_llm_provider.engine.worker.scheduler import CancelToken, DeviceWorker


class FakeRunner:
    def __init__(self) -> None:
        self.evaluated: list[list[int]] = []

    def evaluate_only(self, prompt: list[int]) -> RunStep:
        self.evaluated.append(prompt)
        return RunStep("", None, RunStats("length", len(prompt), 0, 0, 0, 0, prompt))


def render(messages: Sequence[Mapping[str, Any]]) -> list[int]:
    return [ord(c) for m in messages for c in f"<{m['role']}>{m['content']}</>"]


CONVERSATION = [{"role": "user", "content": "hi"}]
REPLY = {"role": "assistant", "content": "hello"}


def setup() -> tuple[DeviceWorker, FakeRunner, IdlePrefill]:
    worker, runner = DeviceWorker(), FakeRunner()
    slots = SimpleNamespace(get=lambda name: SimpleNamespace(runner=runner) if name == "m" else None)
    return worker, runner, IdlePrefill(worker, slots)  # type: ignore[arg-type]


def blocker(release: threading.Event, started: threading.Event):  # type: ignore[no-untyped-def]
    def work(cancel: CancelToken) -> Iterator[None]:
        started.set()
        release.wait(30)
        yield None
    return work


def run_blocked(worker: DeviceWorker, then: Any) -> None:
    """Hold the device with one job, call `then`, release it, and wait until the queue has drained."""
    release, started = threading.Event(), threading.Event()
    stream = worker.submit(blocker(release, started))
    started.wait(30)
    then()
    release.set()
    list(stream)
    worker.call(lambda: None)


def test_evaluates_the_known_prefix_when_idle() -> None:
    worker, runner, idle = setup()
    try:
        run_blocked(worker, lambda: idle.schedule("m", runner, render, CONVERSATION, REPLY, window=512))  # type: ignore[arg-type]
        expected = render([*CONVERSATION, REPLY]) + [ord(c) for c in "<user>"]
        assert runner.evaluated == [expected] and idle.evaluated == 1
    finally:
        worker.shutdown()


def test_superseded_job_never_runs() -> None:
    worker, runner, idle = setup()
    try:
        def schedule_then_real() -> None:
            idle.schedule("m", runner, render, CONVERSATION, REPLY, window=512)  # type: ignore[arg-type]
            idle.yield_to_real_work()

        run_blocked(worker, schedule_then_real)
        assert runner.evaluated == [] and idle.evaluated == 0
    finally:
        worker.shutdown()


def test_skipped_when_real_work_waits_behind_it() -> None:
    worker, runner, idle = setup()
    try:
        real = []

        def schedule_then_queue() -> None:
            idle.schedule("m", runner, render, CONVERSATION, REPLY, window=512)  # type: ignore[arg-type]
            real.append(worker.submit(lambda cancel: iter([None])))  # queued without going through the engine

        run_blocked(worker, schedule_then_queue)
        assert list(real[0]) == [None]
        assert runner.evaluated == [] and idle.skipped == 1
    finally:
        worker.shutdown()


def test_skipped_when_the_model_was_replaced_or_the_prefix_does_not_fit() -> None:
    worker, runner, idle = setup()
    try:
        run_blocked(worker, lambda: idle.schedule("other", runner, render, CONVERSATION, REPLY, window=512))  # type: ignore[arg-type]
        run_blocked(worker, lambda: idle.schedule("m", runner, render, CONVERSATION, REPLY, window=10))  # type: ignore[arg-type]
        assert runner.evaluated == [] and idle.skipped == 2
    finally:
        worker.shutdown()


def test_env_switch(monkeypatch: Any) -> None:
    monkeypatch.setenv("AX_LLM_IDLE_PREFILL", "1")
    assert idle_prefill_from_env()
    monkeypatch.setenv("AX_LLM_IDLE_PREFILL", "0")
    assert not idle_prefill_from_env()
