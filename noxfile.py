"""Developer sessions: nox -s tests | lint | typecheck | demo | bench."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
PYTHON = ["3.11", "3.12"]


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "benchmarks")


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
    for script in ("bench_twin.py", "bench_sampler.py", "bench_backends.py"):
        session.run("python", f"benchmarks/{script}")
