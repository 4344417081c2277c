"""The installation app's inbox never kills it: bad entries are moved to rejected/ with a logged reason.

Issue 15: a directory named `evil.txt`, or a prompt file deleted while it was answered, ended the app
with exit 1 (systemd then restarted it every 15 s, loading the model onto the card each time).
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

APP = Path(__file__).resolve().parents[2] / "deploy" / "installation_app.py"


HEALTHY = SimpleNamespace(health=lambda: SimpleNamespace(state="idle"))  # serve() asks only on errors


def _hostile_inbox(inbox: Path) -> None:
    (inbox / "evil.txt").mkdir()
    (inbox / "big.txt").write_text("x" * 5000)
    (inbox / "binary.txt").write_bytes(b"\x00\x01\xff\xfe")
    (inbox / "dangling.txt").symlink_to(inbox / "nowhere")
    (inbox / "outside.txt").symlink_to("/etc/hostname")
    os.mkfifo(inbox / "fifo.txt")  # reading it would block the app for ever
    (inbox / "good.txt").write_text("hello there\n")
    later = (inbox / "good.txt").stat().st_mtime + 10
    os.utime(inbox / "good.txt", (later, later))  # answered last: every bad entry is met first


def test_bad_inbox_entries_are_moved_aside(app: ModuleType, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _hostile_inbox(inbox)
    answered: list[str] = []

    def respond(history: list[tuple[str, str]], text: str) -> str:
        answered.append(text)
        return "hi"

    source = itertools.islice(app.directory_source(inbox, poll_s=0.01, max_bytes=1024), 1)
    with caplog.at_level(logging.WARNING, logger="installation"):
        assert app.serve(HEALTHY, respond, source, app.directory_sink(inbox)) == app.EXIT_OK
    assert answered == ["hello there"]
    rejected = sorted(p.name for p in (inbox / "rejected").iterdir())
    assert rejected == sorted(["evil.txt", "big.txt", "binary.txt", "dangling.txt", "outside.txt", "fifo.txt"])
    assert not list(inbox.glob("*.txt"))
    assert (inbox / "replies" / "good.txt").read_text() == "hi\n"
    reasons = " ".join(r.getMessage() for r in caplog.records)
    for reason in ("not a regular file", "larger than 1024 bytes", "not UTF-8 text"):
        assert reason in reasons


def test_a_prompt_deleted_while_answered(app: ModuleType, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "gone.txt").write_text("are you there?")
    (inbox / "next.txt").write_text("and now?")
    os.utime(inbox / "next.txt", (1e10, 1e10))

    def respond(history: list[tuple[str, str]], text: str) -> str:
        (inbox / "gone.txt").unlink(missing_ok=True)  # the visitor's kiosk took it back
        return f"answer to {text}"

    source = itertools.islice(app.directory_source(inbox, poll_s=0.01), 2)
    assert app.serve(HEALTHY, respond, source, app.directory_sink(inbox)) == app.EXIT_OK
    assert (inbox / "replies" / "gone.txt").read_text() == "answer to are you there?\n"
    assert (inbox / "replies" / "next.txt").exists() and (inbox / "done" / "next.txt").exists()


def test_a_long_stdin_line_is_refused_not_answered(app: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"y" * 10_000 + b"\nshort one\n")))
    assert list(app.stdin_source(max_bytes=1024)) == [("line-2", "short one")]


def test_the_service_survives_a_directory_named_like_a_prompt(reliability_twin: str, tmp_path: Path) -> None:
    """The issue's reproduction, as systemd runs the app: `mkdir inbox/evil.txt` used to end it with exit 1."""
    import signal
    import subprocess
    import sys
    import time

    inbox = tmp_path / "inbox"
    (inbox / "evil.txt").mkdir(parents=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NOTIFY_SOCKET": ""}
    proc = subprocess.Popen([sys.executable, str(APP), "--model", reliability_twin, "--backend", "simulated",
                             "--store", str(tmp_path / "store"), "--source", f"dir:{inbox}", "--text-logs",
                             "--options", '{"num_predict": 4}'], stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (inbox / "rejected" / "evil.txt").is_dir():
            assert proc.poll() is None and time.monotonic() < deadline, "the app ended or never read its inbox"
            time.sleep(0.1)
        (inbox / "visitor.txt").write_text("hello?")
        while not (inbox / "replies" / "visitor.txt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the app stopped answering"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read() if proc.stderr else ""
    assert code == 0, err[-2000:]
    assert "evil.txt rejected: not a regular file" in err


def test_partial_text_is_evaluated_ahead_and_never_answered(app: ModuleType, tmp_path: Path) -> None:
    """inbox/partial.txt (the visitor's words so far) goes to the prefiller while waiting, never to respond."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    history: list[tuple[str, str]] = [("human", "hi"), ("ai", " hello ")]
    prefilled: list[tuple[list[tuple[str, str]], str]] = []

    def prefill(hist: list[tuple[str, str]], text: str) -> None:
        prefilled.append((list(hist), text))
        (inbox / "line.txt").write_text("what is your name")  # the visitor finished speaking

    def respond(hist: list[tuple[str, str]], text: str) -> str:
        return " I am the lantern. "

    partial = app.PartialInbox(inbox / app.PARTIAL_NAME, prefill, history)
    (inbox / app.PARTIAL_NAME).write_text("what is your")
    source = itertools.islice(app.directory_source(inbox, poll_s=0.01, partial=partial), 1)
    assert app.serve(HEALTHY, respond, source, app.directory_sink(inbox), history=history) == app.EXIT_OK
    assert prefilled == [([("human", "hi"), ("ai", " hello ")], "what is your")]
    assert (inbox / "replies" / "line.txt").read_text() == "I am the lantern.\n"
    assert history[-1] == ("ai", " I am the lantern. ")  # kept as the model said it: its tokens are cached
    assert (inbox / app.PARTIAL_NAME).exists() and not (inbox / "rejected").exists()
    partial.answered()
    old = (inbox / app.PARTIAL_NAME).stat().st_mtime - 60
    os.utime(inbox / app.PARTIAL_NAME, (old, old))
    partial.poll()  # the partial of the answered line is stale
    assert len(prefilled) == 1


def test_a_partial_written_just_after_the_start_is_evaluated_despite_the_coarse_file_clock(
        app: ModuleType, tmp_path: Path) -> None:
    """File times come from the kernel's coarse clock: a partial written right after the inbox was set up (or
    after an answer) can carry an mtime a few ms before time.time() read then. It is new text all the same."""
    prefilled: list[str] = []
    partial = app.PartialInbox(tmp_path / app.PARTIAL_NAME, lambda hist, text: prefilled.append(text), [])
    (tmp_path / app.PARTIAL_NAME).write_text("what is your")
    lagging = partial.since - 0.004  # what a 4 ms kernel tick can give
    os.utime(tmp_path / app.PARTIAL_NAME, (lagging, lagging))
    partial.poll()
    assert prefilled == ["what is your"]
    partial.poll()  # the same version once only
    assert prefilled == ["what is your"]
    partial.answered()  # the partial that was there at the answer is stale, whatever its time
    partial.poll()
    assert prefilled == ["what is your"]
