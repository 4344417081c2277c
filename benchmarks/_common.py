"""Helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def rss_mb() -> float:
    """Resident set size of this process in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def model_dir(name: str = "smollm2:135m") -> Path:
    """The stored twin (pulled on first use), honouring AX_LLM_MODELS."""
    from ax_llm_provider.model.pull import pull
    from ax_llm_provider.model.store import ModelStore

    return pull(name, ModelStore(os.environ.get("AX_LLM_MODELS") or None))


def mapped_rss_mb(name_part: str) -> float:
    """Resident MB of this process's mappings of files whose path contains `name_part` (Linux smaps)."""
    total_kb, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if line and not line[0].isupper():  # a mapping header: "addr-addr perms offset dev inode path"
            inside = name_part in line
        elif inside and line.startswith("Rss:"):
            total_kb += int(line.split()[1])
    return total_kb / 1024
