"""The recovery ladder for device errors, and the execute watch that turns a hung NPU into a fast error.

Rungs, tried in order within one recovery, each only when the one before failed:

1. RETRY   the failed step (one prefill or decode call) again, a few times with a short backoff
           (tenacity). A step is idempotent: it rewrites the same KV rows, and the axcl backend resyncs
           its mask after a failure, so a retried step gives the same logits and the generation goes on
           as if nothing happened. Only for plain execute failures (DeviceError, DeviceBusyError):
           an offline card, a timeout (hung NPU) or a memory error will not heal by calling again.
           A load gets its own single retry (engine/ops/supervisor.py).
2. RESET   unload every model (engine unload, free, context reset, axclFinalize) and load them again,
           with the model whose load failed, if that is what started the recovery.
3. REBOOT  the card's firmware (`axclrtRebootDevice`), wait until it answers, then load again.
4. FATAL   `DeviceFatalError`: every request fails fast with it; a service exits non-zero on it and
           systemd restarts the process (deploy/ax-llm.service). The ladder's `on_fatal` callback is the
           one place that learns of it (degraded mode's switch to the CPU fallback hooks there:
           ops/degraded.py, engine/fallback.py).

What climbs: execute failures, and load failures on the device's side. A load the card refuses because
of the model itself (`runtime.errors.model_refused`: not enough CMM for it, a file the runtime rejects as
invalid) is the caller's to fix, ends its request with its typed error and leaves the ladder alone.

Where a recovery starts: an offline card goes straight to REBOOT (a dead heartbeat needs a firmware
reboot: docs/sdk-notes.md, "Operational facts"); anything else starts at RESET. It starts one rung higher
when the previous recovery was not followed by any successful request, and more than `max_recoveries`
within `window_s` is FATAL.
What happens to the request (engine/ops/guard.py): one that has handed nothing to its caller is run
again once after the recovery; one that has streamed chunks, or fails again, ends with its typed error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from ...runtime import axcl_codes as codes
from ...runtime.errors import DeviceBusyError, DeviceError, DeviceOfflineError, DeviceTimeoutError
from ...runtime.protocol import DecoderStack, KVSnapshot
from ..errors import EngineError
from ..worker.scheduler import RequestTimeoutError

log = logging.getLogger(__name__)


class DeviceFatalError(EngineError):
    """The card could not be recovered: exit the process (systemd restarts it) or reboot the host."""

    status_code = 503

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class HangCancelled(RequestTimeoutError):
    """The health monitor cut a request off because the NPU stopped answering (the consumer sees
    DeviceTimeoutError through `device_error()`; engine.consume.engine_error does the mapping)."""

    def device_error(self) -> DeviceTimeoutError:
        return DeviceTimeoutError(codes.signed(codes.ERR_ENGINE_TIMEOUT), "axcl.rt.engine_execute", str(self))


class Rung(IntEnum):
    RETRY = 1
    RESET = 2
    REBOOT = 3
    FATAL = 4


@dataclass(frozen=True)
class RecoveryPolicy:
    """Bounds of the ladder. Defaults suit the installation; tests shrink the waits."""

    step_attempts: int = 3  # rung 1: calls of a failed step in total
    step_wait_s: float = 0.05  # rung 1: first backoff, doubled per attempt
    step_wait_max_s: float = 0.5
    load_attempts: int = 2  # a load that fails on the device is tried once more before the ladder is climbed
    cmm_retry_wait_s: float = 3.0  # CMM is released late after a crash (docs/sdk-notes.md): wait, then load again
    reboot: bool = True  # allow rung 3 (firmware reboot)
    reboot_wait_s: float = 60.0  # how long the card may take to answer again after a reboot
    reboot_poll_s: float = 1.0
    max_recoveries: int = 10  # rung 2+ recoveries allowed within window_s before giving up (FATAL)
    window_s: float = 600.0

    def __post_init__(self) -> None:
        if self.step_attempts < 1 or self.load_attempts < 1 or self.max_recoveries < 1:
            raise ValueError(f"invalid recovery policy {self}")


def step_retryable(exc: BaseException) -> bool:
    """Rung 1 applies to plain execute failures only (see the module docstring)."""
    return type(exc) in (DeviceError, DeviceBusyError)


# ---- the execute watch --------------------------------------------------------------------------------


class DeviceActivity:
    """When the current engine_execute started (None when idle) and when the device last answered."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock  # the health monitor's clock: it compares busy_since with its own now
        self.busy_since: float | None = None
        self.last_answer = clock()
        self.executes = 0

    def answered(self) -> None:
        self.last_answer = self.clock()


