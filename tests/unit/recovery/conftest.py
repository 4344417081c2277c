"""The recovery tests' simulated card, tiny model and engine (fast retry waits, a loose hang watch)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.engine.ops.health import HealthConfig
from ax_llm_provider.engine.ops.recovery import RecoveryPolicy
from ax_llm_provider.model.store import ModelStore
from ax_llm_provider.runtime.simcard import SimCard

POLICY = RecoveryPolicy(step_wait_s=0.001, step_wait_max_s=0.002, cmm_retry_wait_s=0.01, reboot_wait_s=1,
                        reboot_poll_s=0.05)
# tests that inject no hang watch loosely: a loaded CI machine can stall a thread for a few hundred ms
CALM = HealthConfig(period_s=0.05, execute_timeout_s=5.0, hang_reboot_s=None, hang_fatal_s=None)


@pytest.fixture(scope="module")
def twin(tiny_twin: Callable[..., Path]) -> str:
    return str(tiny_twin("llama", decode_capacity=255, prefill_chunk=16, prefill_histories=(0, 16, 32, 64)))


@pytest.fixture()
def card() -> SimCard:
    return SimCard()


@pytest.fixture()
def engine(tmp_path: Path, card: SimCard) -> Iterator[Engine]:
    # The request timeout only stops a broken test from waiting forever; no test here expects it. A reset +
    # reload + re-run takes ~1 s on x86-64 and over 10 s under qemu-user emulation (scripts/arm64_check.py).
    eng = Engine(ModelStore(tmp_path), backend="simulated", card=card, auto_pull=False, keep_alive=-1,
                 request_timeout=60, health=CALM, recovery=POLICY)
    yield eng
    eng.close()
