"""Running the app: `serve()` in the foreground (the CLI's `ax-llm serve`), `BackgroundServer` in a thread.

Both run uvicorn with the connection limits of server/transport.py: a deadline for each request head,
a short keep-alive idle timeout, and accept errors (file descriptors exhausted) logged once a minute.
The foreground server has a service's lifecycle (server/service.py): READY=1, a clean stop on SIGTERM,
exit status 3 when the card is lost.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette

from ..engine.engine import Engine
from .app import create_app
from .guard import GuardConfig
from .service import ServiceLifecycle
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


class ServiceServer(GuardedServer):
    """The foreground server: its lifecycle owns the signals (uvicorn's own capture would re-raise them after
    the shutdown and end the process before the engine is closed) and hears when the listener is bound."""

    def __init__(self, config: uvicorn.Config, lifecycle: ServiceLifecycle) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        lifecycle.attach(self)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with self.lifecycle.signals():
            yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
            self.lifecycle.listening(f"http://{host}:{self.config.port}")


def server_config(app: Starlette, *, head_timeout_s: float = DEFAULT_HEAD_TIMEOUT_S,
                  keep_alive_s: int = DEFAULT_KEEP_ALIVE_S, **kwargs: Any) -> uvicorn.Config:
    return uvicorn.Config(app, http=protocol_with(head_timeout_s), timeout_keep_alive=keep_alive_s, **kwargs)


def serve(host: str = "127.0.0.1", port: int = 11434, *, engine: Engine | None = None,
          log_level: str = "info", origins: Sequence[str] = (), guard: GuardConfig | None = None,
          head_timeout_s: float = DEFAULT_HEAD_TIMEOUT_S, keep_alive_s: int = DEFAULT_KEEP_ALIVE_S,
          grace_s: float = 10.0, lifecycle: ServiceLifecycle | None = None) -> int:
    """Serve Ollama's REST API on host:port until SIGTERM/SIGINT or a lost card; close the engine; return the
    exit status: 0 after a signal, 3 (EXIT_CARD_LOST) when the engine can no longer serve.

    `engine` defaults to the process's shared engine (`get_engine()`, configured from AX_LLM_*): one
    engine owns the device per process, and this server never creates a second one. `origins`: extra
    browser origins allowed besides this machine's pages and OLLAMA_ORIGINS; `guard` replaces the
    request limits (server/guard.py). A request head must arrive within `head_timeout_s`, and an idle
    keep-alive connection is closed after `keep_alive_s`. At a stop, requests in flight get `grace_s` to
    finish before they are cancelled. `lifecycle`: the one the caller opened its signal capture with (the
    CLI does, before its preload); by default a new one.
    """
    if engine is None:
        from ..engine.default import get_engine

        engine = get_engine()
    lifecycle = lifecycle if lifecycle is not None else ServiceLifecycle(engine)
    raise_fd_limit()  # before the connection cap is derived from it
    app = create_app(engine, origins=origins, guard=guard)
    # Requests still running `grace_s` after the stop began are cancelled (server/service.py).
    config = server_config(app, head_timeout_s=head_timeout_s, keep_alive_s=keep_alive_s, host=host, port=port,
                           log_level=log_level, timeout_graceful_shutdown=grace_s)
    with lifecycle.signals():  # held through the engine's close: a second signal cannot cut it short
        server = ServiceServer(config, lifecycle)
        try:
            if not lifecycle.stop_requested:  # a signal during the preload: do not start at all
                server.run()  # raises SystemExit(1) when it cannot bind
        finally:
            status = lifecycle.finish()
    if not server.started and not lifecycle.stop_requested:
        raise SystemExit(1)  # the server could not start (the port is taken, ...): uvicorn logged why
    return status


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
