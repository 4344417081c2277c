"""The process-wide engine. One process owns the card, so every Client and framework adapter shares it."""

from __future__ import annotations

import atexit
import logging
import os
import threading

from .engine import Engine

log = logging.getLogger(__name__)
_engine: Engine | None = None
_lock = threading.Lock()


def get_engine() -> Engine:
    """The shared Engine, created on first use from the environment.

    AX_LLM_MODELS (store directory), AX_LLM_BACKEND (auto, onnx, axcl, axengine, simulated),
    AX_LLM_DEVICE (card index, 0-based), AX_LLM_KEEP_ALIVE (default keep_alive), AX_LLM_MAX_QUEUE.
    """
    global _engine
    with _lock:
        if _engine is None:
            _engine = Engine(
                os.environ.get("AX_LLM_MODELS") or None,
                backend=os.environ.get("AX_LLM_BACKEND", "auto"),
                device=int(os.environ.get("AX_LLM_DEVICE", "0")),
                max_queue=int(os.environ.get("AX_LLM_MAX_QUEUE", "512")),
            )
            atexit.register(_close_at_exit)
        return _engine


def set_engine(engine: Engine | None) -> Engine | None:
    """Install `engine` as the shared one (tests, services that configure it themselves); returns the old one."""
    global _engine
    with _lock:
        previous, _engine = _engine, engine
    return previous


def _close_at_exit() -> None:
    engine = _engine
    if engine is not None:
        try:
            engine.close(timeout=10)
        except RuntimeError as exc:  # never let a failing teardown hide the program's own exit status
            log.warning("engine close at exit failed: %s", exc)
