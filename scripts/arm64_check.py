"""Install, the README's main job and the engine's tests on aarch64, under qemu-user emulation on an x86 host.

    python scripts/arm64_check.py                 # every part (nox -s arm64)
    python scripts/arm64_check.py --ci            # the part of it that fits the CI budget (.ci/run)
    python scripts/arm64_check.py --parts main,golden

Parts (each reports PASS/FAIL with its emulated wall time and the host CPU time it used):
  install   the project wheel and its dependencies from aarch64 wheels into an emulated venv (+ `pip check`)
  main      the README's main job: `ax-llm run smollm2:135m "..."`, the pull converting the GGUF on aarch64
            (sampled, as in the README: it must answer; the golden part checks exact greedy outputs)
  golden    greedy output of the default model equals the recorded (x86) golden texts (--ci: the README's prompt only)
  simcard   the AXCL / pyaxengine backends against the simulated card
  unit      tests/unit (without the simcard files, and without tests that start child processes)
  contract  tests/contract on the tiny random models (without the simcard files)
  deploy    deploy/install-pi.sh --dry-run, and its pip step resolved on aarch64 (not with --ci)
The root and the venv are cached (see arm64_env.py); changed dependency lists rebuild the venv.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from arm64_env import (
    Emulator,
    SetupError,
    Venv,
    build_root,
    build_venv,
    build_wheel,
    default_cache,
    ensure_host_tools,
    model_file_overrides,
)

log = logging.getLogger("arm64")
REPO = Path(__file__).resolve().parent.parent
# Every runtime extra (what install-pi.sh installs, langchain,cpu + axengine, and the rest): the unit and
# contract tests import them all. The CI subset (main job, golden, dry run) needs only the CPU twin and
# structured output, and installs only those: the emulated pip costs CI minutes per package.
EXTRAS = "cpu,structured,langchain,llamaindex,server,axengine"
CI_EXTRAS = "cpu,structured"
TEST_REQUIREMENTS = ("pytest>=8", "pytest-timeout>=2.2", "hypothesis>=6.100", "jsonschema>=4.20")
RELEASES = "https://github.com/AXERA-TECH/{}/releases/download/TAG/{}-TAG-py3-none-any.whl"  # never fetched
WHEEL_URLS = ("--pyaxcl-wheel-url", RELEASES.format("pyaxcl", "pyAXCL"),
              "--pyaxengine-wheel-url", RELEASES.format("pyaxengine", "axengine"))
PROMPT = "What is the capital city of France? Answer with one word."
SIMCARD_TESTS = ("tests/unit/test_simcard.py", "tests/unit/test_simcard_axengine.py",
                 "tests/contract/test_axcl_parity.py", "tests/contract/test_axcl_faults.py",
                 "tests/contract/test_axcl_budget.py", "tests/contract/test_axengine_backend.py")
# a qemu-user guest cannot exec another aarch64 program without binfmt_misc (tests marked `spawns`), and
# emulated host code is far slower than on a Pi (tests marked `hostspeed` assert on it)
# emulated, everything takes ~45x its x86 CPU time: the slowest tests are listed, and a hung test fails
# with its stack after 30 minutes instead of holding up the part (tests with their own timeout keep it)
PYTEST = ("-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not spawns and not hostspeed",
          "--durations=15", "--timeout=1800")
ALL_PARTS = ("install", "main", "golden", "simcard", "unit", "contract", "deploy")
CI_PARTS = ("install", "main", "golden", "deploy")


@dataclass
class Outcome:
    part: str
    passed: bool
    wall: float
    cpu: float
    note: str = ""


def _cpu_children() -> float:
    times = os.times()
    return times.children_user + times.children_system


class Runner:
    """Runs commands under emulation with the environment of one check run (a fresh model store)."""

    def __init__(self, emu: Emulator, venv: Venv, wheel: Path, env: dict[str, str], ci: bool) -> None:
        self.emu, self.venv, self.wheel, self.env, self.ci = emu, venv, wheel, env, ci

    def python(self, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
        log.info("aarch64$ python %s", " ".join(args))
        return subprocess.run(self.emu.argv(self.venv.python, *args), cwd=REPO, env=self.env, text=True,
                              capture_output=True, timeout=timeout, check=False)

    def pytest(self, *args: str) -> tuple[bool, str]:
        result = self.python(*PYTEST, *args)
        lines = result.stdout.strip().splitlines()
        # prefixed, so that a CI log's last pytest summary line stays the main (x86) suite's
        print("\n".join(f"aarch64| {line}" for line in lines[-80:]))
        print("\n".join(f"aarch64| {line}" for line in result.stderr.strip().splitlines()[-40:]))
        return result.returncode == 0, (lines[-1].strip("= ") if lines else "no output")


def part_install(runner: Runner) -> tuple[bool, str]:
    check = runner.python("-m", "pip", "check", "--disable-pip-version-check")
    probe = runner.python("-c", "import platform, onnxruntime, numpy, tokenizers, llguidance, ax_llm_provider; "
                                "print(platform.machine(), platform.python_version(), 'onnxruntime', "
                                "onnxruntime.__version__, onnxruntime.get_available_providers())")
    print(check.stdout.strip(), check.stderr.strip(), probe.stdout.strip(), probe.stderr.strip()[-2000:], sep="\n")
    how = "installed from nothing" if runner.venv.fresh else "cached venv, project wheel reinstalled"
    ok = check.returncode == 0 and probe.returncode == 0 and probe.stdout.startswith("aarch64")
    return ok, f"{how}; {probe.stdout.strip()[:90]}"


def part_main(runner: Runner) -> tuple[bool, str]:
    result = runner.python(str(runner.venv.path / "bin" / "ax-llm"), "run", "smollm2:135m", PROMPT)
    answer = result.stdout.strip()
    print(answer, result.stderr.strip()[-3000:], sep="\n")
    # The README's command samples (temperature 0.8, fresh seed) like Ollama: the answer varies from run to run,
    # so only success and a non-empty answer are checked here; exact greedy outputs are the golden part's.
    return result.returncode == 0 and bool(answer), repr(answer[-80:])


def part_golden(runner: Runner) -> tuple[bool, str]:
    if runner.ci:  # the CI budget: the README's prompt only (9 new tokens; llama.cpp agrees on it)
        return runner.pytest("tests/golden/test_engine_golden.py", "-k", "greedy_chat_matches_golden and messages0")
    return runner.pytest("tests/golden/test_engine_golden.py",
                         "-k", "greedy_chat_matches_golden or temperature_zero_is_the_argmax_path")


def part_simcard(runner: Runner) -> tuple[bool, str]:
    return runner.pytest(*SIMCARD_TESTS)


def part_unit(runner: Runner) -> tuple[bool, str]:
    return runner.pytest("tests/unit", *(f"--ignore={t}" for t in SIMCARD_TESTS if t.startswith("tests/unit")))


def part_contract(runner: Runner) -> tuple[bool, str]:
    return runner.pytest("tests/contract", *(f"--ignore={t}" for t in SIMCARD_TESTS if "contract" in t))


def part_deploy(runner: Runner) -> tuple[bool, str]:
    # The script is interpreted by the root's aarch64 bash; the programs it starts (sed, mktemp, uname...) are
    # the host's, as qemu-user hands execve to the host kernel, so `uname -m` in it says x86_64 and its arm64
    # check is skipped. The machine is checked from aarch64 Python, and its pip steps resolved on aarch64.
    bash = str(runner.emu.root / "bin" / "bash")
    dry = subprocess.run(runner.emu.argv(bash, "deploy/install-pi.sh", "--dry-run", "--skip-checks", "--no-start",
                                         *WHEEL_URLS), cwd=REPO, text=True,
                         capture_output=True, check=False)
    print(dry.stdout[-1500:], dry.stderr[-1500:], sep="\n")
    extras = install_pi_extras(dry.stderr)  # a dry run prints each command on stderr, `+ ...`
    if dry.returncode != 0 or not extras:
        return False, f"dry run rc={dry.returncode}, pip extras in it: {extras or 'none found'}"
    machine = runner.python("-c", "import os; print(os.uname().machine)").stdout.strip()
    shell = f"aarch64 bash: dry run rc=0, extras [{extras}]; os.uname().machine={machine}"
    if runner.ci:  # the emulated pip resolution alone costs about 1.5 CPU minutes
        return machine == "aarch64", f"{shell} (pip resolution: nox only)"
    resolve = runner.python("-m", "pip", "install", "--dry-run", "-q", "--disable-pip-version-check",
                            "--ignore-installed", "--only-binary", ":all:", f"{runner.wheel}[{extras}]")
    print(resolve.stdout[-1500:], resolve.stderr[-1500:], sep="\n")
    return machine == "aarch64" and resolve.returncode == 0, f"{shell}; pip resolve rc={resolve.returncode}"


def install_pi_extras(dry_run_output: str) -> str:
    """Every extra the dry run's `pip install ...[extras]` lines name, joined (e.g. `langchain,cpu,axengine`)."""
    found: list[str] = []
    for match in re.finditer(r"pip install \S*\[([a-z0-9_,-]+)\]", dry_run_output):
        found += [extra for extra in match.group(1).split(",") if extra not in found]
    return ",".join(found)


