"""`ax-llm run` one-shot: through Engine.chat, Ollama's --verbose figures, options, exit codes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ax_llm_provider.cli.run import ChatSession
from tests.cli.conftest import TINY

Cli = Callable[..., tuple[int, str, str]]
FEW = ("-o", "num_predict=4", "-o", "seed=1")


def test_version_help_and_usage_errors(cli: Cli) -> None:
    code, out, _ = cli("--version")
    assert code == 0 and "ax-llm 0." in out
    assert cli("--help")[0] == 0
    assert cli()[0] == 2  # no command
    code, _, err = cli("frobnicate")
    assert code == 2 and "invalid choice" in err


def test_one_shot_streams_through_the_engine_with_verbose_stats(store: Path, cli: Cli) -> None:
    code, out, err = cli("run", TINY, "Hello there", "--verbose", *FEW)
    assert code == 0, err
    assert out.endswith("\n") or out == ""
    for label in ("total duration:", "load duration:", "prompt eval count:", "prompt eval duration:",
                  "prompt eval rate:", "eval count:", "eval duration:", "eval rate:", "prompt cache reuse:",
                  "truncation:", "backend:"):
        assert label in err
    assert "eval count:           4 token(s)" in err or "done reason:          stop" in err
    assert "backend:              onnx" in err


def test_prompt_from_stdin_when_not_a_terminal(store: Path, cli: Cli, stdin: Callable[..., None]) -> None:
    stdin("Summarize: the sky is blue.\n", tty=False)
    code, _, err = cli("run", TINY, "--verbose", *FEW)
    assert code == 0, err
    assert "prompt eval count:" in err


def test_empty_stdin_only_loads_the_model(store: Path, cli: Cli, stdin: Callable[..., None]) -> None:
    stdin("", tty=False)
    code, out, err = cli("run", TINY)
    assert (code, out) == (0, ""), err
    code, out, _ = cli("ps")
    assert TINY in out


def test_truncation_is_reported(store: Path, cli: Cli) -> None:
    long_prompt = " ".join(["The quick brown fox jumps over the lazy dog."] * 30)
    code, _, err = cli("run", TINY, long_prompt, "--verbose", "-o", "num_ctx=64", *FEW)
    assert code == 0, err
    line = next(x for x in err.splitlines() if x.startswith("truncation:"))
    assert "none" not in line and "64-token window" in line


def test_format_json_and_options_reach_the_request(store: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, object]] = []
    original = ChatSession.request

    def spy(self: ChatSession) -> dict[str, object]:
        body = original(self)
        seen.append(body)
        return body

    monkeypatch.setattr(ChatSession, "request", spy)
    code, out, err = cli("run", TINY, "Give me JSON", "--format", "json", "--keepalive", "5m",
                         "-o", "temperature=0", "-o", "stop=#", "-o", "stop=[", "--num-predict", "6")
    assert code == 0, err
    body = seen[0]
    assert body["format"] == "json" and body["keep_alive"] == "5m" and body["stream"] is True
    assert body["options"] == {"temperature": 0, "stop": ["#", "["], "num_predict": 6}
    assert body["messages"] == [{"role": "user", "content": "Give me JSON"}]


@pytest.mark.parametrize("argv, message", [
    (("-o", "temperature=hot"), 'option "temperature" must be of type number'),
    (("-o", "nosuch=1"), "unknown option 'nosuch'"),
    (("-o", "temperature"), "NAME=VALUE"),
    (("--format", "yaml"), '--format takes "json"'),
    (("--format", "{not json"), "not a valid JSON schema"),
    (("--think", "loud"), "--think takes"),
    (("--keepalive", "soon"), "--keepalive"),
])
def test_usage_errors_exit_2(store: Path, cli: Cli, argv: tuple[str, ...], message: str) -> None:
    code, out, err = cli("run", TINY, "hi", *argv)
    assert code == 2 and message in err and err.startswith("Error: ")
    assert "Traceback" not in err


def test_errors_exit_1_with_one_line(store: Path, cli: Cli) -> None:
    code, _, err = cli("run", "nope", "hi")
    assert code == 1
    assert err.strip().splitlines() == [err.strip()] and 'model "nope:latest" not found' in err
    code, _, err = cli("run", TINY, "hi", "--think")
    assert code == 1 and "does not support thinking" in err
    code, _, err = cli("run", "Bad Name!", "hi")
    assert code == 1 and "invalid model name" in err
    code, _, err = cli("run", str(store / "missing-dir"), "hi")
    assert code == 1 and "does not exist" in err


def test_traceback_only_with_debug_logging(store: Path, cli: Cli) -> None:
    code, _, err = cli("--log-level", "DEBUG", "run", "nope", "hi")
    assert code == 1 and "Traceback" in err and 'Error: model "nope:latest" not found' in err


def test_ctrl_c_exits_130(store: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(self: ChatSession, text: str) -> dict[str, object]:
        raise KeyboardInterrupt

    monkeypatch.setattr(ChatSession, "send", interrupted)
    assert cli("run", TINY, "hi")[0] == 130


def test_model_directory_in_place_of_a_name(store: Path, cli: Cli) -> None:
    code, _, err = cli("run", str(store / "tiny" / "llama"), "hi", *FEW)
    assert code == 0, err


def test_backend_that_cannot_run_a_twin(store: Path, cli: Cli) -> None:
    code, _, err = cli("run", TINY, "hi", "--backend", "axcl")
    assert code == 1 and err.startswith("Error: ")


def test_console_entry_point() -> None:
    done = subprocess.run([sys.executable, "-m", "ax_llm_provider.cli", "--version"], capture_output=True,
                          text=True, check=False, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("ax-llm ")


def test_simulated_card_backend(store: Path, cli: Cli) -> None:
    code, _, err = cli("run", TINY, "hi", "--backend", "simulated", "--verbose", *FEW)
    assert code == 0, err
    assert "backend:              simulated" in err


def test_human_formats() -> None:
    from ax_llm_provider.cli.common import human_bytes, human_duration_ns, human_since, human_until

    assert [human_duration_ns(n) for n in (0, 830e3, 120.5e6, 1.52e9, 12.345e9, 125e9)] == \
        ["0s", "830µs", "120.5ms", "1.52s", "12.35s", "2m5.0s"]
    assert [human_bytes(n) for n in (512, 23e6, 598e6, 1.9e9)] == ["512 B", "23 MB", "598 MB", "1.9 GB"]
    assert human_since(1000.0, now=1000.0 + 7200) == "2 hours ago"
    assert human_since(1000.0, now=1030.0) == "Less than a minute ago"
    assert human_until(None) == "Forever" and human_until(1000.0 + 300, now=1000.0) == "5 minutes from now"
