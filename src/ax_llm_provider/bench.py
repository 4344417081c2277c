"""Backend benchmark on the simulated card: how close the host code gets to the device-bound limit.

The card runs a null-compute model of a preset's full geometry (no CPU twin math), so the wall time of a
decode step is host work only: Python, numpy staging and the simulator's own bookkeeping (an upper bound
of what pyaxcl's ctypes calls cost). The simulated device time of the same step comes from the timing
model. projected tok/s assumes host and device work in series, as with synchronous `engine_execute`:

    device_bound_tok_s = 1000 / device_ms_per_token
    projected_tok_s    = 1000 / (device_ms_per_token + host_overhead_ms_per_token)

host_overhead_ms_per_token is the median over the measured steps (the mean and max are reported too: on a
shared machine a single pre-emption can add 100 ms to one step); simulator_share_ms_per_token is the part
of it spent inside the simulated API calls, a stand-in for pyaxcl's own ctypes cost.

The same figures for the pyaxengine path (KV copied every call) are measured in the same run as baseline_*.
Timing presets are partly estimates: see `source` in the result and docs/sdk-notes.md ("Timing figures").

timing_model "strict" (default) is the card as the SDK behaves (a round trip per bus call, no pinned discount
for malloc_host); "legacy" is the earlier, kinder model. `compare_legacy=True` also runs the old configuration
(legacy timing, kv_write="bind", the old default) in the same process and reports it under "legacy", so the
effect of the stricter card on projected tok/s and host overhead is measured side by side.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .runtime.axcl_backend import AxclDecoderStack
from .runtime.axengine_backend import AxengineDecoderStack, vendor_stdout_to_log
from .runtime.protocol import DecoderStack
from .runtime.simcard import DEFAULT_PRESET, SimCard, get_preset, make_axengine

log = logging.getLogger(__name__)


def _measure(card: SimCard, stack: DecoderStack, embeds: np.ndarray, start: int, tokens: int) -> dict[str, float]:
    """Decode `tokens` steps from position `start`; per-token means of wall, device time, calls and bytes."""
    walls, devices, calls, bus, sim = [], [], [], [], []
    counters, clock = card.counters, card.clock
    for i in range(tokens):
        calls0, bus0, dev0, slept0 = counters.total_calls, counters.bus_bytes, clock.device_ms, clock.slept_ms
        sim0 = clock.sim_host_ms
        started = time.perf_counter()
        logits = stack.decode(embeds[i % len(embeds)], start + i)
        wall = (time.perf_counter() - started) * 1e3
        walls.append(wall - (clock.slept_ms - slept0))
        devices.append(clock.device_ms - dev0)
        calls.append(counters.total_calls - calls0)
        bus.append(counters.bus_bytes - bus0)
        sim.append(clock.sim_host_ms - sim0)
        int(np.argmax(logits))  # what a greedy caller does next; not part of the step
    host = statistics.median(walls)  # robust to the scheduler pre-empting us on a shared machine
    device = statistics.fmean(devices)
    return {
        "device_ms_per_token": device,
        "host_overhead_ms_per_token": host,
        "host_overhead_ms_mean": statistics.fmean(walls),
        "host_overhead_ms_max": max(walls),
        "simulator_share_ms_per_token": statistics.median(sim),  # included in host overhead
        "device_bound_tok_s": 1e3 / device,
        "projected_tok_s": 1e3 / (device + host),
        "device_calls_per_token": statistics.fmean(calls),
        "bus_bytes_per_token": statistics.fmean(bus),
    }


def _run(make: Callable[[SimCard], DecoderStack], preset: str, prompt: np.ndarray, steps: np.ndarray,
         tokens: int, sleep: bool, timing_model: str) -> tuple[dict[str, float], float]:
    with tempfile.TemporaryDirectory(prefix="ax-llm-bench-") as namespace:  # never contends with a simulated service
        card = SimCard(preset, sleep=sleep, timing_model=timing_model, namespace=Path(namespace))
        try:
            return _run_on(card, make(card), prompt, steps, tokens)
        finally:
            if card.inited:  # the pyaxengine fake finalises only at exit: let go of the device now
                card.finalize()


def _run_on(card: SimCard, stack: DecoderStack, prompt: np.ndarray, steps: np.ndarray,
            tokens: int) -> tuple[dict[str, float], float]:
    try:
        before = card.clock.device_ms
        stack.prefill(prompt, 0)
        prefill_ms = card.clock.device_ms - before
        _measure(card, stack, steps, len(prompt), 2)  # warm-up: first-touch pages, caches
        return _measure(card, stack, steps, len(prompt) + 2, tokens), prefill_ms
    finally:
        stack.close()


def run_backend_bench(preset: str = DEFAULT_PRESET, tokens: int = 32, *, prompt_tokens: int = 130,
                      baseline_tokens: int = 3, kv_write: str = "d2d", sleep: bool = False, seed: int = 0,
                      timing_model: str = "strict", compare_legacy: bool = False) -> dict[str, Any]:
    """Bench the axcl backend and the pyaxengine baseline on the simulated card; returns a JSON-able dict."""
    spec = get_preset(preset)
    g = spec.geometry
    rng = np.random.default_rng(seed)
    prompt = (rng.standard_normal((prompt_tokens, g.hidden)) * 0.02).astype(np.float32)
    steps = (rng.standard_normal((16, g.hidden)) * 0.02).astype(np.float32)

    def axcl(write: str) -> Callable[[SimCard], DecoderStack]:
        def make(card: SimCard) -> DecoderStack:
            layers, post = card.add_null_stack()
            return AxclDecoderStack(layers, post, card, kv_write=write)
        return make

    def axengine(card: SimCard) -> DecoderStack:
        layers, post = card.add_null_stack()
        with vendor_stdout_to_log("import"):  # the fake, like pyaxengine, prints on import
            fake = make_axengine(card)
        return AxengineDecoderStack(layers, post, fake)

    started = time.perf_counter()
    main, prefill_ms = _run(axcl(kv_write), preset, prompt, steps, tokens, sleep, timing_model)
    base, base_prefill_ms = _run(axengine, preset, prompt, steps, baseline_tokens, sleep, timing_model)
    result: dict[str, Any] = {
        "preset": preset,
        "timing_model": timing_model,
        "backend": f"axcl (kv_write={kv_write})",
        "tokens": tokens,
        "prompt_tokens": prompt_tokens,
        "geometry": {"layers": g.layers, "hidden": g.hidden, "kv_dim": g.kv_dim, "vocab": g.vocab,
                     "capacity": g.capacity, "prefill_histories": list(g.prefill_histories)},
        **main,
        "efficiency": main["projected_tok_s"] / main["device_bound_tok_s"],
        "prefill_device_ms": prefill_ms,
        "budget": {"device_calls_per_token": 3 * g.layers + 10,
                   "bus_bytes_per_token": 2 * g.hidden * 2 + g.vocab * 2 + 1024},
        **{f"baseline_{k}": v for k, v in base.items()},
        "baseline_backend": "axengine (pyaxengine fake, KV copied every call)",
        "baseline_tokens": baseline_tokens,
        "baseline_prefill_device_ms": base_prefill_ms,
        "published_tok_s": spec.published_tok_s,
        "source": spec.source,
        "note": "simulated card, null compute; host overhead includes the simulator's own Python cost",
        "bench_seconds": time.perf_counter() - started,
    }
    if compare_legacy:
        old, old_prefill_ms = _run(axcl("bind"), preset, prompt, steps, tokens, sleep, "legacy")
        result["legacy"] = {"timing_model": "legacy", "backend": "axcl (kv_write=bind)", **old,
                            "prefill_device_ms": old_prefill_ms}
    log.info("bench %s: projected %.2f tok/s of %.2f device-bound (%.1f%%), baseline %.2f tok/s", preset,
             result["projected_tok_s"], result["device_bound_tok_s"], 100 * result["efficiency"],
             result["baseline_projected_tok_s"])
    return result
