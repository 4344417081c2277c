"""The loaded models: LLM runners and embedding models, keep_alive timers, load and unload.

One `ModelSlots` per Engine. The Engine owns it and lends it to the device supervisor (engine/ops/) and
the embedder, so no module outside engine.py reaches into the Engine. Loads, unloads and every use of a
runner happen on the device worker's thread; `lock` only guards the readers on other threads (ps, show,
health), which see a consistent list of entries.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..model.embedding_model import assert_not_embedding_model
from ..model.store import ModelStore
from ..runtime.errors import DeviceError, model_refused
from .clock import SYSTEM_CLOCK, Cancellable, Clock
from .errors import EngineError
from .runner import ModelRunner
from .state import LoadedEntry
from .worker.scheduler import DeviceWorker, QueueFullError, RequestCancelled, RequestTimeoutError

if TYPE_CHECKING:
    from ..model.embedding_model import EmbeddingModel
    from ..model.loader import LoadedModel

log = logging.getLogger(__name__)
Loader = Callable[[Path, str], "LoadedModel"]
Checker = Callable[[Path], None]


@dataclass
class CachedEmbedder:
    model: EmbeddingModel
    expires_at: float | None = None  # unix time; None = kept until evicted or unloaded


class ModelSlots:
    """Loaded LLMs (at most `max_loaded`, the oldest unloaded first) and embedding models (see embedder.py)."""

    def __init__(self, store: ModelStore, worker: DeviceWorker, load: Loader, *, snapshot_bytes: int,
                 max_loaded: int, check: Checker | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        """load: opens a model directory on the device (the supervisor's load: lock, retries, progress);
        check: the load's file checks alone, run before a loaded model is evicted for a new one;
        clock: keep_alive's time and timers (engine/clock.py)."""
        self.store, self.worker, self._load, self._check = store, worker, load, check
        self.clock = clock
        self.snapshot_bytes, self.max_loaded = snapshot_bytes, max_loaded
        self.lock = threading.Lock()
        self._models: dict[str, LoadedEntry] = {}
        self._timers: dict[str, Cancellable] = {}
        self.embedders: dict[str, CachedEmbedder] = {}  # stored name -> entry, least recently used first
        self.closed = False  # set by Engine.close: expiring timers no longer queue work

    # ---- reading (any thread) ---------------------------------------------------------------------

    def get(self, name: str) -> LoadedEntry | None:
        with self.lock:
            return self._models.get(name)

    def entries(self) -> list[tuple[str, LoadedEntry]]:
        with self.lock:
            return list(self._models.items())

    def names(self) -> list[str]:
        with self.lock:
            return list(self._models)

    def __len__(self) -> int:
        return len(self._models)

    def __contains__(self, name: object) -> bool:
        return name in self._models

    # ---- loading and unloading (device thread) ----------------------------------------------------

    def ensure_loaded(self, name: str) -> tuple[LoadedEntry, int]:
        """The loaded entry for a stored name and the nanoseconds spent loading it now (0 if it was loaded)."""
        entry = self.get(name)
        if entry is not None:
            return entry, 0  # no file-system work per request once loaded
        stored = self.store.resolve(name)
        assert_not_embedding_model(stored.path, stored.name)
        if self._check is not None and len(self._models) >= self.max_loaded:
            self._check(stored.path)  # a broken model must not cost the resident one its place
        evicted: list[tuple[str, Path]] = []
        while len(self._models) >= self.max_loaded:
            oldest, entry = next(iter(self._models.items()))
            evicted.append((oldest, entry.path))
            self.unload(oldest)
        started = time.perf_counter_ns()
        try:
            model = self._load(stored.path, stored.name)
        except DeviceError as exc:
            if model_refused(exc):  # the card refused this model (too big, rejected file): the old one fits
                self._restore(evicted, failed=stored.name)
            raise  # otherwise the card's trouble: the recovery ladder decides what is loaded next
        except EngineError:
            raise  # fatal, overheated, busy: nothing is loaded until the card is back
        except Exception:
            self._restore(evicted, failed=stored.name)  # files that passed the checks but did not open
            raise
        entry = LoadedEntry(runner=ModelRunner(model, snapshot_bytes=self.snapshot_bytes), path=stored.path)
        with self.lock:
            self._models[stored.name] = entry
        return entry, time.perf_counter_ns() - started

    def _restore(self, evicted: list[tuple[str, Path]], failed: str) -> None:
        for name, path in evicted:
            log.warning("loading %s failed: loading %s again, which was unloaded to make room", failed, name)
            try:
                model = self._load(path, name)
            except Exception as exc:  # noqa: BLE001 - the failed request's own error is the one raised
                log.error("could not load %s again: %s", name, exc)
                continue
            with self.lock:
                self._models[name] = LoadedEntry(runner=ModelRunner(model, snapshot_bytes=self.snapshot_bytes),
                                                 path=path)

    def unload(self, name: str) -> bool:
        with self.lock:
            entry = self._models.pop(name, None)
        if entry is None:
            return False
        entry.runner.model.close()
        log.info("unloaded %s", name)
        return True

    def unload_all(self) -> list[str]:
        """Unload every LLM; returns their names (the recovery ladder reloads them)."""
        names = self.names()
        for name in names:
            self.unload(name)
        return names

    def unload_embedders(self, name: str | None = None) -> int:
        """Drop one (or every) loaded embedding model; returns how many."""
        names = [name] if name is not None else list(self.embedders)
        dropped = 0
        for n in names:
            entry = self.embedders.pop(n, None)
            if entry is not None:
                entry.model.close()
                log.info("unloaded embedding model %s", n)
                dropped += 1
        return dropped

    # ---- keep_alive ------------------------------------------------------------------------------

    def after_request(self, entry: LoadedEntry, keep_alive: float) -> None:
        """Ollama's keep_alive: 0 unloads now, inf never, otherwise a timer from now."""
        name = entry.runner.model.name
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        entry.expires_at = self.clock.wall() + keep_alive if math.isfinite(keep_alive) else None
        if keep_alive <= 0:
            self.unload(name)
        elif math.isfinite(keep_alive):
            self._timers[name] = self.clock.timer(keep_alive, lambda: self._expire(name, entry))

    def _expire(self, name: str, entry: LoadedEntry) -> None:
        def unload_if_still_expired() -> None:
            expires_at = entry.expires_at
            if self._models.get(name) is entry and expires_at is not None and expires_at <= self.clock.wall():
                self.unload(name)

        if not self.closed:
            try:
                self.worker.call(unload_if_still_expired)
            except (QueueFullError, RequestCancelled, RequestTimeoutError) as exc:
                log.warning("keep_alive unload of %s postponed: %s", name, exc)

    def close(self) -> None:
        """Stop the keep_alive timers (Engine.close; the supervisor unloads once the worker stopped)."""
        self.closed = True
        for timer in self._timers.values():
            timer.cancel()
