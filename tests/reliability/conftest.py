"""Reliability suite: fault injection, soak and shutdown on the simulated card and the CPU twin.

`pytest` (CI) runs a reduced version; `nox -s reliability` runs the full counts (AX_LLM_RELIABILITY_FULL=1).
Counts can be set directly with AX_LLM_FAULT_RUNS and AX_LLM_SOAK_REQUESTS. The figures each test
measures are printed in a "reliability figures" section at the end of the run, and written as JSON lines
to $AX_LLM_RELIABILITY_REPORT when set.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

FULL = os.environ.get("AX_LLM_RELIABILITY_FULL", "") not in ("", "0")
FAULT_RUNS = int(os.environ.get("AX_LLM_FAULT_RUNS", "100" if FULL else "10"))
SOAK_REQUESTS = int(os.environ.get("AX_LLM_SOAK_REQUESTS", "5000" if FULL else "300"))
FIGURES: list[dict[str, Any]] = []


def report(name: str, **figures: Any) -> None:
    """Record one test's figures for the end-of-run summary."""
    entry = {"test": name, **figures}
    FIGURES.append(entry)
    path = os.environ.get("AX_LLM_RELIABILITY_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(entry) + "\n")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("reliability figures" + (" (full)" if FULL else " (reduced: CI)"))
    for entry in FIGURES:
        rest = ", ".join(f"{k}={v}" for k, v in entry.items() if k != "test")
        terminalreporter.write_line(f"{entry['test']}: {rest}")


WORDS = ["the", "card", "sat", "on", "a", "warm", "shelf", "while", "visitors",
         "asked", "it", "about", "stars", "rivers", "and", "old", "songs"]


@pytest.fixture(scope="session")
def reliability_twin(tiny_twin: Callable[..., Path]) -> str:
    return str(tiny_twin("llama", decode_capacity=255, prefill_chunk=16, prefill_histories=(0, 16, 32, 64, 128)))


@pytest.fixture(scope="session")
def warm(reliability_twin: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Initialize lazy process-wide pools (tokenizer threads, onnxruntime) before counting threads and fds."""
    from ax_llm_provider.engine.engine import Engine
    from ax_llm_provider.engine.ops.health import HealthConfig
    from ax_llm_provider.model.store import ModelStore
    from ax_llm_provider.runtime.simcard import SimCard

    for backend in ("simulated", "onnx"):
        with Engine(ModelStore(tmp_path_factory.mktemp("warm")), backend=backend,
                    card=SimCard() if backend == "simulated" else None, auto_pull=False,
                    health=HealthConfig(period_s=0.05)) as engine:
            list(engine.chat({"model": reliability_twin, "messages": [{"role": "user", "content": "hi"}],
                              "options": {"num_predict": 2}}))
            asyncio.run(_achat(engine, reliability_twin))


async def _achat(engine: Any, model: str) -> None:
    async for _ in engine.achat({"model": model, "messages": [{"role": "user", "content": "hi"}],
                                 "options": {"num_predict": 2}}):
        pass


# ---- leak accounting -----------------------------------------------------------------------------------


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def task_count() -> int:
    return len(os.listdir("/proc/self/task"))


def task_names() -> list[str]:
    names = []
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            names.append(Path(f"/proc/self/task/{task}/comm").read_text().strip())
    return names


def resources() -> dict[str, Any]:
    return {"threads": {t.ident for t in threading.enumerate()}, "fds": fd_count(), "tasks": task_count()}


def assert_no_leaks(before: dict[str, Any], timeout: float = 15.0) -> dict[str, int]:
    """Python threads, OS threads and file descriptors are back to what they were (waits for stragglers)."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()  # a cycle may still hold an onnxruntime session (and its pool threads)
        now = resources()
        extra = [t for t in threading.enumerate() if t.ident not in before["threads"]]
        if (not extra and now["fds"] <= before["fds"]
            and now["tasks"] <= before["tasks"]) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not extra, f"threads left behind: {[t.name for t in extra]}"
    assert now["fds"] <= before["fds"], f"file descriptors leaked: {before['fds']} -> {now['fds']}"
    assert now["tasks"] <= before["tasks"], f"OS threads leaked: {before['tasks']} -> {now['tasks']} ({task_names()})"
    return {"threads": len(now["threads"]), "fds": now["fds"], "tasks": now["tasks"]}


@pytest.fixture(scope="module")
def app() -> Any:
    """deploy/installation_app.py loaded as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("installation_app", Path(__file__).resolve().parents[2]
                                                  / "deploy" / "installation_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
