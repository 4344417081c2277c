"""The card owner's status channel: how `ax-llm health` / `ax-llm doctor` read a card another process holds.

Only one process may open a card, and the runtime's property call (`axclrtGetDeviceProperties`) itself
sets the device up and resets it again, so a second process must not even ask the card for its
temperature. Instead the process that holds the card lock publishes its engine's health snapshot (which
its own monitor thread read from the card) as a JSON file next to the lock:

    <lock dir>/card<N>.status.json      (lock dir: see engine/lifecycle.py `lock_dir()`)

Why a file and not a unix socket: a reader needs no cooperation from the owner at the moment it reads
(a hung or busy owner cannot block `ax-llm health`), the file is readable by any user the lock dir
admits (/run/ax-llm is mode 1777), `cat` works for debugging, and writing it is one `os.replace` every
few seconds (the lock dir is a tmpfs on the Pi). The cost is staleness, which readers check: the file
names the owner's PID and start time (a dead PID, or a PID reused by another process, means the owner
is gone) and when it was published (an old timestamp from a live PID means the owner stopped
publishing: hung). See docs/health.md "Reading a card another process holds" for the format.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA = 1
PERIOD_ENV = "AX_LLM_STATUS_PERIOD"
DEFAULT_PERIOD_S = 2.0
START_TIME_SLACK_S = 2.0  # /proc start times are in clock ticks; the owner wrote the same figure


def period_s() -> float:
    raw = os.environ.get(PERIOD_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_PERIOD_S
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %g", PERIOD_ENV, raw, DEFAULT_PERIOD_S)
        return DEFAULT_PERIOD_S
    return value if value > 0 else DEFAULT_PERIOD_S


def channel_path(card: int, directory: str | Path | None = None) -> Path:
    from .process import lock_dir

    return (Path(directory) if directory is not None else lock_dir()) / f"card{card}.status.json"


def write_atomically(path: Path, data: dict[str, Any]) -> None:
    """Readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    body = json.dumps(data, default=str, separators=(",", ":")).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, body)
    finally:
        os.close(fd)
    os.replace(tmp, path)


# ---- reading ------------------------------------------------------------------------------------------


def pid_alive(pid: int, started: float | None) -> bool:
    """The process exists and is the one that wrote the file (not a later process given the same PID)."""
    from .process import process_start_time

    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    if started is None:
        return True
    now_started = process_start_time(pid)
    return now_started is None or abs(now_started - float(started)) <= START_TIME_SLACK_S


@dataclass(frozen=True)
class OwnerStatus:
    """What a reader found in the channel file."""

    path: Path
    data: dict[str, Any]
    alive: bool  # the publishing process still runs
    age_s: float  # seconds since it last published

    @property
    def owner(self) -> dict[str, Any]:
        return dict(self.data.get("owner") or {})

    @property
    def pid(self) -> int:
        return int(self.owner.get("pid", 0))

    @property
    def health(self) -> dict[str, Any]:
        return dict(self.data.get("health") or {})

    @property
    def fresh(self) -> bool:
        """Published recently enough for a live owner (three periods, at least 10 s)."""
        period = float(self.data.get("period_s") or DEFAULT_PERIOD_S)
        return self.age_s <= max(3 * period, 10.0)

    @property
    def simulated(self) -> bool:
        return str(self.health.get("device", "")).startswith("simulated")

    def describe_owner(self) -> str:
        owner = self.owner
        command = " ".join(str(owner.get("cmdline", "?")).split())
        command = command if len(command) <= 120 else command[:117] + "..."
        return f"PID {self.pid} (`{command}`)"


def read_status(card: int, directory: str | Path | None = None, now: float | None = None) -> OwnerStatus | None:
    """The channel of card `card`, or None when no process publishes one (or the file is unreadable)."""
    path = channel_path(card, directory)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring the unreadable status channel %s: %s", path, exc)
        return None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("owner"), dict):
        log.warning("ignoring the status channel %s: not schema %d", path, SCHEMA)
        return None
    owner = data["owner"]
    try:
        alive = pid_alive(int(owner.get("pid", 0)), owner.get("started"))
        age = (time.time() if now is None else now) - float(data.get("published_at", 0))
    except (TypeError, ValueError):
        log.warning("ignoring the status channel %s: malformed owner or timestamp", path)
        return None
    return OwnerStatus(path, data, alive, max(0.0, age))


