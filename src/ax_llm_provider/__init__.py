"""ax-llm-provider: LLMs on the AXERA AX650N NPU, in process, with Ollama's schema.

    from ax_llm_provider import Client          # instead of: from ollama import Client
    Client().chat(model="smollm2:135m", messages=[{"role": "user", "content": "Hi"}])

Framework adapters live in `ax_llm_provider.integrations` (extras `langchain`, `llamaindex`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["AsyncClient", "Client", "Engine", "get_engine", "__version__"]

if TYPE_CHECKING:
    from .engine.default import get_engine
    from .engine.engine import Engine
    from .ollama import AsyncClient, Client


def __getattr__(name: str) -> Any:
    # Lazy: `import ax_llm_provider` stays cheap and works without optional dependencies.
    if name in ("Client", "AsyncClient"):
        from . import ollama as _ollama

        return getattr(_ollama, name)
    if name == "Engine":
        from .engine.engine import Engine

        return Engine
    if name == "get_engine":
        from .engine.default import get_engine

        return get_engine
    raise AttributeError(f"module 'ax_llm_provider' has no attribute {name!r}")
