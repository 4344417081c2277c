"""`ax-llm create NAME -f Modelfile` and `ax-llm cp SOURCE DESTINATION`, as `ollama create` / `ollama cp`.

A created model is a small manifest over its base model (model/derived.py): no weights are copied,
and `ax-llm run NAME` runs the base with the Modelfile's SYSTEM, PARAMETERs and MESSAGEs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..model.manage import copy_model, create_progress, plan_create
from ..model.modelfile import parse_modelfile
from .common import EXIT_OK, CliError, progress_bar, store_of


def cmd_create(args: argparse.Namespace) -> int:
    path = Path(args.file).expanduser()
    if not path.is_file():
        raise CliError(f"{path} does not exist; write a Modelfile (FROM, SYSTEM, PARAMETER, MESSAGE, LICENSE) "
                       "and pass it with -f")
    modelfile = parse_modelfile(path.read_text(encoding="utf-8"))
    arguments = modelfile.create_arguments()
    if arguments["from_"] and arguments["from_"].startswith((".", "~")):  # relative to the Modelfile, as Ollama
        arguments["from_"] = str((path.parent / arguments["from_"]).expanduser())
    store = store_of(args)
    derived, needs_pull = plan_create(store, args.model, quantize=args.quantize, **arguments)
    update, close = progress_bar()
    try:
        for record in create_progress(store, derived, needs_pull):
            if record.get("total"):
                update(record["status"], record.get("completed") or 0, record["total"])
            else:
                print(record["status"])
    finally:
        close()
    return EXIT_OK


def cmd_cp(args: argparse.Namespace) -> int:
    copy = copy_model(store_of(args), args.source, args.destination)
    print(f"copied '{args.source}' to '{copy.name}'")
    return EXIT_OK


def add_parsers(sub: Any) -> None:  # argparse's subparsers action (its class is private)
    p = sub.add_parser(
        "create", help="create a model from a Modelfile (a name over a base model with its own defaults)",
        description="Like `ollama create`: FROM names the base model (a stored name, a known name pulled on "
                    "first use, or a model directory); SYSTEM, PARAMETER, MESSAGE and LICENSE become the new "
                    "model's defaults. No weights are copied. TEMPLATE is accepted only when it is the base's own "
                    "chat template; ADAPTER and -q are not supported (convert instead).")
    p.add_argument("model", help="name of the new model, e.g. coyote or coyote:v1")
    p.add_argument("-f", "--file", default="Modelfile", help="the Modelfile (default ./Modelfile)")
    p.add_argument("-q", "--quantize", help="not supported: convert with `ax-llm convert --weights` instead")
    p.set_defaults(func="manage:cmd_create")

    p = sub.add_parser("cp", help="copy a model (a new name for the same weights and defaults)")
    p.add_argument("source")
    p.add_argument("destination")
    p.set_defaults(func="manage:cmd_cp")
