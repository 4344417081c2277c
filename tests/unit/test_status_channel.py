"""The card owner's status channel: atomic publishing, staleness (dead PID, reused PID, old timestamp), and
doctor / health reading it instead of opening the card."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ax_llm_provider import status_channel as sc
from ax_llm_provider.doctor import run_doctor
from ax_llm_provider.process import DeviceLock

HEALTH = {"state": "ok", "device": "card 0", "models": ["qwen3:0.6b-axcl"], "temperature_c": 52.5,
          "cmm_free_mb": 5000.0, "cmm_total_mb": 7040.0, "npu_load_percent": 40.0, "device_cpu_load_percent": 3.0,
          "warnings": [], "queue": 0, "read_at": None}


@pytest.fixture
def lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AX_LLM_LOCK_DIR", str(tmp_path))
    return tmp_path


def write(lock_dir: Path, pid: int, started: float | None, published: float, **extra: Any) -> None:
    data = {"schema": sc.SCHEMA, "card": 0, "published_at": published, "period_s": 1.0,
            "owner": {"pid": pid, "cmdline": "ax-llm serve", "started": started, "user": "pi"},
            "health": HEALTH, **extra}
    sc.write_atomically(sc.channel_path(0), data)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_no_channel_reads_as_none(lock_dir: Path) -> None:
    assert sc.read_status(0) is None


def test_a_live_fresh_owner(lock_dir: Path) -> None:
    from ax_llm_provider.process import process_start_time

    write(lock_dir, os.getpid(), process_start_time(os.getpid()), time.time() - 1)
    status = sc.read_status(0)
    assert status is not None and status.alive and status.fresh and status.pid == os.getpid()
    assert status.health["temperature_c"] == 52.5 and not status.simulated
    assert not list(lock_dir.glob(".*.tmp"))  # the temporary file was renamed into place


@pytest.mark.spawns
def test_a_dead_owner_is_stale(lock_dir: Path) -> None:
    write(lock_dir, dead_pid(), None, time.time())
    status = sc.read_status(0)
    assert status is not None and not status.alive


def test_a_reused_pid_is_not_the_owner(lock_dir: Path) -> None:
    write(lock_dir, os.getpid(), 1000.0, time.time())  # this PID, but a process that started in 1970
    status = sc.read_status(0)
    assert status is not None and not status.alive


def test_an_owner_that_stopped_publishing_is_not_fresh(lock_dir: Path) -> None:
    write(lock_dir, os.getpid(), None, time.time() - 60)
    status = sc.read_status(0)
    assert status is not None and status.alive and not status.fresh


def test_foreign_or_broken_files_are_ignored(lock_dir: Path) -> None:
    sc.channel_path(0).write_text("{not json")
    assert sc.read_status(0) is None
    sc.channel_path(0).write_text(json.dumps({"schema": 99, "owner": {"pid": 1}}))
    assert sc.read_status(0) is None


def test_publisher_follows_the_lock_and_removes_its_file(lock_dir: Path) -> None:
    lock = DeviceLock("card0")
    lock.acquire()
    calls = []

    def snapshot() -> dict[str, Any]:
        calls.append(1)
        return HEALTH

    publisher = sc.StatusPublisher(sc.channel_path(0), 0, snapshot, lambda: lock.held, period=0.02).start()
    status = sc.read_status(0)
    assert status is not None and status.alive and status.health == HEALTH  # published before start returned
    time.sleep(0.2)
    assert len(calls) > 2  # rewritten every period
    lock.release()
    deadline = time.monotonic() + 5
    while sc.channel_path(0).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not sc.channel_path(0).exists()
    publisher.stop()


def test_doctor_reads_a_live_owner_and_does_not_open_the_card(lock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ax_llm_provider import doctor
    from ax_llm_provider.process import process_start_time

    monkeypatch.setattr(doctor, "check_driver", lambda report: True)  # a machine with a card

    def must_not_open(*args: object) -> None:
        raise AssertionError("doctor opened the card while another process holds it")

    monkeypatch.setattr(doctor, "check_devices", must_not_open)
    write(lock_dir, os.getpid(), process_start_time(os.getpid()), time.time())
    report = run_doctor()
    checks = {c.name: c for c in report.checks}
    assert checks["card owner"].status == "ok" and "readings from its status channel" in checks["card owner"].detail
    assert checks["temperature"].detail == "52.5 °C (read by the owner)"
    assert "5000 MB free of 7040 MB" in checks["cmm"].detail


@pytest.mark.spawns
def test_doctor_warns_about_a_stale_channel_and_checks_the_card_itself(lock_dir: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from ax_llm_provider import doctor

    monkeypatch.setattr(doctor, "check_driver", lambda report: True)
    opened = []
    monkeypatch.setattr(doctor, "check_devices", lambda report, device: opened.append(device) or {})
    write(lock_dir, dead_pid(), None, time.time())
    report = run_doctor()
    checks = {c.name: c for c in report.checks}
    assert checks["card owner"].status == "warn" and "no longer runs" in checks["card owner"].detail
    assert opened == [0]


def test_a_failing_snapshot_never_fails_the_owner(lock_dir: Path) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("snapshot bug")

    publisher = sc.StatusPublisher(sc.channel_path(0), 0, broken, lambda: True, period=0.02).start()
    time.sleep(0.1)
    assert sc.read_status(0) is None and publisher.running  # nothing published, still trying
    publisher.stop()
