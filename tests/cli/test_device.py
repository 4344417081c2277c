"""`ax-llm doctor / health / bench` on a machine without a card; the simulated card stands in for hardware."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from ax_llm_provider.cli import device
from tests.cli.conftest import TINY

Cli = Callable[..., tuple[int, str, str]]


def machine(monkeypatch: pytest.MonkeyPatch, *, files: tuple[str, ...] = (), modules: tuple[str, ...] = ()) -> None:
    """A pretend machine for `health`: which paths exist and which modules import."""
    monkeypatch.setattr(device, "path_exists", lambda path: any(path.endswith(f) for f in files))
    monkeypatch.setattr(device, "has_module", lambda name: name in modules)


def test_doctor_without_a_card_passes(cli: Cli) -> None:
    code, out, _ = cli("doctor")
    assert code == 0, out
    assert "[skip] card: no LLM-8850 card" in out and "result: no blocking problem found" in out


def test_doctor_with_a_model_runs_a_smoke_generation(store: Path, cli: Cli) -> None:
    code, out, err = cli("doctor", TINY, "--tokens", "3")
    assert code == 0, out + err
    assert "[ ok ] model: tiny:llama" in out and "smoke generation" in out and "backend: onnx" in out
    code, out, _ = cli("doctor", TINY, "--simulated", "--tokens", "2", "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] is True and report["smoke"]["backend"] == "simulated"


def test_doctor_failures_exit_1(store: Path, cli: Cli) -> None:
    code, out, _ = cli("doctor", "nope:1")
    assert code == 1 and "ax-llm pull nope:1" in out and "[FAIL] model" in out
    code, out, _ = cli("doctor", "--require-card", "--json")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False
    assert any(c["name"] == "require card" and c["status"] == "fail" for c in report["checks"])
    code, _, err = cli("doctor", "--tokens", "0")
    assert code == 1 and "--tokens" in err


def test_doctor_reports_the_cpu_governor(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "read_text", lambda path: "ondemand\n")
    code, out, _ = cli("doctor")
    assert code == 0 and "[warn] cpu governor: ondemand: set `performance`" in out


def test_health_without_a_card(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch)
    code, out, err = cli("health")
    assert code == 1 and out == ""
    assert err.startswith(
        "Error: no AX650N card here") and "monitors it continuously" in err and len(err.splitlines()) == 1
    code, _, err = cli("health", "--backend", "onnx")
    assert code == 1 and "has no card" in err


def test_health_on_the_simulated_card(cli: Cli) -> None:
    code, out, _ = cli("health", "--backend", "simulated")
    assert code == 0
    assert "SIMULATED" in out and "temperature" in out and "MiB free of 7040 MiB" in out
    code, out, _ = cli("health", "--backend", "simulated", "--json")
    reading = json.loads(out)
    assert code == 0 and reading["simulated"] is True and reading["device_id"] == 1 and reading["temperature_c"] > 0
    code, _, err = cli("health", "--backend", "simulated", "--device", "3")
    assert code == 1 and "card index 3" in err


def test_bench_json_on_the_simulated_card(cli: Cli) -> None:
    code, out, err = cli("bench", "--backend", "simulated", "--preset", "qwen3-0.6b-w8a16", "--json", "--tokens", "3")
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1  # one JSON object
    result = json.loads(out)
    assert result["preset"] == "qwen3-0.6b-w8a16" and result["tokens"] == 3
    assert 0 < result["projected_tok_s"] <= result["device_bound_tok_s"]
    assert result["baseline_projected_tok_s"] < result["projected_tok_s"]


def test_bench_human_output_and_errors(cli: Cli) -> None:
    code, out, _ = cli("bench", "--preset", "qwen2.5-0.5b-w4a16", "--tokens", "2")
    assert code == 0 and out.startswith("SIMULATED card") and "device-bound" in out and "published" in out
    code, _, err = cli("bench", "--backend", "onnx")
    assert code == 1 and "--backend simulated" in err
    code, _, err = cli("bench", "--preset", "llama-70b")
    assert code == 1 and "unknown simulated-card preset" in err
    code, _, err = cli("bench", "--tokens", "0")
    assert code == 1 and "--tokens" in err
    assert cli("bench", "--kv-write", "teleport")[0] == 2


def test_serve_wires_the_engine_of_this_process(store: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = pytest.importorskip("ax_llm_provider.server.runner", reason="the server module is not in this tree")
    calls: list[tuple[str, int, object]] = []
    monkeypatch.setattr(runner, "serve", lambda host, port, *, engine, log_level, **limits: calls.append(
        (host, port, engine, limits)))
    monkeypatch.setenv("OLLAMA_ORIGINS", "https://a.example")
    code, _, err = cli("serve", "--port", "18080", "--preload", TINY, "--origins", "https://b.example",
                       "--max-body-bytes", "4096", "--head-timeout", "3")
    assert code == 0, err
    host, port, engine, limits = calls[0]
    assert (host, port) == ("127.0.0.1", 18080)
    assert [m["name"] for m in engine.ps()["models"]] == [TINY]  # type: ignore[attr-defined]
    guard = limits["guard"]
    assert guard.origins == ("https://a.example", "https://b.example") and guard.max_body_bytes == 4096
    assert limits["head_timeout_s"] == 3 and limits["keep_alive_s"] == 5


def test_serve_refuses_nonsense_limits(cli: Cli) -> None:
    code, _, err = cli("serve", "--max-body-bytes", "0")
    assert code == 1 and "positive" in err


def test_serve_without_the_server_module(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "ax_llm_provider.server.runner", None)
    code, _, err = cli("serve")
    assert code == 1 and "pip install 'ax-llm-provider[server]'" in err


def test_serve_passes_the_fallback_model_to_the_engine(store: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = pytest.importorskip("ax_llm_provider.server.runner", reason="the server module is not in this tree")
    engines: list[object] = []
    monkeypatch.setattr(runner, "serve", lambda host, port, *, engine, **rest: engines.append(engine))
    code, _, err = cli("serve", "--fallback-model", TINY)
    assert code == 0, err
    fallback = engines[0].fallback  # type: ignore[attr-defined]
    assert fallback is not None and fallback.mode.config.model == TINY and not fallback.mode.active
