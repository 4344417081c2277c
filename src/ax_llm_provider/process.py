"""Process lifecycle around the card: one owner per card, and (re-exported here) how the process stops and
talks to systemd.

* **One owner.** Only one process may drive a card (a second one gets `Set AXCL device failed{0x80300186}`).
  `DeviceLock` is an advisory `fcntl.flock` on `<lock dir>/card<N>.lock`, taken before the device is
  touched; the holder writes its PID, command line and start time into the file so a second process (a
  second Jupyter kernel) is told who owns the card. The lock dies with its process, so a crash never
  leaves it stale. Lock dir and safe opening: ax_llm_provider/owner_lock.py. `device_users()` finds processes
  that hold /dev/axcl* open (for the 0x80300186 case, where the owner may not be an ax-llm process).
* **Never die during a load.** SIGTERM/SIGINT, critical sections and the atexit finalizer: shutdown.py.
* **systemd.** `sd_notify()`, `watchdog_interval()`, `notify_ready()`: systemd_notify.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from . import owner_lock
from .engine.errors import EngineError
from .shutdown import (
    Closable,
    ShutdownRequested,
    close_timeout,
    critical_section,
    finalize_all,
    in_critical_section,
    install,
    install_default_sigterm,
    register,
    reset_for_tests,
)
from .systemd_notify import EXIT_CARD_LOST, notify_ready, sd_notify, watchdog_interval

log = logging.getLogger(__name__)


# ---- process facts ------------------------------------------------------------------------------------


def _clock_ticks() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError):
        return 100


def process_start_time(pid: int) -> float | None:
    """Unix time the process started (from /proc), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, after the comm field
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / _clock_ticks()


def process_cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part) or "?"


@dataclass(frozen=True)
class Owner:
    """Who holds a card: written into the lock file by the holder, or found in /proc."""

    pid: int
    cmdline: str
    started: float | None
    user: str = ""

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started)) if self.started else "unknown time"
        command = " ".join(self.cmdline.split())
        command = command if len(command) <= 200 else command[:197] + "..."
        who = f" as {self.user}" if self.user else ""
        return f"PID {self.pid} (`{command}`){who}, started {when}"

    @classmethod
    def current(cls) -> Owner:
        user = os.environ.get("USER") or os.environ.get("LOGNAME") or str(os.getuid())
        return cls(os.getpid(), process_cmdline(os.getpid()), process_start_time(os.getpid()), user)


def device_users(match: str = "axcl", exclude_self: bool = True) -> list[Owner]:
    """Processes holding a device node whose path contains `match` open (readable /proc entries only)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or (exclude_self and int(proc.name) == os.getpid()):
            continue
        try:
            targets = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
        except OSError:
            continue
        if any(t.startswith("/dev/") and match in t for t in targets):
            pid = int(proc.name)
            found.append(Owner(pid, process_cmdline(pid), process_start_time(pid)))
    return found


class DeviceInUseError(EngineError):
    """Another process owns the card (the lock file, or AXCL's 0x80300186 "Set AXCL device failed")."""

    status_code = 503

    def __init__(self, message: str, owner: Owner | None = None) -> None:
        super().__init__(message)
        self.owner = owner


def in_use_message(card: str, owners: list[Owner], lock_path: Path | None = None, code: str = "") -> str:
    where = f" (lock {lock_path})" if lock_path else ""
    why = f"{code}: " if code else ""
    who = "; ".join(o.describe() for o in owners) if owners else (
        "a process this user cannot see (check `axcl-smi`: its Processes table lists the owner's PID)")
    return (f"{why}{card} is already in use by {who}{where}. Only one process may drive the card: stop that "
            "process (a second Jupyter kernel? the ax-llm service: `sudo systemctl stop ax-llm`), or send "
            "requests to the engine it runs")


# ---- the single-owner lock ----------------------------------------------------------------------------


def lock_dir() -> Path:
    """Where card locks live (owner_lock.lock_dir: no predictable /tmp fallback)."""
    return owner_lock.lock_dir()


class DeviceLock:
    """Advisory, process-wide (re-entrant within a process) lock on one card, with the owner's details."""

    _held: ClassVar[dict[str, list[int]]] = {}  # path -> [fd, refs]
    _guard: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, name: str = "card0", directory: str | Path | None = None) -> None:
        self.name = name
        self.path = Path(directory) if directory is not None else lock_dir()
        self.path = self.path / f"{name}.lock"
        self.held = False

    def acquire(self) -> None:
        """Take the lock or raise DeviceInUseError naming the owner. Idempotent per instance."""
        if self.held:
            return
        key = str(self.path)
        with self._guard:
            entry = self._held.get(key)
            if entry is not None:  # this process holds it already (two engines, a reload)
                entry[1] += 1
                self.held = True
                return
            fd, writable = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = self._read_owner(fd)
                os.close(fd)
                owners = [owner] if owner else device_users()
                raise DeviceInUseError(in_use_message(self.name.replace("card", "card "), owners, self.path),
                                       owner) from None
            if writable:
                self._write_owner(fd)
            self._held[key] = [fd, 1]
            self.held = True
        log.info("took the device lock %s", self.path)

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        with self._guard:
            entry = self._held.get(str(self.path))
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del self._held[str(self.path)]
            with contextlib.suppress(OSError):
                fcntl.flock(entry[0], fcntl.LOCK_UN)
            os.close(entry[0])
        log.info("released the device lock %s", self.path)

    def owner(self) -> Owner | None:
        """The owner recorded in the lock file (the last holder's, if nobody holds it now)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            return self._read_owner(fd)
        finally:
            os.close(fd)

    def _open(self) -> tuple[int, bool]:
        try:  # no symlinks, no other user's file, a private directory (owner_lock.py)
            return owner_lock.open_lock_file(self.path)
        except OSError as exc:
            raise DeviceInUseError(f"cannot use the device lock {self.path}: {exc}") from exc

    @staticmethod
    def _write_owner(fd: int) -> None:
        me = Owner.current()
        data = json.dumps({"pid": me.pid, "cmdline": me.cmdline, "started": me.started, "user": me.user}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data + b"\n", 0)

    @staticmethod
    def _read_owner(fd: int) -> Owner | None:
        try:
            data = json.loads(os.pread(fd, 65536, 0) or b"null")
            return Owner(int(data["pid"]), str(data["cmdline"]), data.get("started"), str(data.get("user", "")))
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def __enter__(self) -> DeviceLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = [
    "EXIT_CARD_LOST", "Closable", "DeviceInUseError", "DeviceLock", "Owner", "ShutdownRequested", "close_timeout",
    "critical_section", "device_users", "finalize_all", "in_critical_section", "in_use_message", "install",
    "install_default_sigterm", "lock_dir", "notify_ready", "register", "reset_for_tests", "sd_notify",
    "watchdog_interval",
]
