"""ollama.Client's model-management methods (pull, push, create, create_blob, delete, copy), in process.

Same names, parameters and return types as ollama-python (`ProgressResponse` records, streamed when
`stream=True`; `StatusResponse` for delete and copy), over the store of the client's engine; the work
itself is in model/manage.py. `push` and `create_blob` raise ResponseError 501: there is no registry
to push to, and weights come from `ax-llm pull` / `ax-llm convert`, not from uploaded blobs.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import ollama

from ..model import manage
from .errors import public_errors, response_error

if TYPE_CHECKING:
    from ..engine.engine import Engine

PUSH_UNSUPPORTED = ("push is not supported: ax-llm has no registry to push to; copy the model directory "
                    "(`ax-llm show MODEL --json` prints its path) to the other machine instead")
BLOB_UNSUPPORTED = ("blobs are not supported: models are not built from uploaded files in process; convert a GGUF "
                    "or safetensors checkpoint with `ax-llm convert SRC DIR` and create FROM that directory")


def _error(exc: Exception) -> ollama.ResponseError:
    return response_error(exc)


def _parameters(parameters: Mapping[str, Any] | ollama.Options | None) -> dict[str, Any] | None:
    if isinstance(parameters, ollama.Options):
        return parameters.model_dump(exclude_none=True)
    return dict(parameters) if parameters is not None else None


def _progress(records: Iterator[dict[str, Any]]) -> Iterator[ollama.ProgressResponse]:
    with public_errors():  # a stream is consumed after its method returned: it translates its own errors
        for record in records:
            yield ollama.ProgressResponse(**record)


class _Management:
    """The work both clients share; each method returns Ollama's records (checks done before any is made)."""

    if TYPE_CHECKING:  # declared for the type checker: the property of ollama/client.py `_Base`, first in the
        # clients' bases, provides it (declared as a plain attribute, a read-only property could not override it)
        @property
        def engine(self) -> Engine: ...

    def _pull_records(self, model: str, insecure: bool) -> Iterator[dict[str, Any]]:
        try:
            manage.check_pullable(model)
        except ValueError as exc:
            raise _error(exc) from exc
        return manage.pull_progress(model, self.engine.store)

    def _create_records(self, model: str, quantize: str | None, from_: str | None, files: Any, adapters: Any,
                        template: str | None, license: Any, system: str | None, parameters: Any,
                        messages: Any) -> Iterator[dict[str, Any]]:
        store = self.engine.store
        try:
            derived, needs_pull = manage.plan_create(
                store, model, from_=from_, system=system, parameters=_parameters(parameters), messages=messages,
                template=template, license=license, adapters=adapters, files=files, quantize=quantize)
        except ValueError as exc:
            raise _error(exc) from exc
        return manage.create_progress(store, derived, needs_pull)

    def _delete(self, model: str) -> ollama.StatusResponse:
        engine = self.engine
        try:
            base = manage.delete_model(engine.store, model)
            if base is not None and any(m["name"] == base for m in engine.ps()["models"]):
                engine.unload(base)
        except ValueError as exc:
            raise _error(exc) from exc
        return ollama.StatusResponse(status="success")

    def _copy(self, source: str, destination: str) -> ollama.StatusResponse:
        try:
            manage.copy_model(self.engine.store, source, destination)
        except ValueError as exc:
            raise _error(exc) from exc
        return ollama.StatusResponse(status="success")


def _last(records: Iterator[ollama.ProgressResponse]) -> ollama.ProgressResponse:
    final = ollama.ProgressResponse(status="success")
    for record in records:
        final = record
    return final


class ManagementMethods(_Management):
    """Mixed into `Client`."""

    def pull(self, model: str, *, insecure: bool = False, stream: bool = False) -> Any:
        """Fetch a known model; ProgressResponse records (a generator with stream=True), like ollama's pull."""
        records = _progress(self._pull_records(model, insecure))
        return records if stream else _last(records)

    def push(self, model: str, *, insecure: bool = False, stream: bool = False) -> Any:
        raise ollama.ResponseError(PUSH_UNSUPPORTED, 501)

    def create(self, model: str, quantize: str | None = None, from_: str | None = None,
               files: dict[str, str] | None = None, adapters: dict[str, str] | None = None,
               template: str | None = None, license: str | list[str] | None = None, system: str | None = None,
               parameters: Mapping[str, Any] | ollama.Options | None = None,
               messages: Sequence[Mapping[str, Any] | ollama.Message] | None = None, *, stream: bool = False) -> Any:
        """A derived model over `from_` with Modelfile defaults (model/derived.py); no weights are copied."""
        records = _progress(self._create_records(model, quantize, from_, files, adapters, template, license, system,
                                                 parameters, messages))
        return records if stream else _last(records)

    def create_blob(self, path: str | Path) -> str:
        if not os.path.isfile(path):
            raise FileNotFoundError(path)
        raise ollama.ResponseError(BLOB_UNSUPPORTED, 501)

    def delete(self, model: str) -> ollama.StatusResponse:
        return self._delete(model)

    def copy(self, source: str, destination: str) -> ollama.StatusResponse:
        return self._copy(source, destination)


async def _aprogress(records: Iterator[ollama.ProgressResponse]) -> AsyncIterator[ollama.ProgressResponse]:
    done = object()
    while (record := await anyio.to_thread.run_sync(next, records, done)) is not done:
        yield record  # type: ignore[misc]


class AsyncManagementMethods(_Management):
    """Mixed into `AsyncClient`: the blocking store work runs in a worker thread."""

    async def pull(self, model: str, *, insecure: bool = False, stream: bool = False) -> Any:
        records = _progress(await anyio.to_thread.run_sync(self._pull_records, model, insecure))
        return _aprogress(records) if stream else await anyio.to_thread.run_sync(_last, records)

    async def push(self, model: str, *, insecure: bool = False, stream: bool = False) -> Any:
        raise ollama.ResponseError(PUSH_UNSUPPORTED, 501)

    async def create(self, model: str, quantize: str | None = None, from_: str | None = None,
                     files: dict[str, str] | None = None, adapters: dict[str, str] | None = None,
                     template: str | None = None, license: str | list[str] | None = None,
                     system: str | None = None, parameters: Mapping[str, Any] | ollama.Options | None = None,
                     messages: Sequence[Mapping[str, Any] | ollama.Message] | None = None, *,
                     stream: bool = False) -> Any:
        records = _progress(await anyio.to_thread.run_sync(
            lambda: self._create_records(model, quantize, from_, files, adapters, template, license, system,
                                         parameters, messages)))
        return _aprogress(records) if stream else await anyio.to_thread.run_sync(_last, records)

    async def create_blob(self, path: str | Path) -> str:
        if not os.path.isfile(path):
            raise FileNotFoundError(path)
        raise ollama.ResponseError(BLOB_UNSUPPORTED, 501)

    async def delete(self, model: str) -> ollama.StatusResponse:
        return await anyio.to_thread.run_sync(self._delete, model)

    async def copy(self, source: str, destination: str) -> ollama.StatusResponse:
        return await anyio.to_thread.run_sync(self._copy, source, destination)
