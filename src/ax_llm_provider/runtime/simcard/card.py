"""The simulated card: an object with pyaxcl's module surface (`init`, `finalize`, `rt.*`, `sys.*`, constants).

    card = SimCard("qwen3-0.6b-w8a16")
    axcl = card                      # pass it wherever `import axcl` would be used
    axcl.init(None); devices, ret = axcl.rt.get_device_list(); axcl.rt.set_device(devices[0])

Besides the API: `card.counters` (calls, bytes per memcpy kind, executes), `card.clock` (simulated device
time; sleeps only with sleep=True), `card.faults` (error codes, offline, hang, CMM limit, temperature),
`card.lib_rt` (a ctypes-level stand-in for libaxcl_rt.so: axclrtGetDeviceProperties, axclrtRebootDevice),
and `register_model` / `add_null_stack` for synthetic null-compute models addressed by virtual paths.
Device ids are bus-derived (default [1]) so code that passes an index where an id is due fails here.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import os
import threading
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .. import axcl_codes as codes
from ..axcl_props import AxclrtDeviceProperties
from .api import GUARD, api
from .api_device import DeviceApi, SysApi
from .api_engine import EngineApi
from .api_memory import MemoryApi
from .faults import Counters, Faults
from .memory import DeviceMemory, Fail
from .models import ModelDesc, ModelFactory, null_layer, null_post, shuffled
from .ownership import acquire, default_namespace, release
from .timing import DEFAULT_PRESET, Geometry, Preset, SimClock, TimingModel, get_preset

log = logging.getLogger("ax_llm_provider.runtime.simcard")
PRESET_ENV, FAULTS_ENV = "AX_LLM_SIM_PRESET", "AX_LLM_SIM_FAULTS"
MIB = 1 << 20
_CONSTANTS = {k: getattr(codes, k) for k in dir(codes) if k.startswith(("AXCL_MEM", "AXCL_VNPU", "AXCL_MODEL_TYPE"))}
_DTYPES = {k: getattr(codes, k) for k in dir(codes) if k.startswith(("AXCL_DATA_TYPE", "AXCL_DATA_LAYOUT"))}


class SimRt(DeviceApi, MemoryApi, EngineApi):
    """`axcl.rt` of the simulated card."""

    def __init__(self, card: SimCard) -> None:
        self.card = card
        for name, value in _CONSTANTS.items():
            setattr(self, name, value)
        # pyaxcl keeps the data-type constants in axcl.rt.axcl_rt_engine_type, not in axcl.rt itself.
        self.axcl_rt_engine_type = SimpleNamespace(**_DTYPES)


class SimLibAxclRt:
    """ctypes-level stand-in for libaxcl_rt.so. axclrtRegisterDeviceStatusCallback is absent, as in V3.10.2."""

    def __init__(self, card: SimCard) -> None:
        self.card = card

    def axclrtGetDeviceProperties(self, device_id: int, properties: Any) -> int:  # noqa: N802 (C name)
        card = self.card
        card.counters.calls["axclrtGetDeviceProperties"] += 1
        target = getattr(properties, "_obj", properties)  # ctypes.byref(struct) or the struct
        if hasattr(target, "contents"):
            target = target.contents
        if not isinstance(target, AxclrtDeviceProperties):
            return codes.signed(codes.ERR_DEVICE_NULL_POINTER)
        if card.faults.offline:
            return codes.signed(card.faults.offline_code)
        if device_id not in card.device_ids:
            return codes.signed(codes.ERR_DEVICE_INVALID_ID)
        # the real call does SetDevice ... ResetDevice itself: refused while another process owns the card
        borrowed = device_id not in card.owned
        if borrowed and not card.take_ownership(device_id):
            return codes.signed(codes.ERR_DEVICE_PORT_ALLOCATE)
        if borrowed:
            card.give_up_ownership(device_id)
        ctypes.memset(ctypes.addressof(target), 0, ctypes.sizeof(target))
        target.swVersion = b"V3.10.2_sim"
        target.uid = 0x650_0000_0000 + device_id
        target.pciBusID, target.pciDeviceID = device_id, 0
        target.temperature = card.temperature_mc()
        target.totalMemSize, target.freeMemSize = 945 * 1024, 796 * 1024
        target.totalCmmSize = card.cmm_capacity() // 1024
        target.freeCmmSize = max(0, card.cmm_capacity() - card.cmm_used()) // 1024
        target.cpuLoading, target.npuLoading = 100, int(card.npu_loading_percent * 100)
        card.clock.charge("properties", card.timing.properties_ms)
        return 0

    def axclrtRebootDevice(self, device_id: int) -> int:  # noqa: N802 (C name)
        self.card.counters.calls["axclrtRebootDevice"] += 1
        if device_id not in self.card.device_ids:
            return codes.signed(codes.ERR_DEVICE_INVALID_ID)
        self.card.reboot()
        return 0


class SimCard:
    AXCL_SUCC = 0

    def __init__(self, preset: str | Preset | None = DEFAULT_PRESET, *, timing: TimingModel | None = None,
                 device_ids: tuple[int, ...] = (1,), cmm_total_bytes: int = 7040 * MIB, sleep: bool = False,
                 dirty_memory: bool = True, shuffle_io_seed: int | None = None, ort_threads: int = 1,
                 corrupt_aliased_outputs: bool = False, namespace: Path | None = None,
                 timing_model: str = "strict") -> None:
        """dirty_memory: fresh device memory holds 0xFF bytes (bf16 NaN), as stale CMM may; False zeroes it.
        corrupt_aliased_outputs: an execute whose output range overlaps one of its input ranges writes NaN
        there (what the NPU does with aliased buffers is undocumented: this makes the hazard visible).
        namespace: where the one-process-per-card lock lives (ownership.default_namespace()).
        timing_model: "strict" or "legacy" (see timing), applied to the preset's or the given timing.
        """
        self.card = self
        self.preset = get_preset(preset) if isinstance(preset, str) else preset
        base = timing or (self.preset.timing if self.preset else get_preset(DEFAULT_PRESET).timing)
        self.timing = base.named(timing_model)
        self.device_ids = tuple(device_ids)
        self.cmm_total_bytes = cmm_total_bytes
        self.shuffle_io_seed = shuffle_io_seed
        self.ort_threads = ort_threads
        self.clock = SimClock(sleep)
        self.counters = Counters()
        self.faults = Faults()
        self.memory = DeviceMemory(dirty_memory)
        self.corrupt_aliased_outputs = corrupt_aliased_outputs
        self.namespace = namespace or default_namespace()
        self.owned: set[int] = set()
        weakref.finalize(self, _release_all, self.namespace, self.owned)  # a dropped card lets go of the device
        self.model_files: dict[str, ModelFactory] = {}
        self.npu_loading_percent = 0.0
        self._handles = itertools.count(0x1000)
        self._reset_state()
        for name, value in _CONSTANTS.items():
            if name.startswith(("AXCL_MEM",)):
                setattr(self, name, value)
        self.rt = SimRt(self)
        self.sys = SysApi(self)
        self.lib_rt = SimLibAxclRt(self)

    def _reset_state(self) -> None:
        self.inited = False
        self.engine_vnpu: int | None = None
        self.models: dict[int, ModelDesc] = {}
        self.engine_contexts: dict[int, int] = {}
        self.io_infos: dict[int, int] = {}
        self.ios: dict[int, Any] = {}
        self.contexts: dict[int, int] = {}
        self.default_contexts: dict[int, int] = {}
        self.streams: set[int] = set()
        self.local = threading.local()
        self.memory.clear()

    # -- top-level axcl.* ------------------------------------------------------------------------

    @api(GUARD)
    def init(self, config: str | None) -> int:
        self.inited = True
        return 0

    @api(GUARD)
    def finalize(self) -> int:
        self._reset_state()  # the process's device state goes away with it
        _release_all(self.namespace, self.owned)
        return 0

    @api(GUARD)
    def set_log_level(self, level: int) -> int:
        return 0

    def app_log(self, level: int, func: str, file: str, line: int, message: str) -> None:
        log.log(logging.DEBUG, "app_log %s:%s %s: %s", file, line, func, message)

    # -- state used by the API mixins ------------------------------------------------------------

    def new_handle(self, kind: str) -> int:
        return next(self._handles)

    def take_ownership(self, device_id: int) -> bool:
        """Hold `device_id` for this process (see ownership); False if another process holds it."""
        if device_id in self.owned:
            return True
        if not acquire(self.namespace, device_id):
            return False
        self.owned.add(device_id)
        return True

    def give_up_ownership(self, device_id: int) -> None:
        if device_id in self.owned:
            self.owned.discard(device_id)
            release(self.namespace, device_id)

    def require_init(self) -> None:
        if not self.inited:
            raise Fail(codes.ERR_DEVICE_NOT_ACTIVE, "axcl.init() was not called")

    def current_context(self) -> int:
        ctx = getattr(self.local, "context", None)
        if ctx is None or ctx not in self.contexts:
            raise Fail(codes.ERR_DEVICE_NO_ACTIVE_DEVICE, "no context on this thread: set_device/set_current_context")
        return ctx

    def cmm_capacity(self) -> int:
        limit = self.faults.cmm_limit_bytes
        return self.cmm_total_bytes if limit is None else min(limit, self.cmm_total_bytes)

    def cmm_used(self) -> int:
        return self.memory.used + sum(m.cmm_bytes for m in self.models.values())

    def reserve_cmm(self, nbytes: int, code: int) -> None:
        if self.cmm_used() + nbytes > self.cmm_capacity():
            raise Fail(code, f"CMM exhausted: {nbytes} bytes wanted, {self.cmm_capacity() - self.cmm_used()} left")

    def prepare(self, desc: ModelDesc) -> ModelDesc:
        if self.shuffle_io_seed is None:
            return desc
        return shuffled(desc, self.shuffle_io_seed + len(self.models))

    def temperature_mc(self) -> int:
        ramp = self.faults.temperature_mc
        return ramp(self.counters) if ramp else 41000

    def inject_execute_faults(self) -> None:
        faults = self.faults
        hang = faults.hang
        if hang is not None:
            hang.seen += 1
            if hang.seen > hang.after and (hang.times < 0 or hang.fired < hang.times):
                hang.fired += 1
                hang.entered.set()
                hang.released.wait(hang.timeout_s)
                raise Fail(codes.ERR_ENGINE_EXECUTE_FAIL, "injected hang ended")
        if faults.execute is not None and faults.execute.trigger():
            raise Fail(faults.execute.code, "injected execute fault")

    def charge_execute(self, desc: ModelDesc, group: int) -> None:
        t = self.timing
        if desc.kind == "layer":
            decode = desc.group_tokens[group] == 1
            self.clock.charge("decode" if decode else "prefill", t.decode_layer_ms if decode else t.prefill_layer_ms)
        elif desc.kind == "post":
            self.clock.charge("post", t.post_ms)
        else:
            self.clock.charge("execute", t.other_execute_ms)

    # -- helpers for tests and benchmarks ----------------------------------------------------------

    def register_model(self, path: str, factory: ModelFactory) -> str:
        """Make `engine_load_from_file(path)` load the model `factory()` describes (no file needed)."""
        self.model_files[path] = factory
        return path

    def add_null_stack(self, geometry: Geometry | None = None, prefix: str = "sim") -> tuple[list[str], str]:
        """Register a null-compute layer stack of `geometry` (default: the preset's); return its paths."""
        g = geometry or (self.preset.geometry if self.preset else get_preset(DEFAULT_PRESET).geometry)
        layers = [self.register_model(f"sim://{prefix}/{prefix}_p{g.chunk}_l{i}_together.axmodel",
                                      lambda: null_layer(g)) for i in range(g.layers)]
        return layers, self.register_model(f"sim://{prefix}/{prefix}_post.axmodel", lambda: null_post(g))

    def reboot(self) -> None:
        """What a firmware reboot does: everything on the card is gone, the card answers again."""
        self.faults.come_online()
        inited = self.inited
        self._reset_state()
        self.inited = inited


def card_from_env() -> SimCard:
    """The simulated card a process gets when none is handed in: preset $AX_LLM_SIM_PRESET, faults planned
    from $AX_LLM_SIM_FAULTS (faults.py)."""
    card = SimCard(os.environ.get(PRESET_ENV, DEFAULT_PRESET))
    plan = os.environ.get(FAULTS_ENV, "").strip()
    if plan:
        card.faults.plan(plan)
        log.warning("simulated card with the fault plan %s=%s", FAULTS_ENV, plan)
    return card


def _release_all(namespace: Path, owned: set[int]) -> None:
    for device_id in list(owned):
        release(namespace, device_id)
    owned.clear()
