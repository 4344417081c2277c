"""Issue 3 benchmark: TTFT against history length with and without the prefix cache, and the host's
share of each decoded token, on SmolLM2's twin through the full engine (chat requests, Ollama options).

"Without" is measured in the same run by invalidating the cache before each request, which is what
a stateless client costs an engine without prefix reuse.
Host overhead per token = engine decode time per token minus the time spent inside the backend's
decode call (model execution), i.e. sampler + detokenizer + stop matching + scheduling.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

from _common import model_dir

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.model.store import ModelStore

OPTIONS = {"num_predict": 24, "temperature": 0.99, "top_k": 85, "top_p": 0.9, "repeat_penalty": 1.5,
           "repeat_last_n": 64, "stop": ["#", "["], "seed": 7}
USER_TURNS = [
    "Tell me something about the sea.", "And about mountains?", "What do birds eat?", "Why is the sky blue?",
    "Name a famous painter.", "What is your favourite color?", "Describe a forest at night.",
    "What sound does rain make?", "Tell me about the moon.", "How do bees make honey?",
] * 4


class TimedStack:
    """Wraps a DecoderStack to measure the time spent in model execution."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.spec = inner, inner.spec
        self.decode_ns = 0
        self.decode_calls = 0

    def prefill(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.prefill(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter_ns()
        try:
            return self.inner.decode(*args, **kwargs)
        finally:
            self.decode_ns += time.perf_counter_ns() - start
            self.decode_calls += 1

    def kv_save(self, n: int) -> Any:
        return self.inner.kv_save(n)

    def kv_restore(self, snap: Any) -> None:
        self.inner.kv_restore(snap)

    def close(self) -> None:
        self.inner.close()


def conversation_run(engine: Engine, use_cache: bool) -> list[dict[str, float]]:
    messages: list[dict[str, str]] = [{"role": "system", "content": "You are a friendly guide in a museum."}]
    rows = []
    runner = engine.slots.entries()[0][1].runner
    for turn, text in enumerate(USER_TURNS, start=1):
        messages.append({"role": "user", "content": text})
        if not use_cache:
            runner.cache.invalidate()
        start = time.perf_counter()
        stream = engine.chat({"model": "smollm2:135m", "messages": messages, "options": OPTIONS})
        first = next(stream)
        ttft = time.perf_counter() - start
        chunks = [first, *stream]
        final = chunks[-1]
        reply = "".join(c["message"]["content"] for c in chunks)
        messages.append({"role": "assistant", "content": reply})
        rows.append({"turn": turn, "prompt_tokens": final["prompt_eval_count"],
                     "reused": final["ax"]["prompt_cache_reused_tokens"], "ttft_ms": ttft * 1000,
                     "prompt_eval_ms": final.get("prompt_eval_duration", 0) / 1e6})
    return rows


def main() -> None:
    path = model_dir()
    engine = Engine(ModelStore(path.parent.parent), backend="onnx", keep_alive=-1)
    list(engine.chat({"model": "smollm2:135m", "messages": []}))  # load
    runner = engine.slots.entries()[0][1].runner
    timed = TimedStack(runner.model.stack)
    runner.model.stack = timed
    runner.cache.stack = timed
    with_cache = conversation_run(engine, use_cache=True)
    runner.cache.invalidate()
    without = conversation_run(engine, use_cache=False)
    report: dict[str, Any] = {"turns": len(USER_TURNS)}
    for label, rows in (("with_cache", with_cache), ("without_cache", without)):
        report[label] = {f"turn_{r['turn']}": {k: round(v, 1) for k, v in r.items() if k != "turn"}
                         for r in rows if r["turn"] in (2, 10, 20, 30, 40)}
    late = [r["ttft_ms"] for r in with_cache[20:]]
    late_without = [r["ttft_ms"] for r in without[20:]]
    report["median_ttft_ms_turns_21_40"] = {"with_cache": round(statistics.median(late), 1),
                                            "without_cache": round(statistics.median(late_without), 1),
                                            "ratio": round(statistics.median(late_without) /
                                                           statistics.median(late), 2)}
    report["turn30_vs_turn2_prompt_eval"] = round(with_cache[29]["prompt_eval_ms"] / with_cache[1]["prompt_eval_ms"], 2)
    # Host share per decoded token: a plain decode loop through the engine.
    timed.decode_ns = timed.decode_calls = 0
    start = time.perf_counter_ns()
    final = list(engine.generate({"model": "smollm2:135m", "prompt": "Tell me a long story.",
                                  "options": {**OPTIONS, "num_predict": 64, "stop": []}}))[-1]
    eval_ns = final["eval_duration"]
    host_ms = (eval_ns - timed.decode_ns) / max(final["eval_count"], 1) / 1e6
    report["decode"] = {"tokens": final["eval_count"],
                        "eval_ms_per_token": round(eval_ns / final["eval_count"] / 1e6, 2),
                        "model_ms_per_token": round(timed.decode_ns / max(timed.decode_calls, 1) / 1e6, 2),
                        "host_overhead_ms_per_token": round(host_ms, 3),
                        "request_wall_ms": round((time.perf_counter_ns() - start) / 1e6)}
    engine.close()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
