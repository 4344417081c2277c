"""One process per card: the simulated card's cross-process ownership, as the real runtime enforces it.

On hardware a second process that calls `axclrtSetDevice` on a card another process holds gets
AXCL_ERR_DEVICE_PORT_ALLOCATE (0x80300186, "request ports ... Operation not permitted"; docs/sdk-notes.md,
"One process per card"). The simulated card reproduces that with an exclusive `flock` on a file per device
id in a namespace directory: every SimCard of one process shares the hold (the runtime allows any number of
set_device calls in the owning process), another process is refused, and the kernel drops the lock when the
owner dies, as the card's driver does.

The namespace is `$AX_LLM_SIMCARD_DIR`, else `<tmp>/ax-llm-simcard-<uid>`: an `ax-llm serve` on the simulated
card and an `ax-llm health` run in another shell meet there, while a test suite can isolate itself by
pointing the variable at its own directory.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import threading
from pathlib import Path

NAMESPACE_ENV = "AX_LLM_SIMCARD_DIR"


def default_namespace() -> Path:
    configured = os.environ.get(NAMESPACE_ENV)
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"ax-llm-simcard-{os.getuid()}"


class _Hold:
    def __init__(self, fd: int) -> None:
        self.fd, self.holders = fd, 0


_holds: dict[Path, _Hold] = {}
_lock = threading.RLock()  # re-entrant: a SimCard finalizer (GC) may release while acquire runs


def acquire(namespace: Path, device_id: int) -> bool:
    """Take (or share, within this process) the card; False when another process holds it."""
    path = namespace / f"device-{device_id}.lock"
    with _lock:
        hold = _holds.get(path)
        if hold is None:
            namespace.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            hold = _holds[path] = _Hold(fd)
        hold.holders += 1
        return True


def release(namespace: Path, device_id: int) -> None:
    path = namespace / f"device-{device_id}.lock"
    with _lock:
        hold = _holds.get(path)
        if hold is None:
            return
        hold.holders -= 1
        if hold.holders <= 0:
            del _holds[path]
            fcntl.flock(hold.fd, fcntl.LOCK_UN)
            os.close(hold.fd)


def owner_pid(namespace: Path, device_id: int) -> int | None:
    """The pid written by the process holding the card, if any (what `axcl-smi` would list)."""
    path = namespace / f"device-{device_id}.lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = path.read_text().strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
