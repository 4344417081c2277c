"""Idle prefill (issue 17): evaluate the known start of the next chat prompt while the device is idle.

After a chat reply ends, the conversation, the reply and the next user turn's header are known
(engine/next_turn.py). A low-priority job on the device worker evaluates them into the prefix cache, so the
next request prefills only the visitor's words. It never delays real work: a newer real request closes the
pending job (a queued one is dropped unrun), and the job does nothing if anything is queued when it starts.
A job already on the device finishes its one prefill; the tokens it evaluates are the ones the next request
would evaluate anyway, and it leaves them in the cache for it. Outputs cannot change: the cache only
ever reuses KV rows of the exact tokens a prompt starts with.

Opt-in: Engine(idle_prefill=True) or AX_LLM_IDLE_PREFILL=1.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .next_turn import Render, known_next_prefix
from .runner import ModelRunner
from .slots import ModelSlots
from .worker.scheduler import CancelToken, DeviceWorker, SchedulerError
from .worker.streams import RequestStream

log = logging.getLogger(__name__)


def idle_prefill_from_env() -> bool:
    return os.environ.get("AX_LLM_IDLE_PREFILL", "0").strip().lower() in ("1", "true", "yes", "on")


class IdlePrefill:
    """At most one pending idle job; any real request supersedes it."""

    def __init__(self, worker: DeviceWorker, slots: ModelSlots) -> None:
        self.worker, self.slots = worker, slots
        self._lock = threading.Lock()
        self._pending: RequestStream[None] | None = None  # held: a dropped stream cancels its job
        self.evaluated = self.skipped = 0  # counters for tests and logs

    def schedule(self, name: str, runner: ModelRunner, render: Render, messages: Sequence[Mapping[str, Any]],
                 reply: Mapping[str, Any], window: int) -> None:
        """Queue the evaluation of the next prompt's known prefix (called on the device thread, after a reply)."""
        messages, reply = list(messages), dict(reply)

        def work(cancel: CancelToken) -> Iterator[None]:
            if cancel.cancelled or self.worker.queue_length or self._replaced(name, runner):
                self.skipped += 1
                return
            prefix = known_next_prefix(render, messages, reply)
            if not prefix or len(prefix) >= window:  # the next request would be refitted: nothing to guess
                self.skipped += 1
                return
            step = runner.evaluate_only(prefix)
            assert step.final is not None
            self.evaluated += 1
            log.debug("idle prefill: %d tokens known, %d evaluated", len(prefix),
                      len(prefix) - step.final.reused_tokens)
            yield from ()

        try:
            stream = self.worker.submit(work, stall_timeout=None, request_id="idle-prefill")
        except SchedulerError as exc:  # a full queue or a stopping worker: real work needs the device
            log.debug("idle prefill not queued: %s", exc)
            return
        with self._lock:
            old, self._pending = self._pending, stream
        if old is not None:
            old.close()

    def _replaced(self, name: str, runner: ModelRunner) -> bool:
        entry = self.slots.get(name)
        return entry is None or entry.runner is not runner  # unloaded or reloaded since the reply

    def yield_to_real_work(self) -> None:
        """A real request is about to be queued: drop the pending idle job (if it has not started)."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            pending.close()
