"""Developer sessions: nox -s tests | fast | lint | typecheck | demo | bench | reliability | arm64."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
PYTHON = ["3.11", "3.12"]


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


# The everyday tier: pure unit tests, the tiny-model contract tests and the CLI, without the statistical
# runs (slow), the real SmolLM2 (golden), the docs build and the card (npu). `nox -s tests` runs everything.
FAST = ("tests/unit", "tests/contract", "tests/cli", "-m", "not slow and not golden and not docs and not npu",
        "-p", "no:cacheprovider", "-q")


@nox.session(python="3.11")
def fast(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("pytest", *FAST, *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "benchmarks", "deploy", "scripts")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[test]", "mypy")
    session.run("mypy", "src/ax_llm_provider")


@nox.session
def demo(session: nox.Session) -> None:
    session.install("-e", ".[cpu]")
    session.run("ax-llm", "run", "smollm2:135m", "What is the capital city of France? Answer with one word.")


@nox.session
def bench(session: nox.Session) -> None:
    session.install("-e", ".[cpu]")
    for script in ("bench_twin.py", "bench_twin_weights.py", "bench_sampler.py", "bench_engine.py", "bench_backends.py"):
        session.run("python", f"benchmarks/{script}")


@nox.session
def reliability(session: nox.Session) -> None:
    """Unattended-operation proof with the full counts: fault injection (100 runs per fault class), a
    5,000-request soak per backend, a day soak (24 simulated hours: keep_alive, fan stalls, faults, card
    losses), SIGTERM during load and generation, the 50 MB body and the 20 MB prompt (peak and retained RSS),
    hostile origins and slow clients against the server (tests/reliability). Figures are printed at the end
    and appended as JSON lines to .nox/reliability-report.jsonl."""
    session.install("-e", ".[test]")
    session.env.setdefault("AX_LLM_RELIABILITY_FULL", "1")
    session.env.setdefault("AX_LLM_RELIABILITY_REPORT", ".nox/reliability-report.jsonl")
    session.run("pytest", "tests/reliability", "-p", "no:cacheprovider", "--timeout=3600", *session.posargs)


@nox.session
def arm64(session: nox.Session) -> None:
    """The Pi's architecture under qemu-user emulation: install, the README's main job, the unit, contract,
    golden and simulated-card tests, deploy/install-pi.sh --dry-run (scripts/arm64_check.py; pass part names
    after `--`, e.g. `nox -s arm64 -- --parts main,golden`). Needs root or qemu-user-static + mmdebstrap; the
    arm64 root and venv are cached in ~/.cache/ax-llm-arm64 ($AX_LLM_ARM64_CACHE)."""
    session.run("python", "scripts/arm64_check.py", *session.posargs)
