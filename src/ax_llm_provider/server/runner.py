"""Running the app: `serve()` in the foreground (the CLI's `ax-llm serve`), `BackgroundServer` in a thread.

Both run uvicorn with the connection limits of server/transport.py: a deadline for each request head,
a short keep-alive idle timeout, and accept errors (file descriptors exhausted) logged once a minute.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette

from ..engine.engine import Engine
from .app import create_app
from .guard import GuardConfig
from .transport import (
    DEFAULT_HEAD_TIMEOUT_S,
    DEFAULT_KEEP_ALIVE_S,
    protocol_with,
    quiet_accept_errors,
    raise_fd_limit,
)


class GuardedServer(uvicorn.Server):
    """uvicorn.Server whose loop logs accept errors quietly (installed before the listener starts)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        quiet_accept_errors()
        await super().startup(sockets)


def server_config(app: Starlette, *, head_timeout_s: float = DEFAULT_HEAD_TIMEOUT_S,
                  keep_alive_s: int = DEFAULT_KEEP_ALIVE_S, **kwargs: Any) -> uvicorn.Config:
    return uvicorn.Config(app, http=protocol_with(head_timeout_s), timeout_keep_alive=keep_alive_s, **kwargs)


def serve(host: str = "127.0.0.1", port: int = 11434, *, engine: Engine | None = None,
          log_level: str = "info", origins: Sequence[str] = (), guard: GuardConfig | None = None,
          head_timeout_s: float = DEFAULT_HEAD_TIMEOUT_S, keep_alive_s: int = DEFAULT_KEEP_ALIVE_S) -> None:
    """Serve Ollama's REST API on host:port until interrupted (Ctrl-C).

    `engine` defaults to the process's shared engine (`get_engine()`, configured from AX_LLM_*): one
    engine owns the device per process, and this server never creates a second one. `origins`: extra
    browser origins allowed besides this machine's pages and OLLAMA_ORIGINS; `guard` replaces the
    request limits (server/guard.py). A request head must arrive within `head_timeout_s`, and an idle
    keep-alive connection is closed after `keep_alive_s`.
    """
    if engine is None:
        from ..engine.default import get_engine

        engine = get_engine()
    raise_fd_limit()  # before the connection cap is derived from it
    app = create_app(engine, origins=origins, guard=guard)
    # Streams still open at shutdown are cut after a few seconds (their requests are cancelled).
    config = server_config(app, head_timeout_s=head_timeout_s, keep_alive_s=keep_alive_s, host=host, port=port,
                           log_level=log_level, timeout_graceful_shutdown=5)
    server = GuardedServer(config)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it handled: shutdown was clean
        server.run()
    if not server.started:
        raise SystemExit(3)  # uvicorn's status when the server could not start (e.g. the port is taken)


class BackgroundServer:
    """The server on a daemon thread (tests, notebooks): `with BackgroundServer(app) as url: ...`.

    port=0 binds an ephemeral port; `url` is the base URL to give ollama.Client(host=...) or
    ChatOllama(base_url=...).
    """

    def __init__(self, app: Starlette | None = None, host: str = "127.0.0.1", port: int = 0, *,
                 engine: Engine | None = None, log_level: str = "warning",
                 head_timeout_s: float = DEFAULT_HEAD_TIMEOUT_S, keep_alive_s: int = DEFAULT_KEEP_ALIVE_S) -> None:
        self.app = app if app is not None else create_app(engine)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        bound_host, bound_port = self._sock.getsockname()[:2]
        self.url = f"http://[{bound_host}]:{bound_port}" if family == socket.AF_INET6 else f"http://{bound_host}:{bound_port}"
        config = server_config(self.app, head_timeout_s=head_timeout_s, keep_alive_s=keep_alive_s,
                               log_level=log_level, lifespan="off", timeout_graceful_shutdown=2)
        self.server = GuardedServer(config)
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
