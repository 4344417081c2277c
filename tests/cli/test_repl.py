"""The interactive chat of `ax-llm run`, driven by feeding stdin."""

from __future__ import annotations

import argparse
import io
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from ax_llm_provider.cli.repl import Repl
from ax_llm_provider.cli.run import ChatSession
from tests.cli.conftest import TINY, FakeStdin

Cli = Callable[..., tuple[int, str, str]]
FEW = ("-o", "num_predict=3", "-o", "seed=1")


def reuse(err: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in re.findall(r"prompt cache reuse:\s+(\d+) of (\d+)", err)]


def test_conversation_is_resent_and_reuses_the_prefix(store: Path, cli: Cli, stdin: Callable[..., None]) -> None:
    stdin("Hello there\nAnd then?\n/bye\n")
    code, out, err = cli("run", TINY, "-i", "--verbose", *FEW)
    assert code == 0, err
    turns = reuse(err)
    assert len(turns) == 2
    assert turns[0][0] == 0 and turns[1][1] > turns[0][1]  # the second prompt holds the first turn
    assert turns[1][0] > 0  # ... and only its new part is prefilled


def test_slash_commands(store: Path, cli: Cli, stdin: Callable[..., None]) -> None:
    stdin("\n".join([
        "/?", "/? set", "/? show", "/? shortcuts", "/set", "/set parameter",
        "/set parameter temperature 0", "/set parameter stop # [", "/set parameter nosuch 1",
        "/set parameter top_k lots", "/show parameters", "/set system Be brief.", "/show system",
        "/set format json", "/set noformat", "/set verbose", "/set quiet", "/set nowordwrap", "/set think",
        "/set nothink", "/set frobnicate", "/show info", "/show template", "/show modelfile", "/show license",
        "/show", "/clear", "/frobnicate", "/bye",
    ]) + "\n")
    code, out, err = cli("run", TINY, "-i")
    assert code == 0, err
    for expected in ("Available Commands:", "/set parameter ...", "/show info", "Ctrl + d",
                     "Available Parameters:", "Set parameter 'temperature' to '0'",
                     "Set parameter 'stop' to '#, ['", "Couldn't set parameter: unknown option 'nosuch'",
                     "Couldn't set parameter: option \"top_k\" must be of type integer",
                     "User defined parameters:", "temperature", "Set system message.", "Be brief.",
                     "Set format to 'json' mode.", "Disabled format.", "Set 'verbose' mode.", "Set 'quiet' mode.",
                     "Set 'nowordwrap' mode.", "Set 'think' mode.", "Set 'nothink' mode.",
                     "Unknown command '/set frobnicate'", "architecture", "Capabilities", "<|im_start|>",
                     "FROM ", "No license", "Cleared session context", "Unknown command '/frobnicate'"):
        assert expected in out, expected


def test_system_message_and_clear(store: Path, stdin: Callable[..., None], cli: Cli,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    bodies: list[dict[str, object]] = []
    original = ChatSession.request

    def spy(self: ChatSession) -> dict[str, object]:
        bodies.append(original(self))
        return bodies[-1]

    monkeypatch.setattr(ChatSession, "request", spy)
    stdin("/set system You are terse.\none\n/clear\ntwo\n")
    code, _, err = cli("run", TINY, "-i", *FEW)
    assert code == 0, err  # end of input leaves like /bye
    first, second = bodies[0]["messages"], bodies[1]["messages"]
    assert first == [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "one"}]
    assert second == [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "two"}]


def test_multi_line_input() -> None:
    session = argparse.Namespace()
    repl = Repl(session, argparse.Namespace(), stdin=FakeStdin('"""first line\nsecond line\nend"""\n'
                                                                 '"""one line"""\n/set system """Be\nkind."""\n',
                                                                 tty=False),
                out=io.StringIO(), err=io.StringIO())  # type: ignore[arg-type]
    assert repl.read_message() == "first line\nsecond line\nend"
    assert repl.read_message() == "one line"
    assert repl.read_message() == "/set system Be\nkind."
    assert repl.read_message() is None


def test_terminal_without_prompt_is_interactive(store: Path, cli: Cli, stdin: Callable[..., None]) -> None:
    stdin("/bye\n", tty=True)
    code, out, err = cli("run", TINY)
    assert code == 0, err
    assert ">>> " in out  # input() prompts on the terminal


def test_ctrl_c_cuts_a_reply_and_the_chat_goes_on(store: Path, cli: Cli, stdin: Callable[..., None],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    original = ChatSession.send

    def flaky(self: ChatSession, text: str) -> dict[str, object]:
        calls.append(text)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return original(self, text)

    monkeypatch.setattr(ChatSession, "send", flaky)
    stdin("first\nsecond\n/bye\n")
    code, _, err = cli("run", TINY, "-i", *FEW)
    assert code == 0 and calls == ["first", "second"], err


def test_errors_in_the_chat_do_not_end_it(store: Path, cli: Cli, stdin: Callable[..., None]) -> None:
    stdin("/set think\nhello\n/set nothink\n/load nope\n/load\n/load tiny:llama\nhello again\n/bye\n")
    code, out, err = cli("run", TINY, "-i", *FEW)
    assert code == 0
    assert "does not support thinking" in err
    assert 'model "nope:latest" not found' in err
    assert "Usage:\n  /load <model>" in out and "Loading model 'tiny:llama'" in out


def test_prompt_with_interactive_flag_answers_then_chats(store: Path, cli: Cli, stdin: Callable[..., None]) -> None:
    stdin("/bye\n")
    code, _, err = cli("run", TINY, "first question", "-i", "--verbose", *FEW)
    assert code == 0 and len(reuse(err)) == 1


def test_a_failed_turn_is_forgotten(store: Path, cli: Cli, stdin: Callable[..., None],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    bodies: list[dict[str, object]] = []
    original = ChatSession.request

    def spy(self: ChatSession) -> dict[str, object]:
        bodies.append(original(self))
        return bodies[-1]

    monkeypatch.setattr(ChatSession, "request", spy)
    stdin("/set think\nfirst\n/set nothink\nsecond\n/set parameter num_ctx 0\n/bye\n")
    code, _, err = cli("run", TINY, "-i", *FEW)
    assert code == 0 and "does not support thinking" in err
    assert bodies[-1]["messages"] == [{"role": "user", "content": "second"}]
