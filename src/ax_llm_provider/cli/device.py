"""Device commands: `doctor` (is this machine set up?), `health` (one reading of the card), `bench`, `serve`."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .common import EXIT_ERROR, EXIT_OK, CliError, progress_bar, table

log = logging.getLogger("ax_llm_provider.cli")
MONITOR_NOTE = ("this command takes one reading; an engine that holds the card monitors it continuously "
                "(engine.health(), and `ax-llm health` while it runs)")

# ---- probes (module-level so tests can replace them) ------------------------------------------------


def path_exists(path: str) -> bool:
    return os.path.exists(path)


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def read_text(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


# ---- doctor ----------------------------------------------------------------------------------------


def cmd_doctor(args: argparse.Namespace) -> int:
    """The checks of `ax_llm_provider.doctor` (driver, SDK, device, CMM, model, smoke generation) plus the
    CPU governor, printed as a report to paste into a bug report."""
    from ..doctor import main_json, run_doctor

    if args.tokens < 1:
        raise CliError("--tokens must be at least 1")
    backend = args.backend or "auto"
    if args.calibrate:
        return _calibrate(args, "simulated" if args.simulated else backend)
    update, close = progress_bar()  # verifying a big model's checksums reads every byte
    try:
        report = run_doctor(args.model, backend=backend, device=args.device, tokens=args.tokens,
                            store_dir=args.store, simulated=args.simulated or backend == "simulated", progress=update)
    finally:
        close()
    governor = read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    if governor is not None:
        governor = governor.strip()
        report.add("cpu governor", "ok" if governor == "performance" else "warn",
                   governor if governor == "performance" else
                   f"{governor}: set `performance` on the Pi (docs/deployment.md); host work per token matters")
    card_skipped = any(c.name == "card" and c.status == "skip" for c in report.checks)
    if args.require_card and card_skipped:
        report.add("require card", "fail", "--require-card: no usable LLM-8850 card (see the lines above and "
                   "docs/hardware.md)")
    print(main_json(report) if args.json else report.to_text())
    return EXIT_OK if report.ok else EXIT_ERROR


def _calibrate(args: argparse.Namespace, backend: str) -> int:
    from ..calibration.report import first_contact, summary
    from ..calibration.run import CalibrationError
    from .common import progress_bar

    if not args.model:
        raise CliError("--calibrate needs a MODEL: `ax-llm doctor --calibrate qwen3:0.6b-axcl` (on the card) or "
                       "`ax-llm doctor --calibrate smollm2:135m --simulated`")
    update, close = progress_bar()
    try:
        report = first_contact(args.model, store_dir=args.store, backend=backend, device=args.device,
                               tokens=args.tokens, progress=update)
    except (CalibrationError, OSError) as exc:
        raise CliError(f"calibration failed: {exc}") from exc
    finally:
        close()
    print(json.dumps(report, indent=2, default=str) if args.json else summary(report))
    return EXIT_OK if report["ok"] else EXIT_ERROR


# ---- health ----------------------------------------------------------------------------------------


def _read_properties(axcl: Any, lib: Any, index: int) -> dict[str, Any]:
    from ..runtime.axcl_device import value
    from ..runtime.axcl_props import get_device_properties
    from ..runtime.errors import check

    check(axcl.init(None), "axcl.init")
    try:
        devices = value(axcl.rt.get_device_list(), "axcl.rt.get_device_list")
        if not 0 <= index < len(devices):
            raise CliError(f"card index {index} asked for but {len(devices)} card(s) found")
        props = get_device_properties(lib, int(devices[index]))
        return {"card": index, "device_id": int(devices[index]), **asdict(props)}
    finally:
        axcl.finalize()


def _owner_health(args: argparse.Namespace) -> int | None:
    """Print the reading of the process that holds the card (its status channel) without opening the card;
    None when no live process publishes one for this card."""
    from ..status_channel import read_status

    status = read_status(args.device)
    if status is None:
        return None
    if not status.alive:
        log.warning("ignoring the stale status channel %s: %s no longer runs", status.path, status.describe_owner())
        return None
    health = status.health
    healthy = status.fresh and health.get("state") in ("ok", "idle", "loading", "warn")
    if args.json:
        print(json.dumps({"source": "status channel", "card": args.device, "simulated": status.simulated,
                          "owner": status.owner, "published_s_ago": round(status.age_s, 2), "fresh": status.fresh,
                          **health}, indent=2))
        return EXIT_OK if healthy else EXIT_ERROR
    label = " (SIMULATED card: the figures are the simulator's, not a measurement)" if status.simulated else ""
    print(f"{health.get('device', f'card {args.device}')} is held by {status.describe_owner()}{label}")
    print(f"reading from its status channel, published {status.age_s:.1f} s ago (this command did not open the card)")

    def figure(key: str, fmt: str) -> str:
        return fmt.format(health[key]) if health.get(key) is not None else "not read yet"

    read_at = health.get("read_at")
    table([
        ["  state", f"{health.get('state')}" + ("" if status.fresh else " (STALE: the owner stopped publishing; "
                                                "it may be hung)")],
        ["  temperature", figure("temperature_c", "{:.1f} °C")
         + (f" (read {max(0.0, time.time() - read_at):.1f} s ago)" if read_at else "")],
        ["  CMM", f"{figure('cmm_free_mb', '{:.0f}')} MiB free of {figure('cmm_total_mb', '{:.0f}')} MiB"],
        ["  NPU load", figure("npu_load_percent", "{:.1f} %")],
        ["  CPU load", figure("device_cpu_load_percent", "{:.1f} %")],
        ["  models", ", ".join(health.get("models") or []) or "none"],
    ])
    for warning in health.get("warnings") or []:
        print(f"warning: {warning}")
    return EXIT_OK if healthy else EXIT_ERROR


def cmd_health(args: argparse.Namespace) -> int:
    if args.backend in ("auto", "axcl", "simulated"):
        owned = _owner_health(args)
        if owned is not None:
            return owned
    if args.backend == "simulated":
        from ..runtime.simcard import SimCard

        card = SimCard(args.preset)
        reading = {"simulated": True, **_read_properties(card, card.lib_rt, args.device)}
    elif args.backend not in ("auto", "axcl"):
        raise CliError(f"health reads the card through the AXCL runtime; --backend {args.backend} has no card "
                       "(use axcl, or simulated to see the simulated card's reading)")
    else:
        if not (path_exists("/dev/axcl_host") and has_module("axcl")):
            raise CliError("no AX650N card here (/dev/axcl_host or pyaxcl missing); `ax-llm doctor` says what is "
                           f"missing; {MONITOR_NOTE}")
        from ..runtime.axcl_device import import_axcl
        from ..runtime.axcl_props import load_lib

        reading = {"simulated": False, **_read_properties(import_axcl(), load_lib(), args.device)}
    if args.json:
        print(json.dumps(reading, indent=2))
        return EXIT_OK
    label = " (SIMULATED card: the figures are the simulator's, not a measurement)" if reading["simulated"] else ""
    print(f"card {reading['card']} (device id {reading['device_id']}), runtime {reading['sw_version']}{label}")
    table([
        ["  temperature", f"{reading['temperature_c']:.1f} °C"],
        ["  CMM", f"{reading['free_cmm_kb'] // 1024} MiB free of {reading['total_cmm_kb'] // 1024} MiB"],
        ["  memory", f"{reading['free_mem_kb'] // 1024} MiB free of {reading['total_mem_kb'] // 1024} MiB"],
        ["  NPU load", f"{reading['npu_load_percent']:.1f} %"],
        ["  CPU load", f"{reading['cpu_load_percent']:.1f} %"],
    ])
    print(f"note: {MONITOR_NOTE}")
    return EXIT_OK


# ---- bench -----------------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    if args.backend != "simulated":
        raise CliError(
            f"`ax-llm bench --backend {args.backend}` is not available yet: benchmarking the real card from the "
            "CLI is planned; use --backend simulated (the axcl backend's code on the simulated card), or "
            "benchmarks/bench_twin.py and benchmarks/bench_engine.py for the CPU twin")
    from ..bench import run_backend_bench

    if args.tokens < 1:
        raise CliError("--tokens must be at least 1")
    result = run_backend_bench(args.preset, args.tokens, kv_write=args.kv_write, timing_model=args.timing)
    if args.json:
        print(json.dumps(result))
        return EXIT_OK
    g = result["geometry"]
    print(f"SIMULATED card, preset {result['preset']} ({g['layers']} layers, "
          f"hidden {g['hidden']}, vocab {g['vocab']}), "
          f"{result['tokens']} decode tokens after a {result['prompt_tokens']}-token prompt")
    published = ", ".join(f"{k} {v} tok/s" for k, v in result["published_tok_s"].items())
    table([
        ["  device-bound", f"{result['device_bound_tok_s']:.2f} tok/s "
                           f"({result['device_ms_per_token']:.1f} ms of simulated device time per token)"],
        ["  host overhead", f"{result['host_overhead_ms_per_token']:.2f} ms/token (median; "
                            f"{result['simulator_share_ms_per_token']:.2f} ms of it inside the simulator)"],
        ["  projected", f"{result['projected_tok_s']:.2f} tok/s = {100 * result['efficiency']:.1f}% of device-bound"],
        ["  calls / bytes", f"{result['device_calls_per_token']:.0f} device calls, "
                            f"{result['bus_bytes_per_token'] / 1e3:.1f} kB over PCIe per token"],
        ["  pyaxengine path", f"{result['baseline_projected_tok_s']:.2f} tok/s projected (KV copied every call)"],
        ["  published", published],
    ])
    print(f"source: {result['source']}")
    return EXIT_OK


# ---- serve -----------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from ..server.guard import GuardConfig
        from ..server.runner import serve
        from ..server.service import ServiceLifecycle, cannot_serve
    except ImportError as exc:
        raise CliError(f"`ax-llm serve` is not available in this install ({exc}); "
                       "pip install 'ax-llm-provider[server]'") from exc
    from .common import engine_for, store_of
    from .models import ensure_model

    limits = {"body_timeout_s": args.body_timeout}
    if args.max_body_bytes is not None:
        limits["max_body_bytes"] = args.max_body_bytes
    try:
        guard = GuardConfig.from_env(tuple(args.origins), **limits)
    except ValueError as exc:
        raise CliError(f"{exc}; give positive sizes and timeouts") from exc
    if args.grace < 0:
        raise CliError("--grace must be 0 or more seconds")
    from ..model.durable import clean_stale_partials

    clean_stale_partials(store_of(args).root)  # what a crash or power cut left in the store
    engine = engine_for(args)
    lifecycle = ServiceLifecycle(engine)
    with lifecycle.signals():  # from here SIGTERM/SIGINT stop the service cleanly, never mid-load
        for model in args.preload or []:
            if lifecycle.stop_requested:
                break
            try:
                ensure_model(model, store_of(args))
                engine.load(model)  # everything on the card before the first request
            except Exception:
                reason = cannot_serve(engine)
                if reason is None:
                    raise  # a model that cannot load: exit 1 with its error
                lifecycle.card_lost(f"while preloading {model}: {reason}")  # exit 3: systemd restarts the service
                return lifecycle.finish()
        return serve(args.host, args.port, engine=engine, log_level=args.log_level.lower(), guard=guard,
                     head_timeout_s=args.head_timeout, keep_alive_s=args.keep_alive_timeout, grace_s=args.grace,
                     lifecycle=lifecycle) or EXIT_OK