class _WatchedRt:
    """`axcl.rt` with engine_execute timed; every other attribute is the real one."""

    def __init__(self, rt: Any, activity: DeviceActivity) -> None:
        self._rt = rt
        self._activity = activity

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rt, name)

    def engine_execute(self, model_id: int, context_id: int, group: int, io: int) -> int:
        activity = self._activity
        activity.busy_since = activity.clock()
        try:
            ret = self._rt.engine_execute(model_id, context_id, group, io)
        finally:
            activity.busy_since = None
        if ret == 0:
            activity.executes += 1
            activity.last_answer = activity.clock()
        return ret


class WatchedAxcl:
    """Stands for the `axcl` module (or a SimCard): resolved on first use by `resolve()` (which takes the
    device lock first), with `rt.engine_execute` watched by a DeviceActivity. One per engine, so the axcl
    backend's per-module runtime sharing (AxclRuntime.acquire) sees one stable object."""

    def __init__(self, resolve: Callable[[], Any], activity: DeviceActivity) -> None:
        self._resolve = resolve
        self._activity = activity
        self._module: Any = None
        self._rt: _WatchedRt | None = None
        self._lock = threading.Lock()

    @property
    def resolved(self) -> bool:
        return self._module is not None

    @property
    def module(self) -> Any:
        if self._module is None:
            with self._lock:
                if self._module is None:
                    module = self._resolve()
                    self._rt = _WatchedRt(module.rt, self._activity)
                    self._module = module
        return self._module

    @property
    def rt(self) -> Any:
        self.module  # noqa: B018 -- resolves
        return self._rt

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.module, name)


# ---- rung 1: a stack whose steps are retried ----------------------------------------------------------


class RetryingStack:
    """A DecoderStack whose prefill/decode/kv calls are retried on a transient device error (rung 1)."""

    def __init__(self, stack: DecoderStack, policy: RecoveryPolicy,
                 on_retry: Callable[[BaseException], None] | None = None) -> None:
        self.inner = stack
        self.spec = stack.spec
        self._policy = policy
        self._on_retry = on_retry

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _retry(self, first: DeviceError, fn: Callable[..., Any], *args: Any) -> Any:
        if not step_retryable(first) or self._policy.step_attempts < 2:
            raise first
        if self._on_retry is not None:
            self._on_retry(first)
        log.warning("device step failed (%s); retrying it", str(first))
        p = self._policy
        retrying = Retrying(stop=stop_after_attempt(p.step_attempts - 1), reraise=True,
                            wait=wait_exponential(multiplier=p.step_wait_s, min=p.step_wait_s, max=p.step_wait_max_s),
                            retry=retry_if_exception(step_retryable))
        return retrying(fn, *args)

    def prefill(self, embeds: np.ndarray, start: int, want_logits: bool = True) -> np.ndarray | None:
        try:
            return self.inner.prefill(embeds, start, want_logits)
        except DeviceError as exc:
            return self._retry(exc, self.inner.prefill, embeds, start, want_logits)

    def decode(self, embed: np.ndarray, pos: int) -> np.ndarray:
        try:
            return self.inner.decode(embed, pos)
        except DeviceError as exc:
            return self._retry(exc, self.inner.decode, embed, pos)

    def kv_save(self, length: int) -> KVSnapshot:
        try:
            return self.inner.kv_save(length)
        except DeviceError as exc:
            return self._retry(exc, self.inner.kv_save, length)

    def kv_restore(self, snapshot: KVSnapshot) -> None:
        try:
            self.inner.kv_restore(snapshot)
        except DeviceError as exc:
            self._retry(exc, self.inner.kv_restore, snapshot)

    def close(self) -> None:
        self.inner.close()


# ---- rungs 2-4 ----------------------------------------------------------------------------------------