# ---- publishing (the owning process) ------------------------------------------------------------------


class StatusPublisher:
    """Rewrites one channel file every period from `snapshot()` while `held()`; removes it when done."""

    def __init__(self, path: Path, card: int, snapshot: Callable[[], dict[str, Any] | None],
                 held: Callable[[], bool], period: float | None = None) -> None:
        self.path, self.card, self.period = path, card, period if period is not None else period_s()
        self._snapshot, self._held = snapshot, held
        self._stop = threading.Event()
        self.source: Any = None  # weak reference to the engine supervisor it publishes for
        self._retired = False  # replaced by a later publisher of the same file: leave the file alone
        self._thread = threading.Thread(target=self._loop, name=f"ax-llm-status-card{card}", daemon=True)

    def start(self) -> StatusPublisher:
        try:
            self.publish()  # before any device call: readers back off from the very start of a load
        except Exception:  # noqa: BLE001 -- the engine's load must not fail because its status could not be written
            log.exception("publishing the status channel failed")
        self._thread.start()
        return self

    def publish(self) -> bool:
        from .process import Owner

        health = self._snapshot()
        if health is None:
            return False
        me = Owner.current()
        data = {"schema": SCHEMA, "card": self.card, "published_at": time.time(), "period_s": self.period,
                "owner": {"pid": me.pid, "cmdline": me.cmdline, "started": me.started, "user": me.user},
                "health": health}
        try:
            write_atomically(self.path, data)
        except OSError as exc:
            log.warning("cannot write the status channel %s: %s (other processes will not see this engine's "
                        "health)", self.path, exc)
            return False
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            if self._retired or not self._held():
                break
            try:
                self.publish()
            except Exception:  # noqa: BLE001 -- a snapshot bug must not end the channel for good
                log.exception("publishing the status channel failed")
        self.remove()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        self.remove()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def retire(self) -> None:
        self._retired = True
        self._stop.set()

    def remove(self) -> None:
        """Delete the file if it is still ours (a later owner may have replaced it)."""
        if self._retired:
            return
        status = read_status(self.card, self.path.parent)
        if status is not None and status.pid == os.getpid():
            with contextlib.suppress(OSError):
                self.path.unlink()


_publishers: dict[str, StatusPublisher] = {}
_guard = threading.Lock()


def publish_status(supervisor: Any, lock: Any) -> StatusPublisher:
    """Start (once per lock file per process) publishing `supervisor.health()` while `lock` is held.

    The engine calls this right after it took the card lock (engine/ops/device.py `take_lock`). A later
    engine of the same process taking the same lock becomes the one published.
    """
    path = Path(lock.path).with_name(Path(lock.path).stem + ".status.json")
    card = int(supervisor.card.device)
    ref = weakref.ref(supervisor)  # without a callback the same ref object each call: an identity key

    def snapshot() -> dict[str, Any] | None:
        owner = ref()
        return owner.health(closed=owner.closing).to_dict() if owner is not None else None

    def held() -> bool:
        owner = ref()
        return owner is not None and bool(lock.held) and not owner.closing

    with _guard:
        previous = _publishers.get(str(path))
        if previous is not None and previous.source is ref and previous.running:
            return previous  # the lock is taken again (each load): one publisher per engine
        publisher = _publishers[str(path)] = StatusPublisher(path, card, snapshot, held)
        publisher.source = ref
    if previous is not None:
        previous.retire()  # the file is the new publisher's now
    return publisher.start()


@atexit.register
def _remove_at_exit() -> None:
    """Remove the files of locks already released; one still held stays until the PID is gone (then stale)."""
    with _guard:
        publishers = list(_publishers.values())
    for publisher in publishers:
        if not publisher._held():
            publisher.stop()


__all__ = ["OwnerStatus", "StatusPublisher", "channel_path", "publish_status", "read_status"]
