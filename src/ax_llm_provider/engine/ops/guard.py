"""The request guard: what wraps every chat/generate job on the device thread.

In order: the fatal check (a lost card refuses work at once), the thermal gate (a hot card holds new
requests), the recovery ladder with one transparent re-run when nothing has reached the caller yet, and
the request id plus one structured "request done" log line (observability.py) per request.

The re-run: a device error (at execute, or a load failure on the device's side) is handed to the recovery
ladder; once the card is back, a request that has handed no chunk to its caller runs again, once. A
non-streaming request hands nothing over before it is done (`whole_reply`), so it is re-run wherever it
failed; a stream is re-run only before its first chunk, since the caller already has the text before the
fault and a re-run would send it twice. A second fault, a fatal card and the caller's own errors (a bad
model, a refused load, invalid options) end the request with their typed error.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Callable, Iterator

from ... import process
from ...observability import metrics, request_fields, set_request_id
from ...runtime.errors import DeviceError, model_refused
from ..responses import Chunk, ChunkT
from ..worker.scheduler import CancelToken, SchedulerError
from .health import HealthMonitor
from .recovery import DeviceFatalError, HangCancelled, RecoveryLadder

log = logging.getLogger(__name__)

Job = Callable[[CancelToken], Iterator[ChunkT]]  # a chat or a generate job
_ids = itertools.count(1)


def new_request_id() -> str:
    return f"{uuid.uuid4().hex[:8]}-{next(_ids)}"


def mark_load_failure(exc: DeviceError) -> None:
    """A load that failed after its own retry: the guard climbs the ladder only when the device is at fault."""
    exc.ax_load_failure = True  # type: ignore[attr-defined]


def whole_reply(job: Job[ChunkT]) -> Job[ChunkT]:
    """A non-streaming request's job: its chunks are handed over together once the reply is complete, so a
    fault anywhere in it leaves the caller with nothing yet, and the guard may run it again."""

    def held(cancel: CancelToken) -> Iterator[ChunkT]:
        yield from list(job(cancel))

    return held


class RequestGuard:
    """Wraps jobs (see the module docstring); `current` is the running request, for the hang watch."""

    def __init__(self, ladder: RecoveryLadder, monitor: HealthMonitor, on_card: Callable[[], bool]) -> None:
        """on_card: whether a card backend is open (the done log then carries the card's temperature)."""
        self.ladder, self.monitor = ladder, monitor
        self._on_card = on_card
        self.current: tuple[CancelToken, str] | None = None

    def check_admission(self) -> None:
        fatal = self.ladder.fatal
        if fatal is not None:
            raise DeviceFatalError(str(fatal), fatal.cause)

    def guard(self, job: Job[ChunkT]) -> tuple[Job[ChunkT], str]:
        """Wrap a chat/generate job; returns it with its request id."""
        self.check_admission()
        request_id = new_request_id()
        submitted = self.monitor.clock()  # the thermal wait is measured on the monitor's clock

        def guarded(cancel: CancelToken) -> Iterator[ChunkT]:
            set_request_id(request_id)
            self.current = (cancel, request_id)
            try:
                yield from self._run(job, cancel, request_id, submitted)
            except GeneratorExit:  # the worker stopped the job: consumer gone, deadline, shutdown
                log.info("request ended: %s", cancel.reason or "stopped by the worker",
                         extra={"request_id": request_id, "error": "cancelled"})
                raise
            except Exception as exc:
                # strings only: a record holding the exception would keep its frames (and the model) alive
                cancelled = isinstance(exc, SchedulerError) and not isinstance(exc, HangCancelled)
                log.log(logging.INFO if cancelled else logging.WARNING, "request %s: %s: %s",
                        "ended" if cancelled else "failed", type(exc).__name__, str(exc),
                        extra={"request_id": request_id, "error": type(exc).__name__})
                metrics().request_failed("request", exc)
                raise
            finally:
                self.current = None
                set_request_id(None)

        return guarded, request_id

    def _run(self, job: Job[ChunkT], cancel: CancelToken, request_id: str,
             submitted: float) -> Iterator[ChunkT]:
        self.monitor.wait_until_cool(cancel, submitted)
        self.check_admission()
        started = self.monitor.clock()
        rerun = False
        while True:
            emitted = 0
            try:
                for chunk in job(cancel):
                    emitted += 1
                    if chunk.get("done"):
                        self._log_done(chunk, request_id, (started - submitted) * 1e3)
                    yield chunk
                self.ladder.note_success()
                self.monitor.device_answered()
                return
            except DeviceError as exc:
                at_load = getattr(exc, "ax_load_failure", False)
                if at_load and model_refused(exc):
                    raise  # the model's own trouble (it does not fit, the runtime rejects its files)
                with process.critical_section("recovering the card"):
                    rung = self.ladder.recover(exc, where="load" if at_load else "request")
                metrics().recovery(rung.name.lower())
                if emitted:
                    exc.add_note(f"the card was recovered ({rung.name.lower()}), but this request had already "
                                 f"streamed {emitted} chunk(s), so it was not re-run: send it again")
                    raise
                cancel.check()  # cut off meanwhile (a hang, its deadline): report that
                if rerun:
                    exc.add_note(f"the card was recovered ({rung.name.lower()}) after this request failed a "
                                 "second time; it is run again only once: send it again")
                    raise
                rerun = True
                log.warning("request %s: running it again after the recovery (nothing reached the caller yet)",
                            request_id)

    def _log_done(self, chunk: Chunk, request_id: str, queued_ms: float) -> None:
        endpoint = "chat" if "message" in chunk else "generate"
        fields = request_fields(chunk, endpoint, request_id, queued_ms)
        reading = self.monitor.reading if self._on_card() else None
        fields["device_temp_c"] = reading.temperature_c if reading else None
        fields["device_cmm_free_mb"] = reading.cmm_free_mb if reading else None
        log.info("request done: %s %s, %d prompt + %d generated tokens in %.0f ms", endpoint, fields["model"],
                 fields["prompt_eval_count"] or 0, fields["eval_count"] or 0, fields["total_ms"], extra=fields)
        metrics().request_done(fields)
