"""An `ollama`-compatible Client and AsyncClient over the in-process engine."""

from __future__ import annotations

import threading

from .client import AsyncClient, Client

__all__ = ["AsyncClient", "Client", "default_client"]

_client: Client | None = None
_client_lock = threading.Lock()


def default_client() -> Client:
    """The process-wide Client behind the package's module-level functions (`ax_llm_provider.chat`, ...).

    Created on first use, over the shared engine (`get_engine()`), as ollama's `_client = Client()`.
    """
    global _client
    with _client_lock:
        if _client is None:
            _client = Client()
        return _client
