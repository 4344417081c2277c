"""Process lifecycle around the card: one owner per card, finalize on SIGTERM/SIGINT/atexit, systemd notify.

* **One owner.** Only one process may drive a card (a second one gets `Set AXCL device failed{0x80300186}`).
  `DeviceLock` is an advisory `fcntl.flock` on `<lock dir>/card<N>.lock`, taken before the device is
  touched; the holder writes its PID, command line and start time into the file so a second process (a
  second Jupyter kernel) is told who owns the card. The lock dies with its process, so a crash never
  leaves it stale. Lock dir and safe opening: ax_llm_provider/owner_lock.py. `device_users()` finds processes
  that hold /dev/axcl* open (for the 0x80300186 case,
  where the owner may not be an ax-llm process).
* **Never die during a load.** A SIGKILL or exit during an engine load can wedge the card. `install()`
  turns SIGTERM/SIGINT into a clean `SystemExit(0)` raised in the main thread, so the program unwinds and
  the atexit finalizer closes every engine (engine.close: cancel the generation, unload, free, finalize).
  While a `critical_section()` is open (a model load, a recovery), the signal is deferred and re-raised
  when the last section closes.
* **systemd.** `sd_notify()` speaks the notify protocol over $NOTIFY_SOCKET (a unix datagram; no
  dependency): READY=1 after the preload, WATCHDOG=1 from the health thread, STOPPING=1, STATUS=...
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from . import owner_lock
from .engine.errors import EngineError

log = logging.getLogger(__name__)


class Closable(Protocol):
    """What is finalized at exit (an Engine): cancel its generation, unload, free the device."""

    def close(self, timeout: float | None = ..., *, cancel_running: bool = ...) -> None: ...


# ---- systemd notify -----------------------------------------------------------------------------------


def sd_notify(*lines: str) -> bool:
    """Send `lines` (e.g. "READY=1", "STATUS=loading") to systemd; False when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not lines:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    elif not address.startswith("/"):
        log.debug("NOTIFY_SOCKET %r is not a unix socket path; not notifying", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
    except OSError as exc:
        log.warning("sd_notify(%s) failed: %s", ", ".join(lines), exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """systemd's WatchdogSec in seconds when it applies to this process (WATCHDOG_USEC/WATCHDOG_PID)."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        seconds = int(usec) / 1e6
    except ValueError:
        return None
    return seconds if seconds > 0 else None


def notify_ready(status: str | None = None) -> bool:
    """READY=1 (call after the preload: systemd's start timeout covers the load)."""
    return sd_notify("READY=1", *([f"STATUS={status}"] if status else []))


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


# ---- signals, critical sections, atexit ---------------------------------------------------------------


class ShutdownRequested(SystemExit):
    """Raised in the main thread by the SIGTERM/SIGINT handler: unwinds the program, then atexit finalizes."""

    def __init__(self, signum: int, exit_code: int = 0) -> None:
        super().__init__(exit_code)
        self.signum = signum


class _State:
    lock = threading.Lock()
    critical: list[str] = []  # what is in progress (loads, recoveries)
    pending: list[int] = []  # deferred signals
    shutting_down = False
    exit_code = 0
    engines: weakref.WeakSet[Any] = weakref.WeakSet()
    stop_timeout = float(os.environ.get("AX_LLM_STOP_TIMEOUT", "240"))


@contextlib.contextmanager
def critical_section(what: str) -> Iterator[None]:
    """A stretch (a model load, a recovery) that SIGTERM/SIGINT must not interrupt: they wait for its end."""
    with _State.lock:
        _State.critical.append(what)
    try:
        yield
    finally:
        with _State.lock:
            _State.critical.remove(what)
            redeliver = _State.pending[:] if not _State.critical else []
            if redeliver:
                _State.pending.clear()
        for signum in redeliver[:1]:
            log.warning("%s finished: acting on the deferred %s now", what, signal.Signals(signum).name)
            os.kill(os.getpid(), signum)  # the handler runs again, in the main thread


def in_critical_section() -> list[str]:
    with _State.lock:
        return list(_State.critical)


def _handler(signum: int, frame: object) -> None:
    name = signal.Signals(signum).name
    with _State.lock:
        busy = list(_State.critical)
        if busy:
            if signum not in _State.pending:
                _State.pending.append(signum)
            deferred = True
        else:
            deferred = False
            again = _State.shutting_down
            _State.shutting_down = True
    if deferred:
        log.warning("%s received during %s: deferring it until that finishes (never exit mid-load)",
                    name, busy[0])
        sd_notify(f"STATUS=stopping after {busy[0]}")
        return
    if again:
        log.warning("%s received again while shutting down; still finalizing the device", name)
        return
    log.warning("%s received: finalizing the device and exiting", name)
    sd_notify("STOPPING=1")
    raise ShutdownRequested(signum, _State.exit_code)


def register(engine: Closable) -> None:
    """Close `engine` at interpreter exit (weakly referenced: a collected engine is skipped).

    Called again after every model load: atexit runs its handlers last-registered-first, and the axcl
    backend's own `weakref.finalize` (which frees a stack at exit) registers itself when the first stack
    opens. Re-registering keeps `finalize_all` ahead of it, so the engine stops its worker (cancelling a
    generation) before any stack is freed under it.
    """
    _State.engines.add(engine)
    _register_atexit_first()


def _register_atexit_first() -> None:
    with _State.lock:
        atexit.unregister(finalize_all)
        atexit.register(finalize_all)


def finalize_all() -> None:
    """Close every registered engine: cancel generations, wait for a load in progress, unload, finalize."""
    for engine in list(_State.engines):
        try:
            engine.close(timeout=_State.stop_timeout / 2, cancel_running=True)
        except Exception as exc:  # noqa: BLE001 -- at exit, report and go on with the next engine
            log.warning("closing an engine at exit failed: %s", exc)


def install(engine: Closable | None = None, *, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT),
            exit_code: int = 0) -> None:
    """Service setup: SIGTERM/SIGINT raise ShutdownRequested(exit_code) in the main thread (deferred during
    a critical section), and every registered engine is closed at exit. Call from the main thread."""
    if engine is not None:
        _State.engines.add(engine)
    _register_atexit_first()
    _State.exit_code = exit_code
    for signum in signals:
        signal.signal(signum, _handler)


def install_default_sigterm() -> bool:
    """Finalize on SIGTERM when nobody else handles it (an engine that owns a real card calls this)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False
    signal.signal(signal.SIGTERM, _handler)
    return True


def reset_for_tests() -> None:
    """Forget pending signals and the shutting-down flag (tests that run handlers in-process)."""
    with _State.lock:
        _State.pending.clear()
        _State.shutting_down = False


__all__ = [
    "Closable", "DeviceInUseError", "DeviceLock", "Owner", "ShutdownRequested", "critical_section", "device_users",
    "finalize_all", "in_critical_section", "in_use_message", "install", "install_default_sigterm", "lock_dir",
    "notify_ready", "register", "sd_notify", "watchdog_interval",
]
