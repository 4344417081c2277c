"""Where the card's owner lock lives, and opening it safely (no symlinks, no other user's files).

The lock file is created in a directory other processes may share, so opening it must not be a way
to write into someone else's file:

- the directory is opened with O_NOFOLLOW and must be owned by this user or root and not writable by
  others (a legacy world-writable sticky directory, mode 1777, is accepted with a warning: the checks
  below still hold in it); a directory this module creates is mode 0700;
- the file is opened relative to that directory with O_NOFOLLOW (a symlink planted under the lock's
  name is refused, not followed), must be a regular file with one link (no hard link to a victim), and
  is written (owner details) only when it belongs to this user; another user's lock file is flocked
  through a read-only descriptor and left unchanged.

Lock directory: $AX_LLM_LOCK_DIR, else /run/ax-llm (created 0750 for the service by the tmpfiles rule
of deploy/install-pi.sh), else $XDG_RUNTIME_DIR/ax-llm (private to the user), else
$XDG_STATE_HOME/ax-llm (~/.local/state/ax-llm). There is no /tmp fallback: a predictable name in a
world-writable directory could be taken first by another user.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_DIR_ENV = "AX_LLM_LOCK_DIR"
SERVICE_LOCK_DIR = Path("/run/ax-llm")
_warned: set[str] = set()


class LockFileError(OSError):
    """The lock directory or file is unsafe or cannot be opened; the message says what to change."""


def lock_dir() -> Path:
    """Where card locks live (see the module docstring)."""
    configured = os.environ.get(LOCK_DIR_ENV)
    if configured:
        return Path(configured)
    if SERVICE_LOCK_DIR.is_dir() and os.access(SERVICE_LOCK_DIR, os.R_OK | os.X_OK):
        return SERVICE_LOCK_DIR
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "ax-llm"
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "ax-llm"


def _trusted_owner(uid: int) -> bool:
    return uid in (os.geteuid(), 0)


def open_private_dir(directory: Path) -> int:
    """An O_DIRECTORY descriptor of `directory` (created 0700 if missing) after the safety checks."""
    if not directory.exists() and not directory.is_symlink():
        directory.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # created meanwhile: checked below like any other
            os.mkdir(directory, 0o700)
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise LockFileError(exc.errno, f"cannot open the lock directory {directory}: {exc.strerror} (a symlink is "
                                       f"refused); set {LOCK_DIR_ENV} to a private directory") from exc
    info = os.fstat(fd)
    problem = None
    if not _trusted_owner(info.st_uid):
        problem = f"it belongs to uid {info.st_uid}, not to this user or root"
    elif info.st_mode & (stat.S_IWOTH | stat.S_IWGRP) and not info.st_mode & stat.S_ISVTX:
        problem = f"others can write it (mode {stat.S_IMODE(info.st_mode):o}) and it is not sticky"
    if problem:
        os.close(fd)
        raise LockFileError(f"refusing the lock directory {directory}: {problem}; use a directory only the "
                            f"service user can write (mode 0700 or 0750), or set {LOCK_DIR_ENV}")
    if info.st_mode & stat.S_IWOTH and str(directory) not in _warned:
        _warned.add(str(directory))
        log.warning("the lock directory %s is world-writable (mode %o); make it private to the service user "
                    "(0750, see deploy/install-pi.sh)", directory, stat.S_IMODE(info.st_mode))
    return fd


def open_lock_file(path: Path) -> tuple[int, bool]:
    """(descriptor, writable): the lock file at `path`, created 0640 if missing, opened without following
    links. `writable` is False for another user's file (flock it, do not write it)."""
    dir_fd = open_private_dir(path.parent)
    try:
        flags = os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path.name, flags | os.O_RDWR | os.O_CREAT, 0o640, dir_fd=dir_fd)
        except PermissionError:
            fd = os.open(path.name, flags | os.O_RDONLY, dir_fd=dir_fd)
    except OSError as exc:
        raise LockFileError(exc.errno, f"cannot open the lock file {path}: {exc.strerror} (a symlink is refused); "
                                       f"remove it, or set {LOCK_DIR_ENV} to a private directory") from exc
    finally:
        os.close(dir_fd)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise LockFileError(f"refusing the lock file {path}: not a regular file with a single link; remove it")
    opened_rw = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
    return fd, opened_rw and info.st_uid == os.geteuid()  # never write into another user's file
