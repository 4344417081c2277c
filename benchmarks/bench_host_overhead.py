"""Host overhead per generated token through the whole engine, with the device's work nulled.

The CPU twin's decode is replaced by returning the prefill's logits with the end tokens masked, so what is
timed is everything the host does per token: sampler, detokenizer, stop matching, response parsing, chunk
building, the device thread's hand-over to the caller and the adapter on top. Measured for `Engine.chat`,
`Client.chat(stream=True)` and `ChatAXOllama.stream`, as microseconds per streamed token (medians).

To compare two trees in one run, pass the other tree's `src` directory: the same script then runs in two
child processes, one per tree, taking turns, so load bursts on a shared machine hit both alike:

    python benchmarks/bench_host_overhead.py --baseline-src ../main/src [--rounds 5] [--tokens 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MODEL = "smollm2:135m"
MESSAGES = [{"role": "system", "content": "You are a talking lantern."},
            {"role": "user", "content": "Tell me a long story about the sea."}]


def null_device(end_ids: set[int]) -> None:
    """Decode returns the last prefill's logits with the end tokens masked: no device time per token."""
    import numpy as np

    from ax_llm_provider.runtime.onnx_backend import OnnxDecoderStack

    prefill = OnnxDecoderStack.prefill
    state: dict[str, Any] = {}

    def recording_prefill(self: Any, embeds: np.ndarray, start: int, want_logits: bool = True) -> Any:
        logits = prefill(self, embeds, start, want_logits)
        if logits is not None:
            masked = logits.copy()
            masked[list(end_ids)] = -np.inf
            state["logits"] = masked
        return logits

    def null_decode(self: Any, embed: np.ndarray, pos: int) -> np.ndarray:
        return state["logits"]

    OnnxDecoderStack.prefill, OnnxDecoderStack.decode = recording_prefill, null_decode  # type: ignore[method-assign]


def measure(tokens: int, repeats: int) -> dict[str, float]:
    """Median microseconds per streamed chunk for each entry point, in this process."""
    from ax_llm_provider.engine.engine import Engine
    from ax_llm_provider.integrations.langchain import ChatAXOllama
    from ax_llm_provider.ollama.client import Client

    options = {"num_predict": tokens, "temperature": 0.8, "top_k": 40, "top_p": 0.9, "seed": 3}
    engine = Engine(backend="onnx")
    request = {"model": MODEL, "messages": MESSAGES, "options": options, "keep_alive": -1}
    list(engine.chat(request))  # pull on first use, load, warm the prefix cache
    # the loaded model's end tokens (a tree from before engine/slots.py keeps its models in a private dict)
    entries = engine.slots.entries() if hasattr(engine, "slots") else list(engine._models.items())  # noqa: SLF001
    null_device(set(entries[0][1].runner.model.tokenizer.eos_ids))
    client = Client(engine=engine)
    chat = ChatAXOllama(model=MODEL, engine=engine, num_predict=tokens, temperature=0.8, top_k=40, top_p=0.9,
                        seed=3)

    def per_token(stream: Any) -> float:
        started, n = None, 0
        for _ in stream:
            if started is None:
                started = time.perf_counter_ns()  # from the first chunk: the prefill is not per-token work
            n += 1
        assert started is not None and n > 1
        return (time.perf_counter_ns() - started) / 1e3 / (n - 1)

    runs: dict[str, list[float]] = {"engine": [], "client": [], "langchain": []}
    for _ in range(repeats):
        runs["engine"].append(per_token(engine.chat(request)))
        runs["client"].append(per_token(client.chat(MODEL, MESSAGES, stream=True, options=options, keep_alive=-1)))
        runs["langchain"].append(per_token(chat.stream(MESSAGES)))
    engine.close()
    return {k: statistics.median(v) for k, v in runs.items()}


def child(src: str, tokens: int, repeats: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": src}
    out = subprocess.run([sys.executable, __file__, "--child", "--tokens", str(tokens), "--repeats", str(repeats)],
                         env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-src", help="the other tree's src directory (the baseline)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.tokens, args.repeats)))
        return
    this = str(Path(__file__).resolve().parents[1] / "src")
    trees = {"this tree": this} | ({"baseline": args.baseline_src} if args.baseline_src else {})
    results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, src in trees.items():
            results[name].append(child(src, args.tokens, args.repeats))
    print(f"host overhead per streamed token, µs (median of {args.rounds} rounds x {args.repeats} requests of "
          f"{args.tokens} tokens, device time nulled)")
    print(f"{'':12}" + "".join(f"{k:>12}" for k in ("engine", "client", "langchain")))
    for name, rows in results.items():
        print(f"{name:12}" + "".join(f"{statistics.median(r[k] for r in rows):12.1f}"
                                     for k in ("engine", "client", "langchain")))


if __name__ == "__main__":
    main()