PARTS = {"install": part_install, "main": part_main, "golden": part_golden, "simcard": part_simcard,
         "unit": part_unit, "contract": part_contract, "deploy": part_deploy}


def timed(part: str, body) -> Outcome:  # noqa: ANN001 - a part function bound to its runner
    print(f"\n----- arm64: {part} " + "-" * 60, flush=True)
    start, cpu = time.monotonic(), _cpu_children()
    try:
        passed, note = body()
    except (SetupError, OSError, subprocess.SubprocessError, TimeoutError) as exc:
        passed, note = False, f"{type(exc).__name__}: {exc}"[:300]
    return Outcome(part, passed, time.monotonic() - start, _cpu_children() - cpu, note)


def report(outcomes: list[Outcome], total: float) -> None:
    print(f"\n===== arm64 under qemu-user (cortex-a76) on {platform.machine()}, {os.cpu_count()} host cores, "
          f"load average {os.getloadavg()[0]:.1f} =====")
    print(f"{'part':9} {'result':6} {'wall':>8} {'cpu':>8}  note")
    for o in outcomes:
        print(f"{o.part:9} {'PASS' if o.passed else 'FAIL':6} {o.wall:7.0f}s {o.cpu:7.0f}s  {o.note}")
    failed = [o.part for o in outcomes if not o.passed]
    print(f"arm64: {len(outcomes) - len(failed)} passed, {len(failed)} failed"
          f"{' (' + ', '.join(failed) + ')' if failed else ''}; emulated wall time {total:.0f}s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(ALL_PARTS), help=f"comma list of {', '.join(ALL_PARTS)}")
    parser.add_argument("--ci", action="store_true", help=f"the CI subset: {', '.join(CI_PARTS)}")
    parser.add_argument("--cache", type=Path, default=default_cache(), help="root, venv and downloads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    parts = list(CI_PARTS) if args.ci else [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(ALL_PARTS)}")
    if "install" not in parts:
        parts.insert(0, "install")  # the other parts run in the venv it makes
    cache: Path = args.cache.expanduser().resolve()
    start = time.monotonic()
    outcomes: list[Outcome] = []
    runner: Runner | None = None

    def setup() -> tuple[bool, str]:
        nonlocal runner
        ensure_host_tools()
        emu = build_root(cache)
        wheel = build_wheel(REPO, cache / "dist")
        extras, label = (CI_EXTRAS, "ci") if set(parts) <= set(CI_PARTS) else (EXTRAS, "all")
        venv = build_venv(emu, cache, REPO, wheel, extras, TEST_REQUIREMENTS, label)
        store = cache / "run" / "models"  # a fresh store: the main job pulls and converts on aarch64
        shutil.rmtree(store.parent, ignore_errors=True)
        env = {**os.environ, **model_file_overrides(REPO, cache, embeddings=bool({"unit", "contract"} & set(parts))),
               "AX_LLM_MODELS": str(store)}
        env.pop("PYTHONPATH", None)  # the installed wheel is under test, not a source tree
        runner = Runner(emu, venv, wheel, env, args.ci)
        return part_install(runner)

    outcomes.append(timed("install", setup))
    for part in parts:
        if part == "install":
            continue
        if runner is None:
            outcomes.append(Outcome(part, False, 0.0, 0.0, "not run: the install failed"))
            continue
        outcomes.append(timed(part, functools.partial(PARTS[part], runner)))
    report(outcomes, time.monotonic() - start)
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
