"""`ax-llm serve` in this process: a stop signal during --preload lets the load finish, then the server is not
started, the engine is closed and the exit status is 0 (the subprocess cases are in tests/reliability)."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ax_llm_provider.engine.engine import Engine
from tests.cli.conftest import TINY

Cli = Callable[..., tuple[int, str, str]]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_signal_during_the_preload_waits_for_the_load_then_stops(store: Path, cli: Cli,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ax_llm_provider.server.runner", reason="the server extra is not installed")
    load = Engine.load
    seen: dict[str, Any] = {"loads": 0}

    def interrupted_load(self: Engine, model: str, keep_alive: float | str | None = None) -> None:
        seen["loads"] += 1
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C (or systemctl stop) in the middle of the preload
        load(self, model, keep_alive)
        seen["loaded"] = [m["name"] for m in self.ps()["models"]]
        seen["engine"] = self

    monkeypatch.setattr(Engine, "load", interrupted_load)
    previous = signal.getsignal(signal.SIGINT)
    code, _, err = cli("serve", "--port", str(free_port()), "--preload", TINY, "--preload", "tiny:other")
    assert code == 0, err  # not 130: the load was not interrupted, and the stop was clean
    assert seen["loaded"] == [TINY] and seen["loads"] == 1  # the load in progress finished; no further preload
    assert seen["engine"].health().state == "closed"  # then the engine was closed instead of serving
    assert signal.getsignal(signal.SIGINT) is previous  # the handler is the caller's again
