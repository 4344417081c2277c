"""`ax-llm serve` as a systemd service, run as a child process on the simulated card with a NOTIFY_SOCKET bound
here: READY=1 once listening, WATCHDOG=1 from the health monitor, SIGTERM -> STOPPING=1, the engine closed
and exit 0, and a card the recovery ladder cannot bring back ($AX_LLM_SIM_FAULTS) -> exit status 3."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ax_llm_provider.runtime.simcard import Faults

from .conftest import report

pytestmark = [pytest.mark.spawns]
STARTUP_TIMEOUT = 240.0  # imports and the preload are slow on a loaded machine
STOP_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Notifications:
    """The datagrams the child sends to $NOTIFY_SOCKET, collected on a thread."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def lines(self) -> list[str]:
        return [line for message in list(self.messages) for line in message.split("\n")]

    def wait_for(self, prefix: str, proc: subprocess.Popen[str], timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not any(line.startswith(prefix) for line in self.lines()):
            assert proc.poll() is None, f"serve exited ({proc.returncode}) before {prefix}: {self.lines()}"
            assert time.monotonic() < deadline, f"no {prefix} within {timeout:g} s: {self.lines()}"
            time.sleep(0.05)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture()
def notifications(tmp_path: Path) -> Iterator[tuple[Path, Notifications]]:
    path = tmp_path / "notify.sock"
    received = Notifications(path)
    yield path, received
    received.close()


MODEL = "tiny-llama:0"
CHILD = Path(__file__).with_name("serve_child.py")


def linked_store(twin: str, tmp_path: Path) -> Path:
    store = tmp_path / "store"
    (store / "tiny-llama").mkdir(parents=True)
    (store / "tiny-llama" / "0").symlink_to(twin, target_is_directory=True)
    return store


def start_serve(twin: str, tmp_path: Path, notify: Path, port: int, **env: str) -> subprocess.Popen[str]:
    """`ax-llm serve --preload tiny-llama:0` on a simulated card (the twin is linked into a store: over HTTP a
    model is a store name)."""
    store = linked_store(twin, tmp_path)
    environment = {**os.environ, "NOTIFY_SOCKET": str(notify), "WATCHDOG_USEC": "1500000",
                   "AX_LLM_HEALTH_PERIOD": "0.2", "AX_LLM_SIM_PRESET": "qwen2.5-0.5b-w4a16", "PYTHONUNBUFFERED": "1",
                   "AX_LLM_LOCK_DIR": str(tmp_path / "locks"), **env}
    for name in ("WATCHDOG_PID", "AX_LLM_SIM_FAULTS"):
        if name not in env:
            environment.pop(name, None)
    command = [sys.executable, "-m", "ax_llm_provider.cli", "--log-level", "INFO", "--store", str(store),
               "serve", "--backend", "simulated", "--port", str(port), "--preload", MODEL, "--grace", "5"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)


def generate(port: int) -> tuple[int, dict[str, object]]:
    body = json.dumps({"model": MODEL, "prompt": "hello there", "stream": False,
                       "options": {"num_predict": 4}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/generate", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def finish(proc: subprocess.Popen[str], timeout: float = STOP_TIMEOUT) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err


def test_serve_notifies_systemd_and_stops_cleanly_on_sigterm(reliability_twin: str, tmp_path: Path,
                                                            notifications: tuple[Path, Notifications]) -> None:
    path, received = notifications
    port = free_port()
    proc = start_serve(reliability_twin, tmp_path, path, port)
    try:
        received.wait_for("READY=1", proc)  # only once the listener is bound, after the preload
        status, answer = generate(port)
        assert status == 200 and answer["done"], answer
        received.wait_for("WATCHDOG=1", proc, timeout=30)  # the health monitor feeds it while the card answers
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # systemctl stop
        code, err = finish(proc)
        seconds = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = received.lines()
    assert code == 0, err[-3000:]  # not 143: the signal is not re-raised after the server's shutdown
    assert "STOPPING=1" in lines, lines
    assert "device finalized" in err and "SIGTERM received" in err, err[-3000:]  # the engine's close ran
    ready = next(line for line in lines if line.startswith("STATUS=serving"))
    assert f"127.0.0.1:{port}" in ready and MODEL in ready
    report("serve[SIGTERM]", exit_code=code, exit_seconds=round(seconds, 2),
           watchdog_pings=lines.count("WATCHDOG=1"), notify=[line for line in lines if line != "WATCHDOG=1"][:6])


def test_serve_exits_3_when_the_card_cannot_be_recovered(reliability_twin: str, tmp_path: Path,
                                                         notifications: tuple[Path, Notifications]) -> None:
    path, received = notifications
    port = free_port()
    # The preload runs no execute; from the first request on every execute fails: retry, reset and reload,
    # reboot and reload all fail, and the ladder gives up (DeviceFatalError). A request is re-run once after a
    # recovery, so the first one may end with its device error after the reset and the reboot; the next one
    # meets the unconfirmed reboot and the ladder's last rung.
    proc = start_serve(reliability_twin, tmp_path, path, port, AX_LLM_SIM_FAULTS="execute:times=-1")
    try:
        received.wait_for("READY=1", proc)
        for _ in range(3):
            status, answer = generate(port)
            if "could not be recovered" in str(answer.get("error")):
                break
        code, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = received.lines()
    assert status >= 500 and "could not be recovered" in str(answer.get("error")), (status, answer)
    assert code == 3, err[-3000:]  # RestartForceExitStatus=3 in deploy/ax-llm-serve.service
    assert any(line.startswith("STATUS=failed") for line in lines) and "STOPPING=1" in lines, lines
    assert "cannot serve any more" in err and "device finalized" in err, err[-3000:]
    report("serve[card lost]", exit_code=code, http_status=status,
           notify=[line for line in lines if line != "WATCHDOG=1"][:6])


@pytest.mark.parametrize(("grace", "num_predict"), [(60.0, 40), (0.5, 100_000)], ids=["finishes", "cancelled"])
def test_sigterm_gives_requests_in_flight_a_bounded_grace(reliability_twin: str, tmp_path: Path,
                                                         notifications: tuple[Path, Notifications], grace: float,
                                                         num_predict: int) -> None:
    """A stream in flight at SIGTERM ends within the grace (finished, or cut and its request cancelled), then the
    engine is closed and the exit status is 0."""
    path, received = notifications
    port = free_port()
    env = {**os.environ, "NOTIFY_SOCKET": str(path), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(CHILD), str(linked_store(reliability_twin, tmp_path)), MODEL,
                             str(port), str(grace)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    chunks: list[dict[str, object]] = []
    try:
        received.wait_for("READY=1", proc)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        connection.request("POST", "/api/generate", json.dumps({
            "model": MODEL, "prompt": "tell me everything", "stream": True,
            "options": {"num_predict": num_predict, "temperature": 0.9, "seed": 1}}),
            {"Content-Type": "application/json"})
        response = connection.getresponse()
        chunks.append(json.loads(response.readline()))  # the stream is running
        proc.send_signal(signal.SIGTERM)
        try:
            while line := response.readline():
                chunks.append(json.loads(line))
        except (http.client.IncompleteRead, ConnectionError):
            pass  # the grace ran out: the server cut the stream
        code, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, err[-3000:]
    assert "device finalized" in err and "SIGTERM received" in err, err[-3000:]
    done = bool(chunks[-1].get("done"))
    if grace > 5:
        assert done, chunks[-3:]  # finished within the grace
    else:
        assert not done and "timeout graceful shutdown exceeded" in err, (chunks[-3:], err[-3000:])
    report(f"serve[SIGTERM, grace {grace:g} s]", exit_code=code, chunks=len(chunks), finished=done)


def test_fault_plan_from_the_environment() -> None:
    faults = Faults()
    faults.plan("execute:after=40:times=-1, load:times=2:code=0x80030011")
    assert faults.execute is not None and (faults.execute.after, faults.execute.times) == (40, -1)
    assert faults.load is not None and (faults.load.times, faults.load.code) == (2, 0x80030011)
    with pytest.raises(ValueError, match="use execute, load or engine_init"):
        faults.plan("melt")
    with pytest.raises(ValueError, match="must be an integer"):
        faults.plan("execute:after=soon")
