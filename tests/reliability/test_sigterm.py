"""SIGTERM/SIGINT during a model load and during a generation: clean finalize, exit 0, within the stop timeout.

The child (sigterm_child.py) runs an engine on a simulated card whose load sleeps per file and whose
decode takes its simulated time. During a load the signal is deferred until the load finishes (a load
is never interrupted: that can wedge a real card); during a generation the request is cancelled at the
next token. Either way the atexit finalizer unloads every model, frees every buffer and finalizes the
runtime before the process exits with status 0 (systemd's clean stop).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .conftest import report

CHILD = Path(__file__).with_name("sigterm_child.py")
STOP_TIMEOUT = 60.0  # what the test allows; the unit's TimeoutStopSec is 300 s
STARTUP_TIMEOUT = 180.0  # imports are slow on a loaded CI machine


class Child:
    def __init__(self, model: str, store: Path, mode: str, marker: Path) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("NOTIFY_SOCKET", None)
        self.proc = subprocess.Popen([sys.executable, str(CHILD), model, str(store), mode, str(marker)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(s, d), daemon=True)
                         for s, d in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: object, dest: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            dest.append(line.rstrip("\n"))

    def wait_for(self, text: str, where: str = "out", timeout: float = STARTUP_TIMEOUT) -> None:
        lines = self.out if where == "out" else self.err
        deadline = time.monotonic() + timeout
        while not any(text in line for line in lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"child never printed {text!r}; stderr tail: {self.err[-15:]}")
            time.sleep(0.02)

    def stop(self, signum: int) -> tuple[int, float]:
        sent = time.monotonic()
        self.proc.send_signal(signum)
        try:
            code = self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"the child did not exit within {STOP_TIMEOUT} s; stderr: {self.err[-20:]}") from None
        for reader in self._readers:
            reader.join(10)
        return code, time.monotonic() - sent


def index_of(lines: list[str], text: str) -> int:
    return next(i for i, line in enumerate(lines) if text in line)


@pytest.mark.parametrize(("mode", "signum"), [("load", signal.SIGTERM), ("generate", signal.SIGTERM),
                                              ("generate", signal.SIGINT)],
                         ids=["sigterm-during-load", "sigterm-during-generation", "sigint-during-generation"])
def test_signal_finalizes_the_card_and_exits_cleanly(mode: str, signum: int, reliability_twin: str,
                                                    tmp_path: Path) -> None:
    marker = tmp_path / "finalized.json"
    child = Child(reliability_twin, tmp_path / "store", mode, marker)
    try:
        if mode == "load":
            child.wait_for("1/3 model files", where="err")  # first file loaded, two to go (0.7 s each)
        else:
            child.wait_for("generating")
            time.sleep(0.5)
        code, seconds = child.stop(signum)
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
    err = child.err
    assert code == 0, f"exit status {code}; stderr: {err[-20:]}"
    state = json.loads(marker.read_text())
    assert state == {**state, "memory_used": 0, "models": 0, "inited": False}, state  # everything released
    assert state["finalize_calls"] >= 1
    closed = index_of(err, "engine closed")
    assert "device finalized" in err[closed]
    if mode == "load":
        assert any("deferring it until that finishes" in line for line in err)
        assert index_of(err, "axcl stack ready") < closed  # the load completed before the exit
        assert state["loads"] == 3 and "loaded" not in child.out  # ... and the program stopped right after it
    else:
        assert any("closed by the consumer" in line for line in err), err[-30:]  # the generation was cut at a token
        assert state["executes"] > 0
    report(f"sigterm[{mode},{signal.Signals(signum).name}]", exit_code=code, exit_seconds=round(seconds, 2),
           stop_timeout_s=STOP_TIMEOUT, finalized=True, loads=state["loads"], executes=state["executes"])
