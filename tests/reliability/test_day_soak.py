"""A day of the installation on the simulated card in minutes (issue 15): accelerated time, not sleeping.

The workload is the installation's (deploy/installation_app.py, its OPTIONS): a visitor conversation
(20-50 turns) and a screen conversation (5-10 turns), the whole history resent every turn, a turn every
30-60 s, some streamed. Into that day come: quiet spells longer than keep_alive (the model is unloaded,
the next visitor reloads it), fan stalls (the card heats past the pause threshold and cools again),
a fault every few hundred requests (execute errors, a hung execute, CMM exhaustion at a reload) and card
losses (the card drops off the bus, idle or mid-request, and answers again tens of seconds later).

The engine reads simulated time through `Engine(clock=...)` (tests/reliability/simtime.py): the gaps
between visitors are jumps, so keep_alive, the health monitor, the thermal model, the recovery ladder's
window and the reboot wait all see a day pass. keep_alive is 10 minutes here, not the installation's -1,
so that expiry and reload happen at all.

Pass: every request is accounted for (answered, or the documented typed error of the fault or thermal
hold it met; none lost, none hung, nothing else), every fault and every card loss is followed by an
answered request, the ladder never gave up, RSS after warm-up grows less than 5 % as the host sees it and
less than REFERENCED_KB_PER_REQUEST a request with the model unloaded and malloc_trim's help (reloads
fragment the heap and the prefix cache fills up to its bound; a leak would stay), nothing leaks.
AX_LLM_RELIABILITY_FULL=1 runs 24 simulated hours; the default runs 2.
"""

from __future__ import annotations

import ctypes
import gc
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.engine.ops.health import DeviceOverheatedError, HealthConfig
from ax_llm_provider.engine.ops.recovery import RecoveryPolicy
from ax_llm_provider.model.store import ModelStore
from ax_llm_provider.runtime import axcl_codes as codes
from ax_llm_provider.runtime.errors import (
    DeviceBusyError,
    DeviceError,
    DeviceMemoryError,
    DeviceOfflineError,
    DeviceTimeoutError,
)
from ax_llm_provider.runtime.simcard.memory import Fail

from .conftest import FULL, WORDS, assert_no_leaks, report, resources
from .simtime import LosableCard, SimTime, Thermal
from .test_soak import rss_bytes

HOUR = 3600.0
HOURS = 24 if FULL else 2
FAULT_EVERY = (120, 280) if FULL else (18, 26)
KEEP_ALIVE = "10m"
# Referenced memory (model unloaded, after malloc_trim) may grow this much per request: a leak of a request's
# prompt, reply or KV rows is far larger. The 24 h run measured about 5.5 KB a request (9 MB a day), whose
# cause is not found yet: the bound catches anything worse, the report shows the figure. Checked in the full run.
REFERENCED_KB_PER_REQUEST = 16
HEALTH = HealthConfig(period_s=0.05, execute_timeout_s=3.0, thermal_wait_s=0.3, temp_warn_c=75, temp_pause_c=85,
                      temp_resume_c=75, cmm_floor_mb=0)
# The ladder's bounds as shipped (10 recoveries in 600 s, a 60 s reboot wait, polled each second): in
# simulated time they mean what they mean on the device. Only the backoffs that sleep for real are short.
POLICY = RecoveryPolicy(step_wait_s=0.001, step_wait_max_s=0.005, cmm_retry_wait_s=0.02)
DOCUMENTED: dict[str, tuple[type[BaseException], ...]] = {
    "execute_error": (DeviceError, DeviceBusyError), "hang": (DeviceTimeoutError,),
    "cmm": (DeviceMemoryError,), "loss_in_request": (DeviceOfflineError,), "loss_idle": (), "none": (),
}
FAULTS = ("execute_error", "hang", "cmm", "loss_in_request", "loss_idle")


