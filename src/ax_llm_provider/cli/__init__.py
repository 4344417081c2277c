"""`ax-llm`: the command line, shaped like the `ollama` CLI (run, pull, list, show, ps, rm) plus
convert, doctor, health and bench. Entry point: `ax_llm_provider.cli:main`.

Exit codes: 0 ok, 1 error (one `Error: ...` line on stderr; a traceback only with --log-level DEBUG),
2 usage error, 130 interrupted.
"""

from __future__ import annotations

import importlib
import logging
import sys
import traceback
from collections.abc import Sequence

from .common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, CliError, UsageError, close_engines
from .parser import build_parser

__all__ = ["CliError", "UsageError", "build_parser", "close_engines", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help / --version (0) or a usage error (2)
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    module_name, _, function = args.func.partition(":")
    try:
        command = getattr(importlib.import_module(f"{__name__}.{module_name}"), function)
        return int(command(args))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except UsageError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `ax-llm run ... | head`: the reader left; not an error of ours
        return 0
    except Exception as exc:  # noqa: BLE001 - the CLI's contract: one line, not a traceback
        if args.log_level == "DEBUG":
            traceback.print_exc(file=sys.stderr)
        message = str(exc) or type(exc).__name__
        print(f"Error: {message}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
