"""Issue 15 item 1: a 20 MB prompt in process, peak and retained RSS, in a fresh subprocess.

Before the prompt cap this request peaked about 3.2 GB above the loaded model and kept about 1.8 GB.
The full run (AX_LLM_RELIABILITY_FULL=1) measures that baseline again in the same run, with the cap lifted
(AX_LLM_MAX_PROMPT_BYTES=1 GiB: the prompt is tokenized, as every prompt was before the cap). The figures go
to the reliability report; the bound is memory, not time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.conftest import FULL, report

ROOT = Path(__file__).resolve().parents[2]
BOUND_MB = 200  # the prompt itself and its request copies, never the tokenizer's ~130x


def measure(endpoint: str, max_prompt_bytes: int | None) -> dict[str, Any]:
    """bench_prompt_memory.py's figures for one 20 MB prompt, in a fresh process (clean RSS)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("AX_LLM_MAX_PROMPT_BYTES", None)
    if max_prompt_bytes is not None:
        env["AX_LLM_MAX_PROMPT_BYTES"] = str(max_prompt_bytes)
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_prompt_memory.py"), "--mb", "20",
                           "--endpoint", endpoint], capture_output=True, text=True, env=env, timeout=900, check=True)
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


@pytest.mark.parametrize("endpoint", ["generate", "chat"])
def test_twenty_megabyte_prompt_is_refused_cheaply(endpoint: str, smollm2_dir: Path) -> None:
    figures = measure(endpoint, None)
    baseline = measure(endpoint, 1 << 30) if FULL and endpoint == "generate" else None
    extra = {} if baseline is None else {f"uncapped_{k}": v for k, v in baseline.items() if k != "prompt_mb"}
    report(f"prompt_20mb_{endpoint}", **figures, **extra)
    assert figures["outcome"].startswith("InvalidRequestError"), figures
    assert figures["peak_growth_mb"] < BOUND_MB and figures["retained_mb"] < BOUND_MB, figures
    if baseline is not None:  # the baseline went through the tokenizer: the cap is what keeps the figures small
        assert not baseline["outcome"].startswith("InvalidRequestError: the prompt is over"), baseline
