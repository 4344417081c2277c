"""Print the simulated-card backend benchmark as JSON: python benchmarks/bench_backends.py [preset] [tokens].

--compare-legacy also runs the old configuration (legacy timing model, kv_write=bind) in the same run.
"""

from __future__ import annotations

import argparse
import json
import logging

from ax_llm_provider.bench import run_backend_bench
from ax_llm_provider.runtime.simcard import DEFAULT_PRESET, PRESETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("preset", nargs="?", default=DEFAULT_PRESET, choices=sorted(PRESETS))
    parser.add_argument("tokens", nargs="?", type=int, default=32)
    parser.add_argument("--kv-write", choices=("bind", "d2d"), default="d2d")
    parser.add_argument("--timing", choices=("strict", "legacy"), default="strict")
    parser.add_argument("--compare-legacy", action="store_true")
    parser.add_argument("--all", action="store_true", help="run every preset")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    presets = sorted(PRESETS) if args.all else [args.preset]
    results = [run_backend_bench(p, args.tokens, kv_write=args.kv_write, timing_model=args.timing,
                                 compare_legacy=args.compare_legacy) for p in presets]
    print(json.dumps(results if args.all else results[0], indent=2))


if __name__ == "__main__":
    main()