@dataclass
class Day:
    """What happened: outcomes by class, faults, thermal holds, keep_alive expiries, RSS samples."""

    outcomes: Counter[str] = field(default_factory=Counter)
    by_fault: dict[str, Counter[str]] = field(default_factory=dict)
    unaccounted: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # each fault's request and what it met
    after_fault: Counter[str] = field(default_factory=Counter)  # the outcome of the request right after a fault
    recovered: Counter[str] = field(default_factory=Counter)  # faults followed by an answered request
    not_recovered: list[str] = field(default_factory=list)  # faults with no answered request before the next
    faults: Counter[str] = field(default_factory=Counter)
    holds: int = 0
    expiries: int = 0
    loads_seen: int = 0
    idle_recoveries: int = 0
    rss_mb: list[float] = field(default_factory=list)  # hourly from the end of warm-up, as the host sees it
    trimmed_mb: list[float] = field(default_factory=list)  # at warm-up and at the end, after malloc_trim


class Installation:
    """The installation's client: two conversations, resent whole, the app's options."""

    def __init__(self, engine: Engine, model: str, options: dict[str, Any], rng: random.Random) -> None:
        self.engine, self.model, self.options, self.rng = engine, model, options, rng
        self.visitor: list[dict[str, str]] = []
        self.screen: list[dict[str, str]] = []
        self.visitor_turns = rng.randint(20, 50)
        self.screen_turns = rng.randint(5, 10)

    def text(self) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(3, 14)))

    def turn(self) -> dict[str, Any]:
        """One turn; returns the final chunk (raises what the engine raised)."""
        screen = self.rng.random() < 0.2
        convo = self.screen if screen else self.visitor
        limit = self.screen_turns if screen else self.visitor_turns
        if len(convo) >= 2 * limit:  # a new visitor / a new screen text
            convo.clear()
        messages = [{"role": "system", "content": "You are the voice of an art installation."}, *convo,
                    {"role": "user", "content": self.text()}]
        body = {"model": self.model, "messages": messages, "options": self.options, "keep_alive": KEEP_ALIVE,
                "stream": self.rng.random() < 0.2}
        chunks = list(self.engine.chat(body))
        final = chunks[-1]
        if not final.get("done"):
            raise AssertionError(f"a reply ended without its final chunk: {final}")
        convo += [messages[-1], {"role": "assistant", "content": "".join(c["message"]["content"] for c in chunks)}]
        return final


