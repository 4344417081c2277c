"""What every `ax-llm` command shares: exit codes, errors, the engines of this process, progress, formatting."""

from __future__ import annotations

import argparse
import atexit
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from ..model.store import ModelStore

if TYPE_CHECKING:
    from ..engine.engine import Engine

log = logging.getLogger("ax_llm_provider.cli")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class CliError(Exception):
    """A failure to report as one `Error: ...` line with exit code 1."""


class UsageError(CliError):
    """The command line itself is wrong (exit code 2)."""


def store_of(args: argparse.Namespace) -> ModelStore:
    return ModelStore(getattr(args, "store", None))


def default_backend() -> str:
    return os.environ.get("AX_LLM_BACKEND", "auto")


def default_device() -> int:
    raw = os.environ.get("AX_LLM_DEVICE", "0")
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"AX_LLM_DEVICE={raw!r} is not a card index (0, 1, ...)") from None


# ---- the engines of this process ------------------------------------------------------------------
# One per (store, backend, device), kept for the life of the process, so `ps` after `run` in the same
# process (the interactive chat, tests calling main() twice) sees what was loaded. Closed at exit,
# which unloads every model and finalizes the device.

_engines: dict[tuple[str, str, int], Engine] = {}
_engines_lock = threading.Lock()


def engine_for(args: argparse.Namespace) -> Engine:
    from ..engine.engine import Engine

    store = store_of(args)
    backend = getattr(args, "backend", None) or default_backend()
    device = getattr(args, "device", None)
    device = default_device() if device is None else device
    key = (str(store.root), backend, device)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            max_queue = int(os.environ.get("AX_LLM_MAX_QUEUE", "512"))
            engine = _engines[key] = Engine(store, backend=backend, device=device, max_queue=max_queue,
                                            fallback_model=getattr(args, "fallback_model", None))
        return engine


def process_engines() -> list[Engine]:
    with _engines_lock:
        return list(_engines.values())


def close_engines() -> None:
    """Unload every model this process loaded (atexit; tests call it between cases)."""
    with _engines_lock:
        engines = list(_engines.values())
        _engines.clear()
    for engine in engines:
        try:
            engine.close(timeout=10)
        except RuntimeError as exc:  # never hide the command's own exit status behind a teardown failure
            log.warning("closing the engine failed: %s", exc)


atexit.register(close_engines)


# ---- progress -------------------------------------------------------------------------------------

def progress_bar() -> tuple[Callable[[str, int, int], None], Callable[[], None]]:
    """One tqdm bar on stderr driven by (stage, done, total) callbacks; the stage becomes its description."""
    from tqdm import tqdm

    bar: tqdm | None = None

    def update(stage: str, done: int, total: int) -> None:
        nonlocal bar
        if bar is None or bar.total != total:
            if bar is not None:
                bar.close()
            bar = tqdm(total=total, unit="step", file=sys.stderr, leave=False, disable=None)  # off unless a TTY
        bar.set_description(stage, refresh=False)
        bar.n = done
        bar.refresh()

    def close() -> None:
        if bar is not None:
            bar.close()

    return update, close


# ---- formatting (Ollama's way of writing sizes, times and durations) ------------------------------

def human_bytes(n: float) -> str:
    """Decimal units as `ollama list` prints them: 113 MB, 1.9 GB."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(n)} B"


def human_duration_ns(ns: int | float) -> str:
    """Go's time.Duration style, rounded: 1.52s, 120.5ms, 830µs, 0s."""
    if ns <= 0:
        return "0s"
    if ns >= 60e9:
        minutes, seconds = divmod(ns / 1e9, 60)
        return f"{int(minutes)}m{seconds:.1f}s"
    if ns >= 1e9:
        return f"{ns / 1e9:.3g}s" if ns < 10e9 else f"{ns / 1e9:.2f}s"
    if ns >= 1e6:
        return f"{ns / 1e6:.1f}ms"
    return f"{ns / 1e3:.0f}µs"


def _ago(seconds: float, future: bool) -> str:
    suffix = "from now" if future else "ago"
    if seconds < 60:
        return "Less than a minute " + suffix
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = int(seconds // size)
            if count == 1:
                return f"About {'an' if unit == 'hour' else 'a'} {unit} {suffix}"
            return f"{count} {unit}s {suffix}"
    return suffix  # unreachable


def human_since(timestamp: float, now: float | None = None) -> str:
    return _ago(max(0.0, (now or time.time()) - timestamp), future=False)


def human_until(timestamp: float | None, now: float | None = None) -> str:
    if timestamp is None or not math.isfinite(timestamp):
        return "Forever"
    return _ago(max(0.0, timestamp - (now or time.time())), future=True)


def table(rows: list[list[str]], out: TextIO | None = None) -> None:
    """Left-aligned columns separated by at least three spaces, as the ollama CLI prints them."""
    stream = out or sys.stdout
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        line = "   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
        print(line, file=stream)
