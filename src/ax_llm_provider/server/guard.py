"""What a request must pass before any route sees it: Host, Origin, body size and speed, model names.

One pure-ASGI middleware wraps the whole app, so every route (Ollama's /api/*, /v1/*, anything added
later) gets the same checks. The rules follow Ollama's server (ollama/ollama, server/routes.go
`allowedHostsMiddleware` / `allowedHost`, and envconfig `AllowedOrigins`):

- Origin: a browser request carrying an `Origin` header is refused with 403 unless the origin is this
  machine's (http(s)://localhost, 127.0.0.1, 0.0.0.0, [::1], any port), a desktop-app scheme (app://,
  file://, tauri://, vscode-webview://, vscode-file://) or listed in OLLAMA_ORIGINS / --origins. A
  cross-origin `text/plain` POST (no preflight) therefore never reaches the engine.
- Host (DNS rebinding): on a connection that arrived on a loopback address, the Host header must name
  this machine: localhost, an IP literal that is loopback, private or unspecified, this machine's
  hostname, or a name under .localhost, .local or .internal. A page whose name was rebound to
  127.0.0.1 sends its own name and gets 403. Connections to a non-loopback address (the operator
  chose to listen on the network) are not checked, as in Ollama.
- Body: at most `max_body_bytes` (413 without reading the rest: a Content-Length over the limit is
  refused before the body is read, a chunked body as soon as it passes the limit), and the whole body
  must arrive within `body_timeout_s` (408): a client that trickles bytes cannot hold a socket.
- Model names: over HTTP a model is a name in the store, never a directory path (400).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..model.store import is_path_like

log = logging.getLogger(__name__)

ORIGINS_ENV = "OLLAMA_ORIGINS"
MAX_BODY_ENV = "AX_LLM_MAX_BODY_BYTES"
# A chat request resends the whole conversation: 50 long turns are well under 100 KB. 1 MiB leaves
# room for long documents while keeping the parser's memory (tens of bytes per input byte) bounded.
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_BODY_TIMEOUT_S = 30.0

_LOCAL_HOSTS = ("localhost", "127.0.0.1", "0.0.0.0", "[::1]")
DEFAULT_ORIGINS = (*(f"{scheme}://{host}{port}" for host in _LOCAL_HOSTS for scheme in ("http", "https")
                     for port in ("", ":*")),
                   "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")
MODEL_KEYS = ("model", "name", "source", "destination", "from")


def origins_from_env(environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """OLLAMA_ORIGINS as Ollama reads it: comma-separated, surrounding quotes trimmed, `*` wildcards."""
    raw = (environ if environ is not None else os.environ).get(ORIGINS_ENV, "").strip().strip("\"'")
    return tuple(o.strip() for o in raw.split(",") if o.strip())


def origin_pattern(origins: Iterable[str]) -> re.Pattern[str]:
    """One regex matching any of `origins` (exact, or with `*` standing for any characters)."""
    parts = [".*".join(re.escape(piece) for piece in o.split("*")) for o in origins]
    return re.compile("|".join(f"(?:{p})" for p in parts) or r"(?!)", re.IGNORECASE)


def allowed_host(host: str) -> bool:
    """Ollama's rule for a Host header on a loopback listener (host without its port)."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host in ("", "localhost") or host == socket.gethostname().lower():
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host.endswith(_LOCAL_SUFFIXES)
    return ip.is_loopback or ip.is_private or ip.is_unspecified


def host_without_port(value: str) -> str:
    if value.startswith("["):  # [::1]:11434
        return value[: value.find("]") + 1] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class GuardConfig:
    """The limits of RequestGuard; `origins` are added to Ollama's defaults ("*" allows any origin)."""

    origins: Sequence[str] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    check_host: bool = True
    allow_model_paths: bool = False
    all_origins: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1 or self.body_timeout_s <= 0:
            raise ValueError("max_body_bytes and body_timeout_s must be positive")
        object.__setattr__(self, "all_origins", (*DEFAULT_ORIGINS, *self.origins))

    @classmethod
    def from_env(cls, origins: Sequence[str] = (), **overrides: Any) -> GuardConfig:
        """OLLAMA_ORIGINS plus `origins`; AX_LLM_MAX_BODY_BYTES unless max_body_bytes is given."""
        if "max_body_bytes" not in overrides and os.environ.get(MAX_BODY_ENV):
            overrides["max_body_bytes"] = int(os.environ[MAX_BODY_ENV])
        return cls(origins=(*origins_from_env(), *origins), **overrides)


class _Refused(Exception):
    def __init__(self, status: int, message: str, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.close = status, message, close


class RequestGuard:
    """The ASGI middleware applying GuardConfig to every HTTP request of the wrapped app."""

    def __init__(self, app: ASGIApp, config: GuardConfig | None = None) -> None:
        self.app, self.config = app, config or GuardConfig()
        self._origins = origin_pattern(self.config.all_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            self._check_host(scope, headers)
            self._check_origin(headers)
            body = await self._read_body(receive, headers)
            if body and not self.config.allow_model_paths:
                self._check_model_names(body)
        except _Refused as refused:
            await _refuse(send, refused)
            return
        await self.app(scope, _replay(body, receive), send)

    def _check_host(self, scope: Scope, headers: dict[str, str]) -> None:
        server = scope.get("server")
        if not self.config.check_host or not server or not _is_loopback(str(server[0])):
            return
        host = headers.get("host", "")
        if not allowed_host(host_without_port(host)):
            log.warning("refused a request with Host %r on a loopback listener (DNS rebinding?)", host)
            raise _Refused(403, f"host {host!r} is not allowed: this server answers requests addressed to "
                                "localhost or this machine only")

    def _check_origin(self, headers: dict[str, str]) -> None:
        origin = headers.get("origin")
        if origin is None or "*" in self.config.origins or self._origins.fullmatch(origin):
            return
        log.warning("refused a request from origin %r (allow it with OLLAMA_ORIGINS or --origins)", origin)
        raise _Refused(403, f"origin {origin!r} is not allowed; add it to OLLAMA_ORIGINS or --origins")

    async def _read_body(self, receive: Receive, headers: dict[str, str]) -> bytes:
        limit = self.config.max_body_bytes
        too_large = _Refused(413, f"request body too large: the limit is {limit} bytes (set "
                                  f"--max-body-bytes or {MAX_BODY_ENV} to change it)", close=True)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        with anyio.move_on_after(self.config.body_timeout_s) as deadline:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _Refused(499, "client disconnected", close=True)
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
        assert deadline.cancelled_caught
        raise _Refused(408, f"the request body did not arrive within {self.config.body_timeout_s:g} s", close=True)

    def _check_model_names(self, body: bytes) -> None:
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):
            return  # not JSON: the route answers it with its own error
        if not isinstance(parsed, dict):
            return
        for key in MODEL_KEYS:
            value = parsed.get(key)
            if isinstance(value, str) and is_path_like(value):
                raise _Refused(400, f"invalid model name {value!r}: over HTTP a model is a name in the store "
                                    "(e.g. smollm2:135m), not a path; `ax-llm list` shows the names")


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body already read, as one message; after it, the connection's own messages (disconnect)."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _refuse(send: Send, refused: _Refused) -> None:
    if refused.status == 499:
        return  # nobody is listening
    payload = json.dumps({"error": refused.message}).encode()
    headers = [(b"content-type", b"application/json; charset=utf-8"),
               (b"content-length", str(len(payload)).encode())]
    if refused.close:  # the unread rest of the body must not be parsed as the next request
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": refused.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})
