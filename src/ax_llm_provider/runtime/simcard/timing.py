"""Timing model and presets of the simulated card, plus the clock that accumulates simulated device time.

Figures come from docs/sdk-notes.md ("Timing figures"). Only the qwen3-0.6b-w8a16 per-layer and lm-head
times were measured (llama.cpp card backend on an LLM-8850 + Pi 5); every other number is an ESTIMATE derived
from a published tokens/s figure or from the Pi 5's PCIe link, and is labelled so in `Preset.source`.
The clock never sleeps unless asked: tests and benchmarks read the simulated time instead.

Two models: "strict" (the default) charges a PCIe round trip (`rpc_ms`) to every call that crosses the bus
and the same host-transfer cost whatever allocated the host buffer (`malloc_host` is plain malloc in V3.10.2);
"legacy" is the earlier model, which charged nothing for the round trips and treated `malloc_host` memory
as pinned (no ~1 ms extra per transfer). Keep "legacy" only to compare figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Literal

MB = 1 << 20
TimingName = Literal["strict", "legacy"]
TIMING_MODELS: tuple[str, ...] = ("strict", "legacy")


@dataclass(frozen=True)
class Geometry:
    """Shapes of a synthetic ("null compute") model: what a vendor bundle of that model exposes."""

    layers: int
    hidden: int
    kv_dim: int
    vocab: int
    capacity: int  # C, decode KV rows
    chunk: int = 128  # P
    prefill_histories: tuple[int, ...] = (0,)
    extra_decode_capacities: tuple[int, ...] = ()  # more decode groups (newer builds), listed after the prefill ones
    layer_cmm_bytes: int = 0  # device memory a layer model occupies (ESTIMATE)
    post_cmm_bytes: int = 0


@dataclass(frozen=True)
class TimingModel:
    """Simulated device cost of each API call kind, in milliseconds (bandwidths in bytes/s)."""

    decode_layer_ms: float  # one decode-group execute of a layer model (fixed per-call cost included)
    prefill_layer_ms: float  # one 128-token prefill chunk of a layer model
    post_ms: float  # one execute of the lm-head (post) model
    other_execute_ms: float = 0.46  # any other model: the fixed cost per engine call
    pcie_bytes_per_s: float = 400e6  # Pi 5 PCIe Gen2 x1, effective (ESTIMATE)
    memcpy_fixed_ms: float = 0.03  # the round trip of one H2D/D2H (ESTIMATE)
    unpinned_extra_ms: float = 1.0  # extra for a transfer from ordinary host memory (docs/sdk-notes.md: ~1 ms, C code)
    rpc_ms: float = 0.03  # the PCIe round trip of any other call that reaches the card (ESTIMATE)
    malloc_host_pinned: bool = False  # legacy: malloc_host memory skips unpinned_extra_ms
    d2d_bytes_per_s: float = 8e9  # on-card copy (ESTIMATE)
    d2d_fixed_ms: float = 0.03
    memset_fixed_ms: float = 0.03
    properties_ms: float = 20.0  # axclrtGetDeviceProperties runs shell commands on the card (ESTIMATE)

    def transfer_ms(self, nbytes: int, from_malloc_host: bool) -> float:
        pinned = from_malloc_host and self.malloc_host_pinned
        return self.memcpy_fixed_ms + nbytes * 1e3 / self.pcie_bytes_per_s + (0.0 if pinned else self.unpinned_extra_ms)

    def legacy(self) -> TimingModel:
        """The earlier, kinder model: no round trip per call, malloc_host treated as pinned."""
        return replace(self, rpc_ms=0.0, malloc_host_pinned=True)

    def named(self, name: str) -> TimingModel:
        if name not in TIMING_MODELS:
            raise ValueError(f"unknown timing model {name!r}; choose one of {', '.join(TIMING_MODELS)}")
        return self.legacy() if name == "legacy" else self

    def d2d_ms(self, nbytes: int) -> float:
        return self.d2d_fixed_ms + nbytes * 1e3 / self.d2d_bytes_per_s


@dataclass(frozen=True)
class Preset:
    name: str
    geometry: Geometry
    timing: TimingModel
    published_tok_s: dict[str, float]
    source: str


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "qwen3-0.6b-w8a16",
            Geometry(layers=28, hidden=1024, kv_dim=1024, vocab=151936, capacity=2559,
                     prefill_histories=(0, 512, 1024, 1536, 2048), layer_cmm_bytes=50 * MB, post_cmm_bytes=250 * MB),
            TimingModel(decode_layer_ms=1.51, prefill_layer_ms=23.6, post_ms=7.9),
            {"vendor_runner": 12.88, "llama_cpp_card_backend": 19.6},
            "decode 1.51 ms/layer (0.46 ms fixed per call included) and lm-head 7.9 ms MEASURED by the llama.cpp card "
            "backend (docs/sdk-notes.md); prefill 23.6 ms/layer/chunk ESTIMATED from the 670 ms TTFT; "
            "CMM sizes ESTIMATED",
        ),
        Preset(
            "qwen2.5-0.5b-w4a16",
            Geometry(layers=24, hidden=896, kv_dim=128, vocab=151936, capacity=1024,
                     prefill_histories=(0, 128, 256, 512), layer_cmm_bytes=15 * MB, post_cmm_bytes=150 * MB),
            TimingModel(decode_layer_ms=1.25, prefill_layer_ms=5.6, post_ms=7.0),
            {"vendor_runner": 27.05},
            "ESTIMATE: the vendor runner's 27.05 tok/s split between 24 layers and the lm-head; prefill from the "
            "124 ms on-board TTFT plus 15% for PCIe; prefill histories and CMM sizes ESTIMATED",
        ),
        Preset(
            "qwen2.5-1.5b-w4a16",
            Geometry(layers=28, hidden=1536, kv_dim=256, vocab=151936, capacity=1024,
                     prefill_histories=(0, 128, 256, 512), layer_cmm_bytes=40 * MB, post_cmm_bytes=240 * MB),
            TimingModel(decode_layer_ms=2.0, prefill_layer_ms=9.0, post_ms=10.0),
            {"vendor_runner": 15.06},
            "ESTIMATE: the vendor runner's 15.06 tok/s split between 28 layers and the lm-head; prefill from the "
            "230 ms on-board TTFT plus 15% for PCIe; prefill histories and CMM sizes ESTIMATED",
        ),
    )
}
DEFAULT_PRESET = "qwen3-0.6b-w8a16"


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown simulated-card preset {name!r}; choose one of {', '.join(PRESETS)}") from None


@dataclass
class SimClock:
    """Accumulates simulated device time; optionally sleeps it for wall-clock realism."""

    sleep: bool = False
    device_ms: float = 0.0
    slept_ms: float = 0.0
    sim_host_ms: float = 0.0  # wall time the simulator's own Python spent inside API calls
    by_kind: dict[str, float] = field(default_factory=dict)

    def charge(self, kind: str, ms: float) -> None:
        self.device_ms += ms
        self.by_kind[kind] = self.by_kind.get(kind, 0.0) + ms
        if self.sleep and ms > 0:
            started = time.perf_counter()
            time.sleep(ms / 1e3)
            self.slept_ms += (time.perf_counter() - started) * 1e3
