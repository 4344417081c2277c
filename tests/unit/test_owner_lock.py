"""The owner lock cannot be turned against the host (issue 15, item 12): no symlink or hard link is
followed, another user's file is never written, the lock directory is private, no /tmp fallback."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ax_llm_provider import owner_lock
from ax_llm_provider import process as lifecycle
from ax_llm_provider.process import DeviceInUseError, DeviceLock

VICTIM = b"precious contents\n"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.conf"
    path.write_bytes(VICTIM)
    return path


def test_a_symlink_planted_as_the_lock_is_not_followed(tmp_path: Path, victim: Path) -> None:
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    (locks / "card0.lock").symlink_to(victim)
    with pytest.raises(DeviceInUseError, match="symlink"):
        DeviceLock("card0", locks).acquire()
    assert victim.read_bytes() == VICTIM


def test_a_hard_link_planted_as_the_lock_is_refused(tmp_path: Path, victim: Path) -> None:
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    os.link(victim, locks / "card0.lock")
    with pytest.raises(DeviceInUseError, match="single link"):
        DeviceLock("card0", locks).acquire()
    assert victim.read_bytes() == VICTIM


def test_a_new_lock_directory_is_private(tmp_path: Path) -> None:
    locks = tmp_path / "new" / "locks"
    with DeviceLock("card0", locks):
        pass
    assert stat.S_IMODE(locks.stat().st_mode) == 0o700
    assert stat.S_IMODE((locks / "card0.lock").stat().st_mode) & 0o077 in (0, 0o040)


def test_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # world-writable without the sticky bit: anyone could swap the lock file
    with pytest.raises(DeviceInUseError, match="others can write"):
        DeviceLock("card0", shared).acquire()


def test_a_symlinked_lock_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    with pytest.raises(DeviceInUseError, match="symlink"):
        DeviceLock("card0", tmp_path / "link").acquire()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand a file to another user")
def test_another_users_lock_file_is_locked_but_never_written(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    theirs = locks / "card0.lock"
    theirs.write_bytes(b'{"pid": 1, "cmdline": "their service", "started": null}\n')
    os.chown(theirs, 65534, 65534)
    with DeviceLock("card0", locks) as lock:
        assert lock.held
    assert b"their service" in theirs.read_bytes()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand a directory to another user")
def test_a_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(DeviceInUseError, match="belongs to uid 65534"):
        DeviceLock("card0", theirs).acquire()


def test_no_predictable_tmp_fallback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AX_LLM_LOCK_DIR", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(owner_lock, "SERVICE_LOCK_DIR", tmp_path / "absent")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    where = lifecycle.lock_dir()
    assert not str(where).startswith("/tmp/ax-llm") and where == tmp_path / "home" / ".local" / "state" / "ax-llm"
