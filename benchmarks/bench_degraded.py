"""Degraded mode on the simulated card: how long a request waits when the card is lost, and how many are answered.

    python benchmarks/bench_degraded.py [--repeat 5] [--reboot-wait 0.3] [--probe 0.05]

Each round runs SmolLM2-135M on the simulated card, then kills its heartbeat with a firmware reboot that does not
help (so the recovery ladder ends at FATAL after `--reboot-wait` seconds) and sends one request plus five more.
With degraded mode on, the CPU twin of the same model answers them; the card then comes back and the time until
requests go to it again is measured. The baseline, in the same run with the same card and ladder, is degraded
mode off: the request fails with DeviceFatalError and so does every later one. Medians over `--repeat` rounds,
alternating on and off so drift on a shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

from _common import model_dir

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.engine.ops.degraded import FallbackConfig
from ax_llm_provider.engine.ops.health import HealthConfig
from ax_llm_provider.engine.ops.recovery import DeviceFatalError, RecoveryPolicy
from ax_llm_provider.model.store import ModelStore
from ax_llm_provider.runtime.simcard import SimCard

HEALTH = HealthConfig(period_s=0.05, execute_timeout_s=10.0, hang_reboot_s=None, hang_fatal_s=None)
FOLLOWING = 5


def ask(engine: Engine, model: str) -> bool:
    """True when answered, False when refused because the card is lost."""
    try:
        list(engine.chat({"model": model, "messages": [{"role": "user", "content": "Say hello."}],
                          "options": {"num_predict": 8, "temperature": 0}}))
        return True
    except DeviceFatalError:
        return False


def one_round(model: str, store: Path, policy: RecoveryPolicy, probe_s: float, on: bool) -> dict[str, float]:
    card = SimCard()
    fallback = FallbackConfig(model, probe_interval_s=probe_s) if on else ""
    with Engine(ModelStore(store), backend="simulated", card=card, auto_pull=False, keep_alive=-1, health=HEALTH,
                recovery=policy, fallback_model=fallback) as engine:
        assert ask(engine, model)
        card.lib_rt.axclrtRebootDevice = lambda device_id: 0  # type: ignore[method-assign]
        card.faults.go_offline()
        started = time.monotonic()
        first = ask(engine, model)
        first_s = time.monotonic() - started
        answered = sum(ask(engine, model) for _ in range(FOLLOWING))
        back_s = float("nan")
        if on:
            del card.lib_rt.axclrtRebootDevice
            card.faults.come_online()
            started = time.monotonic()
            while engine.health().state != "ok":
                time.sleep(0.002)
            back_s = time.monotonic() - started
        return {"first_s": first_s, "first_answered": float(first), "answered": float(answered), "back_s": back_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--reboot-wait", type=float, default=0.3, help="the ladder's reboot wait (seconds)")
    parser.add_argument("--probe", type=float, default=0.05, help="degraded mode's probe interval (seconds)")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the ladder's and the switch's log lines are not the figures
    twin = model_dir("smollm2:135m")
    policy = RecoveryPolicy(step_wait_s=0.001, step_wait_max_s=0.002, reboot_wait_s=args.reboot_wait,
                            reboot_poll_s=0.05)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("AX_LLM_SIMCARD_DIR", str(Path(tmp) / "simcard"))  # a card of this run's own
        runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
        for index in range(args.repeat):
            for on in (True, False):
                runs[on].append(one_round(str(twin), Path(tmp) / f"store-{index}-{on}", policy, args.probe, on))

    def median(on: bool, key: str) -> float:
        return statistics.median(r[key] for r in runs[on])

    print(f"SmolLM2-135M on the simulated card, card lost (ladder FATAL after a {args.reboot_wait:g} s reboot wait), "
          f"{args.repeat} rounds, medians")
    print(f"{'':34}{'degraded mode':>16}{'off (baseline)':>16}")
    print(f"{'first request after the loss':34}{'answered' if median(True, 'first_answered') else 'failed':>16}"
          f"{'answered' if median(False, 'first_answered') else 'failed':>16}")
    print(f"{'  ... its latency (s)':34}{median(True, 'first_s'):>16.3f}{median(False, 'first_s'):>16.3f}")
    print(f"{f'the next {FOLLOWING} requests answered':34}{median(True, 'answered'):>16.0f}"
          f"{median(False, 'answered'):>16.0f}")
    print(f"{'card answers -> requests on it (s)':34}{median(True, 'back_s'):>16.3f}{'-':>16}"
          f"   (probe every {args.probe:g} s)")


if __name__ == "__main__":
    main()
