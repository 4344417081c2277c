"""Issue 16 benchmark: what the derived-model hook (model/derived.py `apply_derived`) adds to a request.

Every chat/generate/embed request now asks the store whether its model is a derived one (`ax-llm create`).
Measured on a temporary store: the hook for a plain model (a miss: one stat), for a derived model (read and
validate its manifest, prepend SYSTEM and MESSAGEs, merge options), against the request validation every
request already pays (`parse_request(ChatRequest, ...)`, the baseline). The variants run in turn, so load on a
shared machine hits them alike. Prints medians in microseconds.

    python benchmarks/bench_derived_hook.py [--calls 2000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ax_llm_provider.engine.requests import ChatRequest, parse_request
from ax_llm_provider.model.derived import apply_derived
from ax_llm_provider.model.manage import create_progress, plan_create
from ax_llm_provider.model.store import ModelStore

HISTORY = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " * 8} for i in range(10)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(Path(tmp))
        base = store.path_for("base:1b")
        base.mkdir(parents=True)
        (base / "ax_model.json").write_text(json.dumps({"format": "ax-llm-twin/1"}))
        derived, _ = plan_create(store, "coyote", from_="base:1b", system="You are Wile E. Coyote.",
                                 parameters={"temperature": 0.3, "num_predict": 64},
                                 messages=[{"role": "user", "content": "Who?"},
                                           {"role": "assistant", "content": "Me."}])
        list(create_progress(store, derived, False))
        plain = {"model": "base:1b", "messages": HISTORY, "options": {"temperature": 0}}
        coyote = {**plain, "model": "coyote"}
        variants: dict[str, Callable[[], object]] = {
            "parse_request (baseline)": lambda: parse_request(ChatRequest, plain),
            "parse + hook, plain model": lambda: apply_derived(store, parse_request(ChatRequest, plain)),
            "parse + hook, derived model": lambda: apply_derived(store, parse_request(ChatRequest, coyote)),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.calls):
            for name, call in variants.items():
                started = time.perf_counter()
                call()
                times[name].append((time.perf_counter() - started) * 1e6)
    baseline = statistics.median(times["parse_request (baseline)"])
    print(f"{'variant':<30} {'median us':>10} {'x baseline':>11}   ({args.calls} calls each, 10-message history)")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:<30} {median:>10.1f} {median / baseline:>11.2f}")


if __name__ == "__main__":
    main()
