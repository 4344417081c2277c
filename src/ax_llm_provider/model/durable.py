"""The store after a crash or a power cut: renames that survive, and leftovers that are cleaned.

A model directory appears in the store by one rename of a finished temporary directory. Without
fsync, a power cut shortly after the rename can leave the new name pointing at empty or truncated
files (ext4 orders data and rename only with auto_da_alloc, and only for files replaced by rename).
`durable_rename` therefore fsyncs every file and directory of the new tree before the rename and the
parent directory after it.

A SIGKILL or a power cut during a pull leaves temporary files behind: wheels in `_downloads/tmp*`,
`.<tag>.partial-<pid>-<suffix>` conversions and embedding assemblies, `.<tag>.old-<hex>` replaced
models. `clean_stale_partials` removes only those names, and only when their owner
process is gone (the name carries its pid) or they are older than a grace period; Hugging Face
bundle downloads (`.<tag>.partial`, resumable) are left for the next pull to resume.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)

DOWNLOADS = "_downloads"
STALE_AFTER_S = 6 * 3600.0
_OWNED = re.compile(r"^(?:tmp-|\..+\.partial-)(?P<pid>\d+)-")  # our names that record their creator
_UNOWNED = (re.compile(r"^tmp"), re.compile(r"^\..+\.old-[0-9a-f]{8}$"))


def fsync_path(path: Path) -> None:
    """fsync one file or directory (directories are opened read-only, as POSIX allows)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every regular file under root, then every directory, deepest first, root last."""
    directories = []
    for current, _dirs, files in os.walk(root):
        for name in files:
            path = Path(current) / name
            if path.is_file() and not path.is_symlink():
                fsync_path(path)
        directories.append(Path(current))
    for directory in reversed(directories):
        fsync_path(directory)


def durable_rename(src: Path, dest: Path) -> None:
    """Rename a finished file or tree into place so that a power cut leaves either nothing or all of it."""
    if src.is_dir():
        fsync_tree(src)
    else:
        fsync_path(src)
    os.replace(src, dest)
    fsync_path(dest.parent)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _is_stale(entry: Path, now: float, grace_s: float) -> bool:
    try:
        age = now - entry.lstat().st_mtime
    except FileNotFoundError:
        return False
    owned = _OWNED.match(entry.name)
    if owned is not None:
        return age > grace_s or not _pid_alive(int(owned["pid"]))
    return age > grace_s and any(p.match(entry.name) for p in _UNOWNED)


def _remove(entry: Path) -> int:
    """Remove a leftover (never following a link out of the store); returns the bytes freed."""
    if entry.is_symlink() or not entry.is_dir():
        size = entry.lstat().st_size
        entry.unlink()
        return size
    size = sum(p.lstat().st_size for p in entry.rglob("*") if not p.is_symlink() and p.is_file())
    shutil.rmtree(entry)
    return size


def clean_stale_partials(root: Path, grace_s: float = STALE_AFTER_S, now: float | None = None) -> list[Path]:
    """Remove the leftovers of interrupted pulls and conversions under the store `root`; return them."""
    now = time.time() if now is None else now
    candidates: list[Path] = []
    downloads = root / DOWNLOADS
    if downloads.is_dir():
        candidates += [p for p in downloads.iterdir() if p.name.startswith("tmp")]
    if root.is_dir():
        for family in root.iterdir():
            if family.is_dir() and not family.is_symlink() and not family.name.startswith((".", "_")):
                candidates += [p for p in family.iterdir() if p.name.startswith(".")]
    removed = []
    for entry in candidates:
        if not _is_stale(entry, now, grace_s):
            continue
        try:
            freed = _remove(entry)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning("could not remove the leftover %s: %s", entry, exc)
            continue
        log.info("removed %s, left by an interrupted pull or conversion (%.1f MB)", entry, freed / 1e6)
        removed.append(entry)
    return removed
