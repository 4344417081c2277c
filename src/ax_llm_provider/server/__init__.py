"""Optional Ollama-compatible HTTP server, for clients outside Python (extra `server`: starlette + uvicorn).

    from ax_llm_provider.server import serve
    serve()                      # http://127.0.0.1:11434, like `ollama serve`

Any Ollama client (the `ollama` packages, langchain-ollama's ChatOllama(base_url=...), curl) then
talks to the process's one engine. `create_app(engine)` returns the Starlette app for other ASGI
servers; `BackgroundServer` runs it on a thread.
"""

from __future__ import annotations

try:
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover -- depends on the installation
    raise ImportError(
        "the HTTP server needs starlette and uvicorn: pip install 'ax-llm-provider[server]'"
    ) from exc

from .app import OLLAMA_VERSION, create_app
from .runner import BackgroundServer, serve

__all__ = ["OLLAMA_VERSION", "BackgroundServer", "create_app", "serve"]