class RecoveryLadder:
    """Runs rungs 2-4 on the device thread. `reset()` and `reboot()` are the engine's actions (supervisor);
    `on_fatal(error)` is called once, when the card is declared lost, whichever way that happens."""

    def __init__(self, policy: RecoveryPolicy, reset: Callable[[], None], reboot: Callable[[], None],
                 on_fatal: Callable[[DeviceFatalError], None] | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """clock: what `window_s` is measured on."""
        self.policy, self.clock = policy, clock
        self._reset, self._reboot, self._on_fatal = reset, reboot, on_fatal
        self._history: deque[float] = deque()
        self._unconfirmed: Rung | None = None  # the last recovery's rung, until a request succeeds
        self.counts = {r.name.lower(): 0 for r in Rung}
        self.fatal: DeviceFatalError | None = None
        self.active = False
        self.last_error: str | None = None
        self.last_recovery_at: float | None = None

    def note_retry(self, exc: BaseException) -> None:
        self.counts["retry"] += 1
        self.last_error = f"{type(exc).__name__}: {exc}"

    def note_success(self) -> None:
        self._unconfirmed = None

    def start_rung(self, exc: BaseException) -> Rung:
        rung = Rung.REBOOT if isinstance(exc, DeviceOfflineError) else Rung.RESET
        if self._unconfirmed is not None:
            rung = max(rung, Rung(min(self._unconfirmed + 1, Rung.FATAL)))
        if rung == Rung.REBOOT and not self.policy.reboot:
            rung = Rung.FATAL
        return rung

    def recover(self, exc: BaseException, where: str = "request") -> Rung:
        """Bring the device back after `exc`; returns the rung that worked, raises DeviceFatalError."""
        if self.fatal is not None:
            raise self.fatal
        self.last_error = f"{type(exc).__name__}: {exc}"
        now = self.clock()
        while self._history and now - self._history[0] > self.policy.window_s:
            self._history.popleft()
        if len(self._history) >= self.policy.max_recoveries:
            raise self._give_up(exc, f"{len(self._history)} recoveries within {self.policy.window_s:g} s")
        rung = self.start_rung(exc)
        self.active = True
        try:
            while rung < Rung.FATAL:
                log.warning("device error during %s (%s): recovering with %s", where, str(exc), rung.name.lower())
                try:
                    (self._reset if rung == Rung.RESET else self._reboot)()
                except DeviceError as again:
                    log.error("%s did not recover the device: %s", rung.name.lower(), str(again))
                    exc = again
                    self.last_error = f"{type(again).__name__}: {again}"
                    rung = Rung(rung + 1)
                    if rung == Rung.REBOOT and not self.policy.reboot:
                        rung = Rung.FATAL
                    continue
                self.counts[rung.name.lower()] += 1
                self._history.append(self.clock())
                self._unconfirmed = rung
                self.last_recovery_at = time.time()
                log.warning("device recovered by %s", rung.name.lower())
                return rung
            raise self._give_up(exc, "reset+reload and a firmware reboot did not help" if self.policy.reboot
                                else "reset+reload did not help (firmware reboot disabled)")
        finally:
            self.active = False

    def _give_up(self, exc: BaseException, why: str) -> DeviceFatalError:
        self.counts["fatal"] += 1
        self.fatal = DeviceFatalError(
            f"the NPU card could not be recovered ({why}; last error: {exc}). Exit the process so systemd "
            "restarts it; if this repeats, reboot the host (a full power cycle if the card stays dead)", exc)
        log.critical("%s", str(self.fatal))
        if self._on_fatal is not None:
            try:
                self._on_fatal(self.fatal)
            except Exception:  # noqa: BLE001 -- a failing listener must not hide the fatal error itself
                log.exception("the fatal-error callback failed")
        return self.fatal

    def revive(self) -> None:
        """The card works again (degraded mode's probe reloaded its models): forget the loss and the history."""
        self.fatal, self._unconfirmed = None, None
        self._history.clear()

    def give_up(self, exc: BaseException, why: str) -> DeviceFatalError:
        """Declare the device lost from outside the ladder (a hang that never ends)."""
        if self.fatal is None:
            self._give_up(exc, why)
        assert self.fatal is not None
        return self.fatal


__all__ = [
    "DeviceActivity", "DeviceFatalError", "HangCancelled", "RecoveryLadder", "RecoveryPolicy", "RetryingStack",
    "Rung", "WatchedAxcl", "step_retryable",
]
