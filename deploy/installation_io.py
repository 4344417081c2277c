"""Where the installation app's prompts come from and where its replies go (deploy/installation_app.py).

Sources yield (name, prompt text): stdin lines, or `*.txt` files dropped into an inbox directory. Sinks
take (name, reply): stdout, or `replies/<name>` in the inbox with the prompt moved to `done/`. Nothing a
source is given can stop the app: an inbox entry that is not a regular UTF-8 text file of at most
`max_bytes` is moved to `rejected/` with a logged reason, and an over-long stdin line is skipped.
`PartialInbox` reads `partial.txt`, the visitor's words so far, and has them evaluated ahead.
"""

from __future__ import annotations

import itertools
import logging
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger("installation")
# A visitor's question is a few hundred bytes; 64 KiB is far above any prompt the model's window takes.
MAX_PROMPT_BYTES = 64 * 1024
PARTIAL_NAME = "partial.txt"  # the visitor's words so far; never a prompt

History = list[tuple[str, str]]
Prefill = Callable[[History, str], None]
SentenceSink = Callable[[str, str], None]  # (prompt name, sentence)


class PartialInbox:
    """root/partial.txt: each new version is evaluated ahead (num_predict 0); stale after every answered prompt.

    "Stale" is judged two ways, because file times come from the kernel's coarse clock (a file written just after
    time.time() can carry an earlier mtime): a partial older than the last answer by more than that clock's tick,
    or exactly the partial that was there when the answer came (its mtime and text).
    """

    TICK_S = 0.02  # a file time may lag time.time() by one kernel tick (1-10 ms)

    def __init__(self, path: Path, prefill: Prefill, history: History, max_bytes: int = MAX_PROMPT_BYTES) -> None:
        self.path, self.prefill, self.history, self.max_bytes = path, prefill, history, max_bytes
        self.seen: tuple[float, str] | None = None
        self.answered()  # what is there at start belongs to a prompt before this run

    def _current(self) -> tuple[float, str] | None:
        try:
            mtime = self.path.stat().st_mtime
            return mtime, read_prompt(self.path, self.max_bytes)
        except (FileNotFoundError, Rejected):
            return None  # no partial text (or not one to use): the prompt will be prefilled whole

    def poll(self) -> None:
        current = self._current()
        if current is None or not current[1] or current[0] < self.since - self.TICK_S:
            return
        if current in (self.seen, self.stale):
            return
        self.seen = current
        try:
            self.prefill(self.history, current[1])
        except Exception as exc:  # noqa: BLE001 -- evaluating ahead is an optimisation; the prompt still comes
            log.warning("evaluating the partial text ahead failed: %s: %s", type(exc).__name__, exc)

    def answered(self) -> None:
        self.since, self.seen = time.time(), None
        self.stale = self._current()


def stdin_source(max_bytes: int = MAX_PROMPT_BYTES) -> Iterator[tuple[str, str]]:
    """Non-empty stdin lines; a line longer than max_bytes is skipped (read in bounded pieces, logged)."""
    stream = sys.stdin.buffer
    for number in itertools.count(1):
        line = stream.readline(max_bytes + 1)
        if not line:
            return
        if len(line) > max_bytes and not line.endswith(b"\n"):
            while (rest := stream.readline(1 << 16)) and not rest.endswith(b"\n"):
                pass
            log.warning("stdin line %d refused: longer than %d bytes", number, max_bytes)
            continue
        text = line.decode("utf-8", errors="replace").strip()
        if text:
            yield f"line-{number}", text


def stdout_sink(name: str, reply: str) -> None:
    print(" ".join(reply.splitlines()), flush=True)  # one line per reply, whatever separators the model wrote


def stdout_sentence_sink(name: str, sentence: str) -> None:
    print(" ".join(sentence.splitlines()), flush=True)


def stdout_reply_end(name: str, reply: str) -> None:
    print(flush=True)  # the sentences are out already; an empty line ends the reply


class Rejected(Exception):
    """An inbox entry that cannot be a prompt; the message is the reason logged when it is moved aside."""


