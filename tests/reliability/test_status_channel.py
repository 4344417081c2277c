"""Two real processes on the simulated card: one holds it and serves, the other runs `ax-llm health` / `doctor`.

The second process must take its readings from the owner's status channel and never open the card (on
hardware the open fails, and the property read would set up and reset the owner's device). The probe
child counts every way of opening a card, so this holds whether or not the simulated card refuses a
second process. After the owner is killed (SIGKILL: it cannot clean up), the channel is stale and the
commands go back to reading the card themselves: the control that shows the counts can be non-zero.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import report

HERE = Path(__file__).parent
STARTUP_TIMEOUT = 180.0  # imports and a load on a loaded CI machine


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "AX_LLM_LOCK_DIR": str(tmp_path / "lock"),
           "AX_LLM_STATUS_PERIOD": "0.1", "AX_LLM_HEALTH_PERIOD": "0.1"}
    for name in ("NOTIFY_SOCKET", "AX_LLM_BACKEND", "AX_LLM_DEVICE"):
        env.pop(name, None)
    return env


@pytest.fixture
def owner(tmp_path: Path, tiny_twin: Callable[..., Path], env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    store = tmp_path / "store"
    shutil.copytree(tiny_twin("llama"), store / "tiny" / "llama")
    proc = subprocess.Popen([sys.executable, str(HERE / "card_owner_child.py"), "tiny:llama", str(store)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT
    line = proc.stdout.readline()
    assert line.strip() == "ready", f"owner did not start: {line!r} {proc.stderr.read() if proc.poll() else ''}"
    channel = Path(env["AX_LLM_LOCK_DIR"]) / "card0.status.json"
    while True:  # wait for the owner's monitor to have read the card once
        data = json.loads(channel.read_text()) if channel.exists() else {}
        if data.get("health", {}).get("temperature_c") is not None:
            break
        assert time.monotonic() < deadline, f"the owner never published a reading: {data}"
        time.sleep(0.05)
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)


def probe(tmp_path: Path, env: dict[str, str], *argv: str) -> tuple[dict[str, Any], str]:
    counts = tmp_path / f"counts-{time.monotonic_ns()}.json"
    done = subprocess.run([sys.executable, str(HERE / "card_probe_child.py"), str(counts), *argv],
                          capture_output=True, text=True, env=env, timeout=STARTUP_TIMEOUT)
    assert counts.exists() and done.stdout, f"probe failed: {done.stderr[-2000:]}"
    return json.loads(counts.read_text()), done.stdout


def test_health_and_doctor_read_the_owner_without_opening_the_card(
        owner: subprocess.Popen[str], tmp_path: Path, env: dict[str, str]) -> None:
    result, out = probe(tmp_path, env, "health", "--backend", "simulated", "--json")
    assert result["opened"] == {}, result
    reading = json.loads(out)
    assert result["exit"] == 0 and reading["source"] == "status channel"
    assert reading["owner"]["pid"] == owner.pid and reading["simulated"] is True
    assert reading["models"] == ["tiny:llama"] and reading["temperature_c"] is not None

    result, out = probe(tmp_path, env, "health")  # auto backend: the same, no pyaxcl touched
    assert result["opened"] == {} and f"PID {owner.pid}" in out and "did not open the card" in out

    result, out = probe(tmp_path, env, "--store", str(tmp_path / "store"), "doctor", "--simulated", "--json",
                        "tiny:llama")
    assert result["opened"] == {}, result
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert checks["card owner"]["status"] == "ok" and f"PID {owner.pid}" in checks["card owner"]["detail"]
    assert checks["smoke generation"]["status"] == "skip"
    assert "°C (read by the owner)" in checks["temperature"]["detail"]
    report("status_channel", owner_pid=owner.pid, probes=3, device_opens=0)


def test_a_dead_owner_leaves_a_stale_channel_that_is_ignored(
        owner: subprocess.Popen[str], tmp_path: Path, env: dict[str, str]) -> None:
    owner.send_signal(signal.SIGKILL)
    owner.wait(30)
    assert (Path(env["AX_LLM_LOCK_DIR"]) / "card0.status.json").exists()  # nobody cleaned up
    result, out = probe(tmp_path, env, "health", "--backend", "simulated", "--json")
    assert result["exit"] == 0 and "source" not in json.loads(out)  # the card's own reading
    assert result["opened"]["simcards"] >= 1 and result["opened"]["device_properties"] >= 1
    result, out = probe(tmp_path, env, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert checks["card owner"]["status"] == "warn" and "no longer runs" in checks["card owner"]["detail"]


def test_a_clean_stop_removes_the_channel(owner: subprocess.Popen[str], env: dict[str, str]) -> None:
    assert owner.stdin is not None
    owner.stdin.close()
    assert owner.wait(60) == 0
    assert not (Path(env["AX_LLM_LOCK_DIR"]) / "card0.status.json").exists()
