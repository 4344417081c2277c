"""Running the app: `serve()` in the foreground (the CLI's `ax-llm serve`), `BackgroundServer` in a thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from types import TracebackType

import uvicorn
from starlette.applications import Starlette

from ..engine.engine import Engine
from .app import create_app


def serve(host: str = "127.0.0.1", port: int = 11434, *, engine: Engine | None = None,
          log_level: str = "info", origins: Sequence[str] = ()) -> None:
    """Serve Ollama's REST API on host:port until interrupted (Ctrl-C).

    `engine` defaults to the process's shared engine (`get_engine()`, configured from AX_LLM_*): one
    engine owns the device per process, and this server never creates a second one. `origins`: extra
    browser origins allowed besides this machine's pages (see create_app).
    """
    if engine is None:
        from ..engine.default import get_engine

        engine = get_engine()
    # Streams still open at shutdown are cut after a few seconds (their requests are cancelled).
    uvicorn.run(create_app(engine, origins=origins), host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


class BackgroundServer:
    """The server on a daemon thread (tests, notebooks): `with BackgroundServer(app) as url: ...`.

    port=0 binds an ephemeral port; `url` is the base URL to give ollama.Client(host=...) or
    ChatOllama(base_url=...).
    """

    def __init__(self, app: Starlette | None = None, host: str = "127.0.0.1", port: int = 0, *,
                 engine: Engine | None = None, log_level: str = "warning") -> None:
        self.app = app if app is not None else create_app(engine)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        bound_host, bound_port = self._sock.getsockname()[:2]
        self.url = f"http://[{bound_host}]:{bound_port}" if family == socket.AF_INET6 else f"http://{bound_host}:{bound_port}"
        config = uvicorn.Config(self.app, log_level=log_level, lifespan="off", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]},
                                        name="ax-llm-server", daemon=True)

    def start(self, timeout: float = 10.0) -> str:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start within {timeout:g} s")
            time.sleep(0.01)
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
