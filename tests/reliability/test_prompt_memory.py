"""Issue 15 item 1: a 20 MB prompt in process, peak and retained RSS, in a fresh subprocess.

Before the prompt cap this request peaked about 3.2 GB above the loaded model and kept about 1.8 GB.
The figures go to the reliability report; the bound is memory, not time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability.conftest import report

ROOT = Path(__file__).resolve().parents[2]
BOUND_MB = 200  # the prompt itself and its request copies, never the tokenizer's ~130x


@pytest.mark.parametrize("endpoint", ["generate", "chat"])
def test_twenty_megabyte_prompt_is_refused_cheaply(endpoint: str, smollm2_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("AX_LLM_MAX_PROMPT_BYTES", None)
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_prompt_memory.py"), "--mb", "20",
                           "--endpoint", endpoint], capture_output=True, text=True, env=env, timeout=600, check=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    report(f"prompt_20mb_{endpoint}", **figures)
    assert figures["outcome"].startswith("InvalidRequestError"), figures
    assert figures["peak_growth_mb"] < BOUND_MB and figures["retained_mb"] < BOUND_MB, figures
