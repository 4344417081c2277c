"""Per-token sampler cost at vocab 151936 with the installation's options, against a naive baseline.

    python benchmarks/bench_sampler.py [--tokens 2000] [--naive-tokens 200]

Both run in the same process on the same logits: ours (`TokenSampler`: penalties in place, top-k by
a sampled threshold, the chain over the k survivors) and a naive one (copy, full `np.argsort`,
full-vocabulary softmax, then the same chain). The logits are synthetic (normal noise plus a peaked
head, like an LM's); the copy that hands each step fresh logits is outside the timed region.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np

from ax_llm_provider.engine.options import GenerationOptions
from ax_llm_provider.engine.sampler import TokenSampler

VOCAB = 151936
INSTALLATION = GenerationOptions(temperature=0.99, top_k=85, top_p=0.9, repeat_penalty=1.5,
                                 repeat_last_n=64, seed=1)


def synthetic_logits(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    pool = []
    for _ in range(count):
        x = (rng.standard_normal(VOCAB) * 2.5).astype(np.float32)
        head = rng.integers(0, VOCAB, 50)
        x[head] += rng.uniform(4.0, 14.0, head.size).astype(np.float32)
        pool.append(x)
    return pool


def naive_sample(logits: np.ndarray, history: list[int], opts: GenerationOptions,
                 rng: np.random.Generator) -> int:
    x = logits.copy()
    ids, counts = np.unique(np.asarray(history[-opts.repeat_last_n:]), return_counts=True)
    vals = x[ids]
    x[ids] = np.where(vals <= 0, vals * opts.repeat_penalty, vals / opts.repeat_penalty)
    order = np.argsort(x)[::-1]  # full sort
    probs = np.exp(x - x.max())
    probs /= probs.sum()  # full softmax
    keep = order[: opts.top_k]
    p = probs[keep] / probs[keep].sum()
    n = int(np.searchsorted(np.cumsum(p), opts.top_p)) + 1
    keep = keep[:n]
    scaled = x[keep] / opts.temperature
    w = np.exp(scaled - scaled.max())
    return int(keep[rng.choice(n, p=w / w.sum())])


def time_per_token(step, pool: list[np.ndarray], tokens: int, prompt: list[int]) -> list[float]:
    history = list(prompt)
    times = []
    for i in range(tokens):
        fresh = pool[i % len(pool)].copy()
        began = time.perf_counter_ns()
        token = step(fresh, history)
        times.append((time.perf_counter_ns() - began) / 1e6)
        history.append(token)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--naive-tokens", type=int, default=200)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    pool = synthetic_logits(rng, 32)
    prompt = rng.integers(0, VOCAB, 300).tolist()
    ours = TokenSampler.from_options(INSTALLATION, context_size=4096)
    naive_rng = np.random.default_rng(1)

    def naive(x, h):
        return naive_sample(x, h, INSTALLATION, naive_rng)

    time_per_token(ours, pool, 200, prompt)  # warm-up
    ours_ms = time_per_token(ours, pool, args.tokens, prompt)
    naive_ms = time_per_token(naive, pool, args.naive_tokens, prompt)
    med_ours, med_naive = statistics.median(ours_ms), statistics.median(naive_ms)

    print(f"machine: {platform.machine()} {platform.processor() or ''} numpy {np.__version__}")
    print(f"vocab {VOCAB}; temperature 0.99, top_k 85, top_p 0.9, repeat_penalty 1.5, repeat_last_n 64")
    print(f"ours : median {med_ours:.4f} ms/token  p90 {np.percentile(ours_ms, 90):.4f}  ({args.tokens} tokens)")
    print(f"naive: median {med_naive:.4f} ms/token  p90 {np.percentile(naive_ms, 90):.4f}  "
          f"({args.naive_tokens} tokens, full sort + softmax)")
    print(f"ratio: naive / ours = {med_naive / med_ours:.1f}x")


if __name__ == "__main__":
    main()