def read_prompt(path: Path, max_bytes: int) -> str:
    """The text of a regular UTF-8 file of at most max_bytes, read without following a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as exc:  # a symlink (ELOOP), no permission, ...
        raise Rejected(f"cannot be opened as a regular file ({exc.strerror})") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Rejected("not a regular file")
        data = b""
        while len(data) <= max_bytes and (piece := os.read(fd, max_bytes + 1 - len(data))):
            data += piece
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise Rejected(f"larger than {max_bytes} bytes")
    if b"\0" in data:
        raise Rejected("not UTF-8 text (binary content)")
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise Rejected(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def move_aside(root: Path, path: Path, reason: str) -> None:
    """Move a bad entry to root/rejected/ (a new name if taken) and log why; never raises."""
    rejected = root / "rejected"
    target = rejected / path.name
    try:
        rejected.mkdir(exist_ok=True)
        if target.exists() or target.is_symlink():
            target = rejected / f"{path.name}.{time.time_ns()}"
        os.replace(path, target)
    except OSError as exc:
        log.error("inbox entry %s is bad (%s) and could not be moved to %s: %s", path.name, reason, rejected, exc)
        return
    log.warning("inbox entry %s rejected: %s; moved to %s", path.name, reason, target)


def _age(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0  # vanished or unreadable: met first, and handled by the reader


def directory_source(root: Path, poll_s: float = 0.2, max_bytes: int = MAX_PROMPT_BYTES,
                     partial: PartialInbox | None = None) -> Iterator[tuple[str, str]]:
    """Each `*.txt` in root, oldest first (the sink moves it to root/done once answered). Runs until stopped.

    While no prompt waits, `partial` (root/partial.txt, never a prompt) is polled and evaluated ahead.

    Entries that are not prompts (directories, links, FIFOs, files over max_bytes, binary or non-UTF-8
    content) are moved to root/rejected/ with a logged reason; an entry gone before it is read is skipped.
    """
    stuck: set[str] = set()  # bad entries that could not be moved: not retried in a tight loop
    while True:
        entries = sorted((p for p in root.glob("*.txt") if p.name not in stuck and p.name != PARTIAL_NAME), key=_age)
        if not entries:
            if partial is not None:
                partial.poll()
            time.sleep(poll_s)
            continue
        for path in entries:
            try:
                text = read_prompt(path, max_bytes)
            except FileNotFoundError:
                continue  # taken back before it was read
            except Rejected as exc:
                move_aside(root, path, str(exc))
                if path.exists() or path.is_symlink():
                    stuck.add(path.name)
                continue
            yield path.name, text
            if partial is not None:
                partial.answered()


def directory_sink(root: Path) -> Callable[[str, str], None]:
    """Write the reply to root/replies/<name> (atomically), then move the prompt to root/done/.

    A prompt deleted while it was answered still gets its reply; a reply that cannot be written (disk
    full) is logged and its prompt moved aside, so it is not answered again and again.
    """
    replies, done = root / "replies", root / "done"
    replies.mkdir(parents=True, exist_ok=True)
    done.mkdir(parents=True, exist_ok=True)

    def sink(name: str, reply: str) -> None:
        tmp = replies / f".{name}.tmp"
        try:
            tmp.write_text(reply + "\n", encoding="utf-8")
            tmp.replace(replies / name)  # atomic for whoever speaks the replies
        except OSError as exc:
            log.error("the reply to %s could not be written: %s", name, exc)
            tmp.unlink(missing_ok=True)
            move_aside(root, root / name, f"its reply could not be written ({exc.strerror})")
            return
        try:
            (root / name).replace(done / name)
        except FileNotFoundError:
            log.warning("prompt %s was removed while it was answered; the reply is in %s", name, replies)
        except OSError as exc:
            move_aside(root, root / name, f"could not be moved to {done} ({exc.strerror})")

    return sink


def directory_sentence_sink(root: Path) -> SentenceSink:
    """Append each sentence to root/replies/<name>.sentences as it forms (one per line, flushed)."""
    replies = root / "replies"
    replies.mkdir(parents=True, exist_ok=True)

    def sink(name: str, sentence: str) -> None:
        with (replies / f"{name}.sentences").open("a", encoding="utf-8") as out:
            out.write(" ".join(sentence.splitlines()) + "\n")

    return sink
