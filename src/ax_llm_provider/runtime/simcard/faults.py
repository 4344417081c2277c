"""Counters and fault injection of the simulated card.

Faults are scheduled by call count so tests are deterministic: `fail_execute(after=5)` makes the sixth
engine_execute of the card fail. Every fault returns a code the V3.10.2 headers declare (or a native one
passed through): what the runtime really returns for a hang or an exhausted CMM is undocumented, so the
defaults are the generic EXECUTE_FAIL codes (docs/sdk-notes.md, "Error codes").

A process started with $AX_LLM_SIM_FAULTS gets its simulated card with that fault plan (`Faults.plan`), so a
service can be rehearsed end to end without a card: `execute:after=40:times=-1` (every execute fails from the
41st on: the recovery ladder climbs to fatal), `load:times=2`, `engine_init`; items are comma-separated.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import axcl_codes as codes

MEMCPY_KIND_NAMES = {0: "H2H", 1: "H2D", 2: "D2H", 3: "D2D", 4: "HPHY2D", 5: "D2HPHY"}


@dataclass
class Counters:
    """What the card saw. `calls` counts every API function call by name, including guarded ones."""

    calls: Counter[str] = field(default_factory=Counter)
    bytes_by_kind: Counter[str] = field(default_factory=Counter)
    copies_by_kind: Counter[str] = field(default_factory=Counter)
    executes: int = 0

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    @property
    def bus_bytes(self) -> int:
        """Bytes that crossed PCIe (H2D + D2H); D2D stays on the card."""
        return self.bytes_by_kind["H2D"] + self.bytes_by_kind["D2H"]

    def snapshot(self) -> dict[str, int]:
        return {"calls": self.total_calls, "bus_bytes": self.bus_bytes, "executes": self.executes,
                **{f"bytes_{k}": v for k, v in self.bytes_by_kind.items()}}


@dataclass
class ScheduledFault:
    """Fail the matching call with `code` once `after` such calls have succeeded, `times` times (-1: forever)."""

    code: int
    after: int = 0
    times: int = 1
    seen: int = 0
    fired: int = 0

    def trigger(self) -> bool:
        self.seen += 1
        if self.seen <= self.after or (self.times >= 0 and self.fired >= self.times):
            return False
        self.fired += 1
        return True


@dataclass
class HangFault:
    """engine_execute blocks until `release()` or `timeout_s`, then returns ENGINE_EXECUTE_FAIL."""

    after: int = 0
    timeout_s: float = 30.0
    times: int = 1
    seen: int = 0
    fired: int = 0
    released: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)


@dataclass
class Faults:
    offline: bool = False
    offline_code: int = codes.ERR_DEVICE_NO_CONNECT
    execute: ScheduledFault | None = None
    load: ScheduledFault | None = None
    engine_init: ScheduledFault | None = None
    hang: HangFault | None = None
    cmm_limit_bytes: int | None = None
    temperature_mc: Callable[[Counters], int] | None = None
    interrupt_in: str | None = None

    def interrupt_next(self, function: str) -> None:
        """The next call of `function` receives a KeyboardInterrupt while inside pyaxcl's wrapper (a Ctrl+C)."""
        self.interrupt_in = function

    def maybe_interrupt(self, function: str) -> None:
        if self.interrupt_in == function:
            self.interrupt_in = None
            raise KeyboardInterrupt(f"injected during {function}")

    def fail_execute(self, code: int = codes.ERR_ENGINE_EXECUTE_FAIL, after: int = 0, times: int = 1) -> None:
        self.execute = ScheduledFault(code, after, times)

    def fail_load(self, code: int = codes.ERR_ENGINE_EXECUTE_FAIL, after: int = 0, times: int = 1) -> None:
        self.load = ScheduledFault(code, after, times)

    def fail_engine_init(self, code: int = codes.ERR_ENGINE_EXECUTE_FAIL, after: int = 0, times: int = 1) -> None:
        self.engine_init = ScheduledFault(code, after, times)

    def plan(self, spec: str) -> None:
        """Schedule the faults `spec` names: `KIND[:after=N][:times=N][:code=N]`, comma-separated, KIND one of
        execute, load, engine_init (times -1: forever; code: an AXCL code, default EXECUTE_FAIL)."""
        for item in filter(None, (part.strip() for part in spec.split(","))):
            kind, *settings = item.split(":")
            schedule = {"execute": self.fail_execute, "load": self.fail_load,
                        "engine_init": self.fail_engine_init}.get(kind.strip())
            if schedule is None:
                raise ValueError(f"simulated-card fault {kind!r} in {spec!r}: use execute, load or engine_init")
            values: dict[str, int] = {}
            for setting in settings:
                key, _, value = setting.partition("=")
                if key.strip() not in ("after", "times", "code"):
                    raise ValueError(f"simulated-card fault setting {setting!r} in {spec!r}: use after=N, times=N "
                                     "or code=N")
                try:
                    values[key.strip()] = int(value, 0)
                except ValueError:
                    raise ValueError(f"simulated-card fault setting {setting!r} in {spec!r}: N must be an "
                                     "integer") from None
            schedule(**values)

    def hang_execute(self, after: int = 0, timeout_s: float = 30.0, times: int = 1) -> HangFault:
        self.hang = HangFault(after=after, timeout_s=timeout_s, times=times)
        return self.hang

    def release_hang(self) -> None:
        if self.hang is not None:
            self.hang.released.set()

    def go_offline(self, code: int = codes.ERR_DEVICE_NO_CONNECT) -> None:
        """Every device call now fails with `code` (NO_CONNECT: 'device is not connected', heartbeat dead)."""
        self.offline, self.offline_code = True, code

    def come_online(self) -> None:
        self.offline = False

    def limit_cmm(self, limit_bytes: int | None) -> None:
        """Pretend CMM holds only `limit_bytes`: malloc and model loads beyond it fail (EXECUTE_FAIL codes)."""
        self.cmm_limit_bytes = limit_bytes

    def temperature_ramp(self, start_c: float = 45.0, per_execute_c: float = 0.01, max_c: float = 105.0) -> None:
        """Junction temperature rising with every execute (milli-degrees C, as the runtime reports it)."""
        def ramp(counters: Counters) -> int:
            return int(min(max_c, start_c + per_execute_c * counters.executes) * 1000)
        self.temperature_mc = ramp
