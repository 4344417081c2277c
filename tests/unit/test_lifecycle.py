"""Lifecycle: systemd notify, the single-owner card lock, owner lookup, deferred signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ax_llm_provider import process as lifecycle
from ax_llm_provider.process import DeviceInUseError, DeviceLock, ShutdownRequested


@pytest.fixture()
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_sd_notify_sends_one_datagram(notify_socket: socket.socket) -> None:
    assert lifecycle.sd_notify("READY=1", "STATUS=serving")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=serving"
    assert lifecycle.notify_ready("up")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=up"


def test_sd_notify_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"ax-llm-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert lifecycle.sd_notify("WATCHDOG=1")
        assert sock.recv(100) == b"WATCHDOG=1"


@pytest.mark.timeout(120)
def test_sd_notify_to_a_socket_nobody_reads_gives_up_instead_of_blocking(notify_socket: socket.socket) -> None:
    """A full notify queue (its reader stuck) makes sd_notify return False; before, the sender blocked for ever."""
    assert lifecycle.sd_notify("WATCHDOG=1")
    for _ in range(5000):  # the queue holds a few hundred datagrams
        if not lifecycle.sd_notify("WATCHDOG=1"):
            break
    else:
        pytest.fail("5000 notifications queued on a socket nobody reads")


def test_sd_notify_without_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not lifecycle.sd_notify("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert not lifecycle.sd_notify("READY=1")


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert lifecycle.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "90000000")
    assert lifecycle.watchdog_interval() == 90.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert lifecycle.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert lifecycle.watchdog_interval() == 90.0


def test_owner_of_this_process() -> None:
    me = lifecycle.Owner.current()
    assert me.pid == os.getpid() and "python" in me.cmdline or "pytest" in me.cmdline
    assert me.started is not None and me.started <= time.time()
    assert f"PID {os.getpid()}" in me.describe()


def test_lock_dir_prefers_the_configured_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AX_LLM_LOCK_DIR", str(tmp_path))
    assert lifecycle.lock_dir() == tmp_path
    monkeypatch.delenv("AX_LLM_LOCK_DIR")
    assert lifecycle.lock_dir().name.startswith("ax-llm")


def test_lock_is_reentrant_in_one_process_and_records_the_owner(tmp_path: Path) -> None:
    a, b = DeviceLock("card0", tmp_path), DeviceLock("card0", tmp_path)
    a.acquire()
    b.acquire()  # a second engine in the same process shares the card
    owner = a.owner()
    assert owner is not None and owner.pid == os.getpid()
    a.release()
    assert str(b.path) in DeviceLock._held
    b.release()
    assert str(b.path) not in DeviceLock._held


HOLDER = """
import sys, time
from ax_llm_provider.process import DeviceLock
lock = DeviceLock("card0", sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture()
def lock_holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), "jupyter-kernel-stand-in"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait(30)


@pytest.mark.spawns
def test_second_process_is_told_who_owns_the_card(tmp_path: Path, lock_holder: subprocess.Popen[str]) -> None:
    with pytest.raises(DeviceInUseError) as info:
        DeviceLock("card0", tmp_path).acquire()
    message = str(info.value)
    assert f"PID {lock_holder.pid}" in message and "jupyter-kernel-stand-in" in message
    assert "started 20" in message and "card 0 is already in use" in message
    assert info.value.owner is not None and info.value.owner.pid == lock_holder.pid
    lock_holder.kill()
    lock_holder.wait(30)
    with DeviceLock("card0", tmp_path):  # the lock died with its owner
        pass


@pytest.mark.spawns
def test_engine_with_the_lock_refuses_a_card_owned_elsewhere(tmp_path: Path, lock_holder: subprocess.Popen[str],
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             tiny_twin: Callable[..., Path]) -> None:
    from ax_llm_provider.engine.engine import Engine
    from ax_llm_provider.model.store import ModelStore
    from ax_llm_provider.runtime.simcard import SimCard

    monkeypatch.setenv("AX_LLM_LOCK_DIR", str(tmp_path))
    twin = str(tiny_twin("llama"))
    card = SimCard()
    with Engine(ModelStore(tmp_path / "store"), backend="simulated", card=card, device_lock=True,
                auto_pull=False) as engine:
        with pytest.raises(DeviceInUseError, match=f"PID {lock_holder.pid}"):
            engine.load(twin)
        assert card.counters.total_calls == 0  # the lock is taken before the device is touched


@pytest.mark.spawns
def test_device_users_finds_processes_holding_a_device_node() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; f = open('/dev/zero', 'rb'); print('ok', flush=True); "
                             "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ok"
        users = lifecycle.device_users("zero")
        assert proc.pid in [u.pid for u in users]
        assert os.getpid() not in [u.pid for u in users]
    finally:
        proc.kill()
        proc.wait(30)


def test_port_allocate_code_becomes_an_owner_message(tmp_path: Path, tiny_twin: Callable[..., Path]) -> None:
    from ax_llm_provider.engine.engine import Engine
    from ax_llm_provider.model.store import ModelStore
    from ax_llm_provider.runtime import axcl_codes as codes
    from ax_llm_provider.runtime.simcard import SimCard

    card = SimCard()
    card.faults.fail_load(code=codes.ERR_DEVICE_PORT_ALLOCATE, times=-1)
    with Engine(ModelStore(tmp_path), backend="simulated", card=card, auto_pull=False) as engine:
        with pytest.raises(DeviceInUseError, match=r"Set AXCL device failed \{0x80300186\}: card 0 is already in use"):
            engine.load(str(tiny_twin("llama")))
        assert card.faults.load is not None and card.faults.load.fired == 1  # not retried, never rebooted
        assert card.counters.calls["axclrtRebootDevice"] == 0


@pytest.fixture()
def usr1_handler() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGUSR1)
    lifecycle.install(signals=(signal.SIGUSR1,))
    lifecycle.reset_for_tests()
    yield
    signal.signal(signal.SIGUSR1, previous)
    lifecycle.reset_for_tests()


def test_signal_raises_shutdown_in_the_main_thread(usr1_handler: None) -> None:
    with pytest.raises(ShutdownRequested) as info:
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(5)
    assert info.value.code == 0 and info.value.signum == signal.SIGUSR1


def test_signal_during_a_critical_section_waits_for_its_end(usr1_handler: None) -> None:
    entered, release = threading.Event(), threading.Event()
    finished: list[float] = []

    def load() -> None:
        with lifecycle.critical_section("loading tiny"):
            entered.set()
            release.wait(10)
            finished.append(time.monotonic())

    worker = threading.Thread(target=load)
    worker.start()
    assert entered.wait(5)
    os.kill(os.getpid(), signal.SIGUSR1)
    time.sleep(0.3)  # the handler ran (deferred) instead of raising here
    assert lifecycle.in_critical_section() == ["loading tiny"]
    with pytest.raises(ShutdownRequested):
        release.set()
        for _ in range(100):
            time.sleep(0.05)
    assert finished and time.monotonic() >= finished[0]  # raised only after the load finished
    worker.join(5)
