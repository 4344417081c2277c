"""Degraded mode: while the card is lost, answer from a CPU fallback model; probe the card; move back to it.

Off unless a fallback model is configured (`Engine(fallback_model=...)` or AX_LLM_FALLBACK_MODEL). This module
holds the switching state (`DegradedMode`), the background prober (`CardProber`) and the probe itself
(`probe_card`); engine/fallback.py routes the requests. Nothing here is silent: each switch is logged at WARNING,
`engine.health()` says `degraded` and every answer from the fallback carries `ax.degraded`.

The switch to the fallback happens where the recovery ladder declares the card lost (RecoveryLadder.on_fatal).
The way back: every `probe_interval_s` the prober asks the card for its properties (no reboot, nothing loaded
while it does not answer) and, once it answers, reloads the models the requests asked for on the card and
generates one token with each (a card that loads but cannot execute is not back); only when that worked is the
ladder revived and are requests sent to the card again.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...process import sd_notify, watchdog_interval
from ...runtime import axcl_codes as codes
from ...runtime.errors import DeviceOfflineError
from ..errors import EngineError
from ..options import parse_options
from ..worker.cancel import CancelToken

if TYPE_CHECKING:
    from ..runner import ModelRunner
    from .supervisor import Supervisor

log = logging.getLogger(__name__)
FALLBACK_ENV = "AX_LLM_FALLBACK_MODEL"
PROBE_ENV = "AX_LLM_FALLBACK_PROBE_S"


@dataclass(frozen=True)
class FallbackConfig:
    """The CPU model that answers while the card is lost, and how often the card is tried again."""

    model: str
    probe_interval_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.model.strip():
            raise ValueError("the fallback model name is empty")
        if not (math.isfinite(self.probe_interval_s) and self.probe_interval_s > 0):
            raise ValueError(f"{PROBE_ENV} must be a positive number of seconds, got {self.probe_interval_s}")

    @classmethod
    def resolve(cls, model: str | FallbackConfig | None) -> FallbackConfig | None:
        """The Engine option: a config, a model name, "" (off) or None (AX_LLM_FALLBACK_MODEL; unset or empty: off)."""
        if isinstance(model, FallbackConfig):
            return model
        if model is None:
            model = os.environ.get(FALLBACK_ENV, "")
        if not model.strip():
            return None
        raw = os.environ.get(PROBE_ENV, "")
        try:
            return cls(model.strip(), float(raw)) if raw.strip() else cls(model.strip())
        except ValueError as exc:
            raise ValueError(f"{PROBE_ENV}={raw!r}: {exc}") from exc


class DegradedMode:
    """The switching state: on the card, or degraded (answering from the fallback). Thread-safe."""

    def __init__(self, config: FallbackConfig, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        """clock: the monotonic clock the probe schedule reads (tests pass a fake one); wall: for `since`."""
        self.config, self.clock, self.wall = config, clock, wall
        self._lock = threading.Lock()
        self.active = False
        self.reason: str | None = None
        self.since: float | None = None  # unix time of the switch to the fallback
        self.next_probe_at = math.inf
        self.probes = 0
        self.last_probe_error: str | None = None
        self.switches = {"to_fallback": 0, "to_card": 0}

    def enter(self, reason: str) -> bool:
        """Switch to the fallback; False when already there."""
        with self._lock:
            if self.active:
                return False
            self.active, self.reason, self.since = True, reason, self.wall()
            self.next_probe_at = self.clock() + self.config.probe_interval_s
            self.last_probe_error = None
            self.switches["to_fallback"] += 1
        log.warning("degraded mode: the NPU card is lost (%s); answering every model's requests from the CPU "
                    "fallback model %s and trying the card again every %g s", reason, self.config.model,
                    self.config.probe_interval_s)
        return True

    def leave(self) -> bool:
        """Switch back to the card; False when not degraded."""
        with self._lock:
            if not self.active:
                return False
            lasted = self.wall() - (self.since or self.wall())
            self.active, self.reason, self.since, self.next_probe_at = False, None, None, math.inf
            self.switches["to_card"] += 1
        log.warning("degraded mode ended: the NPU card answers again and its models are loaded; requests go to "
                    "the card again (%.0f s on the CPU fallback %s)", lasted, self.config.model)
        return True

    @property
    def losses(self) -> int:
        """How many times the card was lost so far: a request compares it before and after (engine/fallback.py)."""
        with self._lock:
            return self.switches["to_fallback"]

    def probe_due(self) -> bool:
        with self._lock:
            return self.active and self.clock() >= self.next_probe_at

    def probe_failed(self, error: str) -> None:
        with self._lock:
            self.last_probe_error = error
            self.next_probe_at = self.clock() + self.config.probe_interval_s
        log.info("the NPU card is still unavailable (%s): next try in %g s", error, self.config.probe_interval_s)

    def try_card(self, probe: Callable[[], None]) -> bool:
        """When a probe is due: run it; leave degraded mode when it worked. True when back on the card."""
        if not self.probe_due():
            return False
        with self._lock:
            self.probes += 1
        try:
            probe()
        except Exception as exc:  # noqa: BLE001 -- whatever stops the card (device, load, stopped worker): stay degraded
            self.probe_failed(f"{type(exc).__name__}: {exc}")
            return False
        return self.leave()

    def status(self) -> dict[str, Any]:
        """What `engine.health().degraded` shows (the mode is configured)."""
        with self._lock:
            return {"active": self.active, "fallback_model": self.config.model, "reason": self.reason,
                    "since": self.since, "probe_interval_s": self.config.probe_interval_s, "probes": self.probes,
                    "last_probe_error": self.last_probe_error, "switches": dict(self.switches)}

    def metadata(self) -> dict[str, Any]:
        """What an answer from the fallback carries under `ax.degraded`."""
        with self._lock:
            return {"fallback_model": self.config.model, "reason": self.reason, "since": self.since}


class CardProber:
    """While degraded: a thread that feeds systemd's watchdog while the fallback serves (the health monitor stops
    feeding it once the card is lost) and starts a probe when one is due. The probe runs on a thread of its own,
    so a long reload on the card (minutes for a large model) does not starve the watchdog."""

    def __init__(self, mode: DegradedMode, probe: Callable[[], None], serving: Callable[[], bool], *,
                 poll_s: float | None = None, on_back: Callable[[], None] | None = None) -> None:
        """probe: raises while the card is unavailable, reloads the card's models when it answers;
        serving: whether the fallback can answer (its worker runs); on_back: after the switch back to the card."""
        self.mode, self.probe, self.serving, self.on_back = mode, probe, serving, on_back
        self.watchdog_s = watchdog_interval()
        limits = [mode.config.probe_interval_s, 1.0] + ([self.watchdog_s / 3] if self.watchdog_s else [])
        self.poll_s = poll_s if poll_s is not None else min(limits)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._probing: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last_ping = -math.inf

    def start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="ax-llm-degraded", daemon=True)
            self._thread.start()

    def tick(self) -> bool:
        """One round on the caller's thread (tests): the watchdog, then the probe when due. False once back on
        the card (or no longer degraded)."""
        self.feed_watchdog()
        return self.probe_once()

    def feed_watchdog(self) -> None:
        now = self.mode.clock()
        if self.watchdog_s and now - self._last_ping >= self.watchdog_s / 3 and self.serving():
            sd_notify("WATCHDOG=1")
            self._last_ping = now

    def probe_once(self) -> bool:
        if self.mode.try_card(self.probe):
            if self.on_back is not None:
                self.on_back()
            return False
        return self.mode.active

    def _run(self) -> None:
        while not self._stop.is_set() and self.mode.active:
            self.feed_watchdog()
            probing = self._probing
            if self.mode.probe_due() and (probing is None or not probing.is_alive()):
                self._probing = threading.Thread(target=self.probe_once, name="ax-llm-card-probe", daemon=True)
                self._probing.start()
            self._stop.wait(self.poll_s)

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        for thread in (self._thread, self._probing):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout)


def run_one_token(runner: ModelRunner) -> None:
    """One greedy token after a short prompt: a prefill and a decode on the card."""
    opts, _ = parse_options({"num_predict": 1, "temperature": 0})
    for _ in runner.run(runner.model.tokenizer.encode("ping"), opts, CancelToken(), window=runner.capacity):
        pass


def probe_card(supervisor: Supervisor, names: list[str]) -> None:
    """Raise while the card is unavailable; once it answers, reload `names` on it and revive the ladder."""
    if not supervisor.worker.alive:
        raise EngineError("the device thread has stopped (an execute that never returned): the card can only be "
                          "used again after a restart of the service")
    card = supervisor.card
    if card.card_backend is not None and card.device_id is not None:  # it was opened once: ask it first
        with card.mutex:
            reading = card.read()
        if not reading.online:
            raise DeviceOfflineError(codes.signed(codes.ERR_DEVICE_NO_CONNECT), "axclrtGetDeviceProperties",
                                     "the card still does not answer its property read")
    if not names:
        raise LookupError("no request has named a model to load on the card yet")

    def reload_and_step() -> None:
        try:
            for name in names:
                entry, _ = supervisor.slots.ensure_loaded(name)
                run_one_token(entry.runner)  # a card that loads but cannot execute is not back
        except BaseException:
            with card.mutex:  # the next probe starts from a clean card
                supervisor.slots.unload_all()
            raise

    supervisor.worker.call(reload_and_step, timeout=None)
    supervisor.ladder.revive()
    supervisor.monitor.device_answered()


__all__ = ["FALLBACK_ENV", "PROBE_ENV", "CardProber", "DegradedMode", "FallbackConfig", "probe_card"]
