"""Peak and retained RSS of one oversized prompt, in a fresh process (issue 15, item 1).

    PYTHONPATH=src python benchmarks/bench_prompt_memory.py [--mb 20] [--model smollm2:135m]

Prints VmRSS before, VmHWM growth during, and VmRSS after the request (after gc), in MB, plus the
request's outcome. The baseline is the same process's RSS with the model loaded and one short request served.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import time


def vm(key: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=float, default=20.0, help="prompt size in MB")
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--endpoint", choices=("generate", "chat"), default="generate")
    args = parser.parse_args()

    from ax_llm_provider import Engine

    engine = Engine(backend="onnx", auto_pull=False, keep_alive=-1)
    list(engine.generate({"model": args.model, "prompt": "hello", "options": {"num_predict": 1}}))
    gc.collect()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset VmHWM to the current RSS, so the peak is this request's alone
    baseline_rss, baseline_hwm = vm("VmRSS"), vm("VmHWM")
    prompt = "lorem ipsum dolor sit amet " * int(args.mb * 2**20 / 27)
    started = time.perf_counter()
    if args.endpoint == "generate":
        request = {"model": args.model, "prompt": prompt, "options": {"num_predict": 1}}
        run = engine.generate
    else:
        request = {"model": args.model, "messages": [{"role": "user", "content": prompt}],
                   "options": {"num_predict": 1}}
        run = engine.chat  # type: ignore[assignment]
    try:
        list(run(request))
        outcome = "served"
    except Exception as exc:  # noqa: BLE001 - the outcome is what we report
        outcome = f"{type(exc).__name__}: {str(exc)[:120]}"
    seconds = time.perf_counter() - started
    del prompt, request
    gc.collect()
    peak_growth = vm("VmHWM") - max(baseline_hwm, baseline_rss)
    retained = vm("VmRSS") - baseline_rss
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # what is left after this is referenced, not allocator slack
    print(json.dumps({"prompt_mb": args.mb, "endpoint": args.endpoint, "outcome": outcome,
                      "seconds": round(seconds, 2), "baseline_rss_mb": round(baseline_rss, 1),
                      "peak_growth_mb": round(max(peak_growth, 0.0), 1),
                      "retained_mb": round(retained, 1),
                      "retained_after_trim_mb": round(vm("VmRSS") - baseline_rss, 1)}))
    engine.close()


if __name__ == "__main__":
    main()