def wait_until(predicate: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(predicate())


class Driver:
    """Runs the day: turns, gaps, quiet spells, faults (see the module docstring)."""

    def __init__(self, engine: Engine, card: LosableCard, sim: SimTime, thermal: Thermal, client: Installation,
                 rng: random.Random, steady_cmm: int) -> None:
        self.engine, self.card, self.sim, self.thermal, self.client = engine, card, sim, thermal, client
        self.rng, self.steady_cmm = rng, steady_cmm
        self.day = Day()
        self.next_fault = rng.randint(*FAULT_EVERY)
        self.fault_index = 0
        self.requests = 0
        self.was_paused = False
        self.pending: str | None = None  # the last fault, until a request is answered after it

    def loaded(self) -> bool:
        return bool(self.engine.slots.names())

    def gap(self, seconds: float) -> None:
        loaded = self.loaded()
        for thread in self.sim.advance(seconds):
            thread.join(30)
        if loaded and not self.loaded():
            self.day.expiries += 1

    def arm(self, fault: str) -> None:
        card, rng = self.card, self.rng
        self.day.faults[fault] += 1
        if fault == "execute_error":
            code = rng.choice([codes.ERR_ENGINE_EXECUTE_FAIL, codes.ERR_ENGINE_UNEXPECT_RESPONSE])
            card.faults.fail_execute(code=code, after=rng.randrange(0, 60), times=rng.choice([1, 2, 3, 5, 8]))
        elif fault == "hang":
            card.faults.hang_execute(after=rng.randrange(0, 40), timeout_s=HEALTH.execute_timeout_s + 1.0)
        elif fault == "cmm":  # at the next reload, CMM is held by something else (a reboot frees it)
            self.engine.unload(self.client.model)
            card.faults.limit_cmm(self.steady_cmm // 2)
        elif fault == "loss_in_request":
            target = card.counters.executes + rng.randrange(0, 60)
            original = card.inject_execute_faults

            def inject() -> None:
                if card.counters.executes >= target and card.back_at is None and card.losses == lost:
                    card.lose(rng.uniform(10, 45))
                    raise Fail(codes.ERR_DEVICE_NO_CONNECT, "injected: the card dropped off the bus")
                original()

            lost = card.losses
            card.inject_execute_faults = inject  # type: ignore[method-assign]
        elif fault == "loss_idle":  # nobody is asking: the health monitor finds it and the ladder reboots
            reboots = self.engine.health().recoveries["reboot"]
            if not self.loaded():
                self.client.turn()  # a model open to watch (an answered turn, counted below)
                self.count("none", "answered")
            card.lose(rng.uniform(10, 45))
            if wait_until(lambda: self.engine.health().recoveries["reboot"] > reboots, 30):
                self.day.idle_recoveries += 1

    def disarm(self, fault: str) -> None:
        card = self.card
        card.faults.execute = None
        card.faults.hang = None
        card.faults.limit_cmm(None)
        if fault == "loss_in_request":
            del card.inject_execute_faults

    def count(self, fault: str, outcome: str) -> None:
        self.requests += 1
        self.day.outcomes[outcome] += 1
        self.day.by_fault.setdefault(fault, Counter())[outcome] += 1

    def one(self, fault: str) -> str:
        paused = self.engine.health().paused
        if paused and not self.was_paused:
            self.day.holds += 1
        self.was_paused = paused
        try:
            final = self.client.turn()
            outcome = "answered"
            self.day.loads_seen += final.get("load_duration", 0) > 0
            if self.pending is not None:
                self.day.recovered[self.pending] += 1
                self.pending = None
        except DeviceOverheatedError as exc:
            outcome = type(exc).__name__
            now_c = self.thermal(self.card.counters) / 1000  # the card's temperature now, not the last read
            if now_c <= HEALTH.temp_resume_c - 1:
                self.day.unaccounted.append(f"{fault}: overheated although the card is at {now_c:.1f} °C: {exc}")
        except Exception as exc:  # noqa: BLE001 -- classified: anything but the fault's documented error counts
            outcome = type(exc).__name__
            if type(exc) not in DOCUMENTED[fault]:
                self.day.unaccounted.append(f"{fault}: {type(exc).__name__}: {exc}")
            if fault != "none":
                self.day.events.append(f"{fault}: {type(exc).__name__}: {str(exc)[:160]} {exc.__notes__}"
                                       if hasattr(exc, "__notes__") else f"{fault}: {type(exc).__name__}")
        self.count(fault, outcome)
        return outcome

    def run(self, seconds: float, warmup_s: float) -> None:
        quiet = [h * HOUR + self.rng.uniform(0, HOUR) for h in range(0, int(seconds // HOUR), 2)]
        next_sample = warmup_s
        while self.sim.elapsed() < seconds:
            if self.sim.elapsed() >= next_sample:
                self.sample(trim=next_sample == warmup_s)
                next_sample += HOUR
            fault = "none"
            if self.requests >= self.next_fault:
                fault = FAULTS[self.fault_index % len(FAULTS)]
                self.fault_index += 1
                self.next_fault = self.requests + self.rng.randint(*FAULT_EVERY)
                if self.pending is not None:
                    self.day.not_recovered.append(self.pending)
                self.pending = fault
                self.arm(fault)
            try:
                self.one(fault)
            finally:
                if fault != "none":
                    self.disarm(fault)
            if fault != "none":
                self.day.after_fault[self.one("none")] += 1  # the request after a fault: answered
            if quiet and self.sim.elapsed() >= quiet[0]:
                quiet.pop(0)
                self.gap(self.rng.uniform(12, 25) * 60)  # nobody there: longer than keep_alive
            else:
                self.gap(self.rng.uniform(30, 60))
        self.sample(trim=True)

    def sample(self, trim: bool) -> None:
        """RSS as the host sees it; with trim, also what is left with the model unloaded (as a keep_alive expiry
        does: no prefix cache, no sessions) once the allocator returned its free pages: what the process still
        references for itself, where a leak shows and heap fragmentation and a fuller cache do not."""
        gc.collect()
        self.day.rss_mb.append(round(rss_bytes() / 2**20, 1))
        if trim:
            self.engine.unload(self.client.model)
            gc.collect()
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            self.day.trimmed_mb.append(round(rss_bytes() / 2**20, 1))


def test_day_soak(reliability_twin: str, tmp_path: Path, warm: None, app: Any) -> None:
    rng = random.Random("day-soak")
    seconds = HOURS * HOUR
    sim = SimTime()
    stalls = [(h * HOUR + 1800, h * HOUR + 1800 + rng.uniform(8, 15) * 60) for h in range(1, HOURS, 4)]
    thermal = Thermal(sim, stalls=stalls)
    card = LosableCard(sim)
    card.faults.temperature_mc = thermal
    before = resources()
    engine = Engine(ModelStore(tmp_path), backend="simulated", card=card, auto_pull=False, keep_alive=KEEP_ALIVE,
                    request_timeout=60, health=HEALTH, recovery=POLICY, clock=sim.clock())
    client = Installation(engine, reliability_twin, dict(app.OPTIONS), rng)
    started = time.monotonic()
    try:
        client.turn()  # loaded: the steady CMM use is what a CMM fault halves
        driver = Driver(engine, card, sim, thermal, client, rng, steady_cmm=card.cmm_used())
        driver.run(seconds, warmup_s=HOUR)
        health = engine.health()
    finally:
        engine.close(timeout=30)
    wall = time.monotonic() - started
    counts = assert_no_leaks(before)
    day = driver.day
    rss_start, rss_end = day.rss_mb[0], day.rss_mb[-1]
    growth = (rss_end - rss_start) / rss_start * 100
    trimmed_growth = (day.trimmed_mb[-1] - day.trimmed_mb[0]) / day.trimmed_mb[0] * 100
    per_request_kb = (day.trimmed_mb[-1] - day.trimmed_mb[0]) * 1024 / driver.requests
    report("day_soak", simulated_h=round(sim.elapsed() / HOUR, 1), wall_s=round(wall, 1), requests=driver.requests,
           outcomes=dict(day.outcomes), unaccounted=len(day.unaccounted), after_fault=dict(day.after_fault),
           recovered_after=dict(day.recovered),
           faults=dict(day.faults), card_losses=card.losses, idle_loss_recoveries=day.idle_recoveries,
           recoveries=health.recoveries, keep_alive_expiries=day.expiries, loads_seen_by_requests=day.loads_seen,
           thermal_stalls=len(stalls), thermal_holds=day.holds, max_temp_c=round(thermal.max_c, 1),
           rss_warm_mb=rss_start, rss_end_mb=rss_end, rss_growth_pct=round(growth, 2), rss_hourly_mb=day.rss_mb,
           rss_trimmed_mb=day.trimmed_mb, rss_trimmed_growth_pct=round(trimmed_growth, 2),
           referenced_growth_kb_per_request=round(per_request_kb, 1),
           health=health.state, fault_events=day.events, **counts)
    assert not day.unaccounted, f"{len(day.unaccounted)} unaccounted, first: {day.unaccounted[:3]}"
    assert sum(day.outcomes.values()) == driver.requests
    # the ladder brought the card back every time: each fault was followed by an answered request
    assert not day.not_recovered and driver.pending is None, (day.not_recovered, driver.pending)
    assert day.recovered == day.faults, (day.recovered, day.faults)
    assert card.losses >= max(1, day.faults["loss_idle"])
    assert day.idle_recoveries == day.faults["loss_idle"]
    assert health.recoveries["fatal"] == 0 and health.ok, health.to_dict()
    assert day.expiries >= 1 and day.holds >= 1
    assert growth < 5.0, f"RSS grew {growth:.1f} % after warm-up: {day.rss_mb}"
    if FULL:  # over two hours the allocator's warm-up still dominates (8-17 KB a request measured): reported only
        assert per_request_kb < REFERENCED_KB_PER_REQUEST, f"referenced memory grew {per_request_kb:.1f} KB a request"
    assert card.memory.used == 0 and not card.models and not card.inited
