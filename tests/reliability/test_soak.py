"""Soak: thousands of mixed requests (chat, generate, stream, cancel, async; 4 client threads) on a tiny twin.

Each client thread keeps two conversations (the installation's "screen" and "visitor") and resends the
whole history every turn, as the installation's LangChain client does, so the prefix cache, snapshot
eviction and context truncation all run continuously. Pass: no unexpected error, RSS growth below 5 %
after warm-up, prefix-cache snapshot bytes never above their bound, no recovery needed, no leak.
"""

from __future__ import annotations

import asyncio
import gc
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.engine.ops.health import HealthConfig
from ax_llm_provider.model.store import ModelStore
from ax_llm_provider.runtime.simcard import SimCard

from .conftest import SOAK_REQUESTS, WORDS, assert_no_leaks, report, resources

SNAPSHOT_BOUND = 96 << 10  # small on purpose: eviction runs all the time
CLIENTS = 4
KINDS = ("chat", "chat", "generate", "stream", "cancel", "async")


def rss_bytes() -> int:
    import os

    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Client:
    """One visitor-facing client thread: two conversations, resent whole each turn."""

    def __init__(self, engine: Engine, model: str, seed: int) -> None:
        self.engine, self.model = engine, model
        self.rng = random.Random(seed)
        self.conversations: list[list[dict[str, str]]] = [[], []]
        self.kinds: Counter[str] = Counter()
        self.errors: list[str] = []
        self.truncated = self.reused = 0

    def text(self, lo: int, hi: int) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(lo, hi)))

    def options(self) -> dict[str, Any]:
        return {"num_predict": self.rng.randint(2, 10), "temperature": self.rng.choice([0.0, 0.99]),
                "top_k": 85, "top_p": 0.9, "repeat_penalty": 1.5, "repeat_last_n": 64, "stop": ["#", "["]}

    def final(self, chunk: dict[str, Any]) -> None:
        ax = chunk.get("ax") or {}
        self.reused += ax.get("prompt_cache_reused_tokens", 0)
        self.truncated += bool(ax.get("truncation"))

    def one(self) -> None:
        kind = self.rng.choice(KINDS)
        self.kinds[kind] += 1
        convo = self.conversations[self.rng.randrange(2)]
        if len(convo) > 24:  # a new visitor
            convo.clear()
        messages = [{"role": "system", "content": "You are the installation."}, *convo,
                    {"role": "user", "content": self.text(1, 12)}]
        body = {"model": self.model, "messages": messages, "options": self.options()}
        try:
            if kind == "generate":
                chunks = list(self.engine.generate({"model": self.model, "prompt": self.text(1, 20),
                                                    "options": self.options()}))
                self.final(chunks[-1])
                return
            if kind == "cancel":  # the consumer stops reading after the first chunk
                stream = self.engine.chat({**body, "stream": True})
                next(stream, None)
                stream.close()
                return
            if kind == "async":
                chunks = asyncio.run(self._achat(body))
            else:
                chunks = list(self.engine.chat({**body, "stream": kind == "stream"}))
            self.final(chunks[-1])
            reply = "".join(c["message"]["content"] for c in chunks)
            convo += [messages[-1], {"role": "assistant", "content": reply}]
        except Exception as exc:  # noqa: BLE001 -- counted: the soak allows none
            self.errors.append(f"{kind}: {type(exc).__name__}: {exc}")

    async def _achat(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        return [chunk async for chunk in self.engine.achat(body)]

    def run(self, count: int) -> None:
        for _ in range(count):
            self.one()


def snapshot_bytes(engine: Engine) -> int:
    def read() -> int:
        return sum(entry.runner.cache.snapshot_bytes for _, entry in engine.slots.entries())

    return int(engine.worker.call(read, timeout=30))


@pytest.mark.parametrize("backend", ["simulated", "onnx"])
def test_soak(backend: str, reliability_twin: str, tmp_path: Path, warm: None) -> None:
    total = SOAK_REQUESTS
    warmup = max(50, total // 10)
    before = resources()
    card = SimCard() if backend == "simulated" else None
    engine = Engine(ModelStore(tmp_path), backend=backend, card=card, auto_pull=False, keep_alive=-1,
                    snapshot_bytes=SNAPSHOT_BOUND, request_timeout=60, max_queue=64,
                    health=HealthConfig(period_s=0.05))
    clients = [Client(engine, reliability_twin, seed) for seed in range(CLIENTS)]
    max_snapshot = 0
    try:
        clients[0].run(warmup)  # warm-up: model loaded, caches and pools at their working size
        gc.collect()
        rss_start = rss_bytes()
        started = time.monotonic()
        share, extra = divmod(total - warmup, CLIENTS)
        threads = [threading.Thread(target=c.run, args=(share + (i < extra),), name=f"soak-client-{i}")
                   for i, c in enumerate(clients)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            max_snapshot = max(max_snapshot, snapshot_bytes(engine))
            time.sleep(0.2)
        for t in threads:
            t.join()
        wall = time.monotonic() - started
        max_snapshot = max(max_snapshot, snapshot_bytes(engine))
        gc.collect()
        rss_end = rss_bytes()
        health = engine.health()
        stats = engine.worker.stats()
    finally:
        engine.close(timeout=30)
    errors = [e for c in clients for e in c.errors]
    kinds = sum((c.kinds for c in clients), Counter())
    done = sum(kinds.values())
    growth = (rss_end - rss_start) / rss_start * 100
    counts = assert_no_leaks(before)
    if card is not None:
        assert card.memory.used == 0 and not card.models and not card.inited
    report(f"soak[{backend}]", requests=done, kinds=dict(kinds), unexpected_errors=len(errors),
           wall_s=round(wall, 1), req_per_s=round((done - warmup) / wall, 1), rss_start_mb=round(rss_start / 2**20, 1),
           rss_end_mb=round(rss_end / 2**20, 1), rss_growth_pct=round(growth, 2),
           max_snapshot_bytes=max_snapshot, snapshot_bound=SNAPSHOT_BOUND,
           reused_tokens=sum(c.reused for c in clients), truncated=sum(c.truncated for c in clients),
           cancelled=stats.cancelled, recoveries=health.recoveries, **counts)
    assert not errors, f"{len(errors)} unexpected errors, first: {errors[:3]}"
    assert done == total
    assert growth < 5.0, f"RSS grew {growth:.1f} % after warm-up"
    assert max_snapshot <= SNAPSHOT_BOUND
    assert sum(health.recoveries.values()) == 0 and health.state in ("ok", "warn")
