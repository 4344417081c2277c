"""deploy/installation_app.py: serves prompts as the service would, speaks the fallback on errors, exits 3
when the card is lost, notifies systemd, and stops cleanly on SIGTERM."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.engine.ops.health import HealthConfig
from ax_llm_provider.engine.ops.recovery import RecoveryPolicy
from ax_llm_provider.model.store import ModelStore
from ax_llm_provider.runtime.simcard import SimCard

from .conftest import report

APP = Path(__file__).resolve().parents[2] / "deploy" / "installation_app.py"
FAST = RecoveryPolicy(step_wait_s=0.001, cmm_retry_wait_s=0.01, reboot_wait_s=0.5, reboot_poll_s=0.05)


@pytest.fixture()
def engine(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Engine, SimCard]]:
    card = SimCard()
    watch = 0.5 if "recovered_error" in request.node.name else 5.0  # only the hang test watches tightly
    eng = Engine(ModelStore(tmp_path / "store"), backend="simulated", card=card, auto_pull=False, keep_alive=-1,
                 request_timeout=10, health=HealthConfig(period_s=0.05, execute_timeout_s=watch), recovery=FAST)
    yield eng, card
    eng.close()


def test_serve_answers_and_speaks_the_fallback_on_errors(app: ModuleType, engine: tuple[Engine, SimCard],
                                                        reliability_twin: str) -> None:
    eng, card = engine
    eng.load(reliability_twin)
    respond = app.make_responder(eng, reliability_twin, app.SYSTEM, {**app.OPTIONS, "num_predict": 8})
    replies: list[tuple[str, str]] = []

    def prompts() -> Iterator[tuple[str, str]]:
        yield "a", "hello there"
        card.faults.fail_execute(after=0, times=-1)  # every execute fails now
        card.lib_rt.axclrtRebootDevice = lambda device_id: 0  # type: ignore[method-assign]
        yield "b", "and now?"  # reset, one re-run, reboot: the card answers but fails again, so the fallback
        yield "c", "still there?"  # the ladder has nothing left: fatal
        yield "d", "never answered"

    code = app.serve(eng, respond, prompts(), lambda name, reply: replies.append((name, reply)), "FALLBACK")
    assert code == app.EXIT_FATAL  # the card could not be recovered: exit 3, systemd restarts the service
    assert [name for name, _ in replies] == ["a", "b", "c"] and replies[0][1] != "FALLBACK"
    assert replies[1][1] == replies[2][1] == "FALLBACK"


def test_serve_keeps_going_after_a_recovered_error(app: ModuleType, engine: tuple[Engine, SimCard],
                                                   reliability_twin: str) -> None:
    eng, card = engine
    respond = app.client_responder(eng, reliability_twin, app.SYSTEM, {**app.OPTIONS, "num_predict": 8})
    replies: list[str] = []

    def prompts() -> Iterator[tuple[str, str]]:
        yield "a", "hello"
        card.faults.hang_execute(after=2, timeout_s=1.0)  # the NPU hangs once
        yield "b", "are you there?"
        yield "c", "hello again"

    assert app.serve(eng, respond, prompts(), lambda name, reply: replies.append(reply), "FALLBACK") == app.EXIT_OK
    assert replies[1] == "FALLBACK" and replies[0] != "FALLBACK" and replies[2] != "FALLBACK"
    assert eng.health().recoveries["reset"] == 1


def test_directory_source_and_sink(app: ModuleType, engine: tuple[Engine, SimCard], reliability_twin: str,
                                   tmp_path: Path) -> None:
    eng, _ = engine
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(3):
        (inbox / f"visitor-{i}.txt").write_text(f"question {i}\n")
        time.sleep(0.01)
    respond = app.make_responder(eng, reliability_twin, app.SYSTEM, {**app.OPTIONS, "num_predict": 6})
    source = itertools.islice(app.directory_source(inbox, poll_s=0.01), 3)
    assert app.serve(eng, respond, source, app.directory_sink(inbox)) == app.EXIT_OK
    assert sorted(p.name for p in (inbox / "replies").iterdir()) == [f"visitor-{i}.txt" for i in range(3)]
    assert sorted(p.name for p in (inbox / "done").iterdir()) == [f"visitor-{i}.txt" for i in range(3)]
    assert not list(inbox.glob("*.txt"))


def run_app(reliability_twin: str, tmp_path: Path, notify: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "NOTIFY_SOCKET": str(notify), "AX_LLM_SIM_PRESET": "qwen2.5-0.5b-w4a16",
           "AX_LLM_HEALTH_PERIOD": "0.2", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(APP), "--model", reliability_twin, "--backend", "simulated",
                             "--store", str(tmp_path / "store"), "--source", "stdin", "--text-logs",
                             "--options", '{"num_predict": 8}'],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.fixture()
def notify_socket(tmp_path: Path) -> Iterator[tuple[Path, socket.socket]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(240)
    yield path, sock
    sock.close()


def test_the_app_as_a_service_process(reliability_twin: str, tmp_path: Path,
                                      notify_socket: tuple[Path, socket.socket]) -> None:
    path, sock = notify_socket
    proc = run_app(reliability_twin, tmp_path, path)
    try:
        messages = []
        while not any(m.startswith(b"READY=1") for m in messages):  # only after the preload
            messages.append(sock.recv(4096))
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("hello\nwho are you?\n")
        proc.stdin.flush()
        replies = [proc.stdout.readline(), proc.stdout.readline()]
        assert all(r.strip() for r in replies)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # systemctl stop, while stdin is still open
        code = proc.wait(60)
        seconds = time.monotonic() - sent
        err = proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, err[-2000:]
    assert "device finalized" in err and "SIGTERM received" in err
    report("installation_app[stdin,SIGTERM]", exit_code=code, exit_seconds=round(seconds, 2), replies=len(replies),
           notify=[m.decode().split("\n")[0] for m in messages][:4])


def test_the_app_exits_zero_at_the_end_of_its_input(reliability_twin: str, tmp_path: Path,
                                                    notify_socket: tuple[Path, socket.socket]) -> None:
    path, _ = notify_socket
    proc = run_app(reliability_twin, tmp_path, path)
    out, err = proc.communicate("one\ntwo\nthree\n", timeout=240)
    assert proc.returncode == 0, err[-2000:]
    assert len([line for line in out.splitlines() if line.strip()]) == 3


def test_the_app_exits_3_when_the_card_can_no_longer_load_the_model(reliability_twin: str, tmp_path: Path,
                                                                    notify_socket: tuple[Path, socket.socket]) -> None:
    """An execute fault, then reloads that fail: the ladder reaches FATAL and the process exits 3 (issue 15)."""
    path, sock = notify_socket
    env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "300000", "AX_LLM_HEALTH_PERIOD": "0.05",
           "PYTHONUNBUFFERED": "1"}
    child = Path(__file__).with_name("lost_card_app_child.py")
    messages: list[str] = []
    sock.settimeout(0.2)

    def drain() -> None:  # a full notify socket would block the child's sd_notify
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                if proc.poll() is not None:
                    return

    proc = subprocess.Popen([sys.executable, str(child), "--model", reliability_twin, "--backend", "simulated",
                             "--store", str(tmp_path / "store"), "--source", "stdin", "--text-logs",
                             "--fallback", "FALLBACK", "--options", '{"num_predict": 8}'],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        out, err = proc.communicate("hello\nare you there?\nand now?\n", timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(10)
    assert proc.returncode == 3, err[-3000:]
    assert out.splitlines() == ["FALLBACK"]  # one visitor got the fallback, then the service was restarted
    assert "could not be recovered" in err and "exiting so systemd restarts the service" in err
    assert any(m.startswith("READY=1") for m in messages)
    assert any(m.startswith("STATUS=failed") for m in messages)
    report("installation_app[lost card]", exit_code=proc.returncode,
           notify=[m.split("\n")[0] for m in messages if not m.startswith("WATCHDOG")])
