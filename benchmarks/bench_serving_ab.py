"""Decode speed of the CPU serving layout in this tree against another tree's, alternating in fresh processes.

Each round starts one interpreter per arm (PYTHONPATH set to that arm's `src`), loads SmolLM2's twin with the
onnx backend's default layout and that tree's own defaults, prefills 64 tokens and times `--steps` decode steps;
the arms alternate round by round, so load on a shared machine falls on all of them. Prints the median ms per
token of every arm, its rounds, and each arm's speed relative to the baseline.

    python benchmarks/bench_serving_ab.py --baseline-src /path/to/other/checkout/src
    python benchmarks/bench_serving_ab.py --baseline-src OLD/src --also-env AX_LLM_ONNX_SPIN=0

--also-env KEY=VALUE adds a third arm: this tree with that environment variable set.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _common import model_dir

SCRIPT = """
import json, statistics, sys, time
from ax_llm_provider.model.loader import load_model
path, threads, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with load_model(path, backend="onnx", threads=threads) as model:
    lookup = model.embeddings.lookup
    model.stack.prefill(lookup(list(range(100, 164))), 0, want_logits=False)
    row, times = lookup([500])[0], []
    for pos in range(64, 64 + steps):
        started = time.perf_counter()
        model.stack.decode(row, pos)
        times.append(time.perf_counter() - started)
    print(json.dumps({"ms": statistics.median(times) * 1000, "layout": type(model.stack).__name__}))
"""

HERE = Path(__file__).resolve().parent.parent / "src"


def one_round(src: Path, env_extra: dict[str, str], model: Path, threads: int, steps: int) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(src), **env_extra}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(model), str(threads), str(steps)], env=env,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"the arm with src {src} failed: {result.stderr.strip()[-600:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-src", type=Path, required=True, help="the other tree's src directory")
    parser.add_argument("--also-env", metavar="KEY=VALUE", help="a third arm: this tree with this variable set")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=40, help="decode steps timed per round")
    args = parser.parse_args()
    if not (args.baseline_src / "ax_llm_provider").is_dir():
        parser.error(f"{args.baseline_src} has no ax_llm_provider package: give the other checkout's src directory")
    arms: dict[str, tuple[Path, dict[str, str]]] = {"this tree": (HERE, {}), "baseline": (args.baseline_src, {})}
    if args.also_env:
        key, sep, value = args.also_env.partition("=")
        if not sep or not key:
            parser.error("--also-env takes KEY=VALUE")
        arms[f"this tree, {key}={value}"] = (HERE, {key: value})
    model = model_dir()
    rounds: dict[str, list[float]] = {label: [] for label in arms}
    layouts: dict[str, str] = {}
    loads = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        for label, (src, env_extra) in arms.items():
            figures = one_round(src, env_extra, model, args.threads, args.steps)
            rounds[label].append(float(figures["ms"]))  # type: ignore[arg-type]
            layouts[label] = str(figures["layout"])
        loads.append(os.getloadavg()[0])
    base = statistics.median(rounds["baseline"])
    results: dict[str, object] = {"model": str(model), "threads": args.threads, "steps": args.steps,
                                  "baseline_src": str(args.baseline_src)}
    for label, values in rounds.items():
        ms = statistics.median(values)
        results[label] = {"decode_ms_per_token": round(ms, 2), "decode_tok_s": round(1000 / ms, 1),
                          "speed_vs_baseline": round(base / ms, 3), "layout": layouts[label],
                          "rounds_ms": [round(v, 2) for v in values]}
    results["load_average_1min"] = [round(v, 1) for v in loads]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
