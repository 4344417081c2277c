"""`ax-llm` command line: pull, convert, list, run."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .model.errors import ModelError
from .model.store import DEFAULT_MODEL, ModelStore

log = logging.getLogger("ax_llm_provider.cli")

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _progress_bar() -> tuple[Callable[[str, int, int], None], Callable[[], None]]:
    """One tqdm bar driven by (stage, done, total) callbacks; the stage becomes its description."""
    from tqdm import tqdm

    bar: tqdm | None = None

    def update(stage: str, done: int, total: int) -> None:
        nonlocal bar
        if bar is None or bar.total != total:
            if bar is not None:
                bar.close()
            bar = tqdm(total=total, unit="step", file=sys.stderr, leave=False)
        bar.set_description(stage, refresh=False)
        bar.n = done
        bar.refresh()

    def close() -> None:
        if bar is not None:
            bar.close()

    return update, close


def cmd_pull(args: argparse.Namespace) -> int:
    from .model.pull import pull

    update, close = _progress_bar()
    try:
        path = pull(args.model, ModelStore(args.store), progress=update, force=args.force)
    finally:
        close()
    print(f"{args.model}: ready in {path}")
    return EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert

    update, close = _progress_bar()
    try:
        dest = convert(args.src, args.dest, name=args.name, decode_capacity=args.kv_cache_len,
                       prefill_histories=tuple(args.prefill_history or (0, 128, 256, 512, 1024, 1536)),
                       progress=update, overwrite=args.force)
    finally:
        close()
    print(f"converted {args.src} -> {dest}")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    models = ModelStore(args.store).list()
    print(f"{'NAME':<28} {'SIZE':>10}  PATH")
    for m in models:
        print(f"{m.name:<28} {m.size_bytes / 1e6:>8.0f}MB  {m.path}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from .engine.generator import GenerationStats, generate_tokens
    from .model.loader import load_model

    stored = ModelStore(args.store).resolve(args.model)
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    with load_model(stored.path, name=stored.name, backend=args.backend) as model:
        text = model.tokenizer.render_chat([{"role": "user", "content": prompt}])
        ids = model.tokenizer.encode(text)
        stats = GenerationStats()
        generated: list[int] = []
        shown = ""
        for token in generate_tokens(model.stack, model.embeddings, ids, max_new_tokens=args.num_predict,
                                     end_ids=model.tokenizer.eos_ids, stats=stats):
            if token in model.tokenizer.eos_ids:
                break
            generated.append(token)
            text = model.tokenizer.decode(generated, skip_special_tokens=True)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                sys.stdout.write(text[len(shown):])
                sys.stdout.flush()
                shown = text
        sys.stdout.write("\n")
        if args.verbose:
            tps = stats.generated_tokens / (stats.decode_ns / 1e9) if stats.decode_ns else 0.0
            print(f"prompt {stats.prompt_tokens} tok in {stats.prompt_ns / 1e6:.0f} ms; "
                  f"{stats.generated_tokens} tok at {tps:.1f} tok/s ({stats.finish})", file=sys.stderr)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ax-llm", description="LLMs on the AXERA AX650N NPU, in process.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--store", help="model store directory (default: $AX_LLM_MODELS or ~/.local/share/ax-llm/models)")
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pull", help="fetch a known model into the store")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    p.add_argument("--force", action="store_true", help="fetch and convert again")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("convert", help="convert a GGUF file or Hugging Face directory into a CPU twin")
    p.add_argument("src", type=Path)
    p.add_argument("dest", type=Path)
    p.add_argument("--name", help="model name recorded in ax_model.json")
    p.add_argument("--kv-cache-len", type=int, default=2047, help="decode KV capacity C (default 2047)")
    p.add_argument("--prefill-history", type=int, action="append",
                   help="history capacity of a prefill group (repeatable; default 0 128 256 512 1024 1536)")
    p.add_argument("--force", action="store_true", help="replace DEST if it exists")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("list", aliases=["ls"], help="list the models in the store")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("run", help="answer one prompt, streaming to stdout")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    p.add_argument("prompt", nargs="?", help="the prompt (read from stdin when absent)")
    p.add_argument("--backend", default="auto", help="auto, onnx, axcl, axengine, simulated")
    p.add_argument("--num-predict", type=int, default=256, help="most tokens to generate")
    p.add_argument("--verbose", action="store_true", help="print timings to stderr")
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except (ModelError, ValueError, ImportError, RuntimeError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
