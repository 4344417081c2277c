"""The `axengine` backend: pyaxengine `InferenceSession`s, one per layer plus the post model.

The documented simple, slow fallback. pyaxengine copies every input it is fed host-to-device on every
`run()` and every output back, so the KV cache lives on the host and its full window crosses PCIe on every
layer call (about 10 MB per layer per token for Qwen3-0.6B at C = 2559). It exists for boards and setups
where pyaxcl is missing, and as the baseline the `axcl` backend is measured against.

Three habits of real pyaxengine shape this module (docs/sdk-notes.md, "pyaxengine"):
* `run()` asserts every fed array has the node's exact shape; the no-history prefill group declares its
  unread K/V placeholder as [1, 1, hidden], so it is fed zeros of the node's own shape, never a cache slice.
* Sessions sit in a module-level list until the interpreter exits: dropping them frees nothing on the card,
  so `close()` unloads each one explicitly (a private call, checked for).
* It `print()`s `[INFO]` lines on import and per session (~145 for a 28-layer model); they are captured
  into this module's log instead of the user's stdout.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .bf16 import bf16_to_float32, float32_to_bf16
from .contract import (
    decode_indices,
    decode_mask,
    prefill_indices,
    prefill_mask,
    select_decode_group,
)
from .host_kv import HostKV, as_bf16_bits
from .planner import Planner, make_plan
from .protocol import KVSnapshot
from .spec import ShapeGroup, StackSpec

log = logging.getLogger(__name__)
PROVIDER = "AXCLRTExecutionProvider"


class _ThreadStdout(io.TextIOBase):
    """sys.stdout stand-in: writes from one thread go to a buffer, every other thread's to the real stdout."""

    def __init__(self, original: Any, thread: int) -> None:
        self.original, self.thread, self.buffer_text = original, thread, io.StringIO()

    def write(self, text: str) -> int:
        if threading.get_ident() == self.thread:
            return self.buffer_text.write(text)
        return self.original.write(text)

    def flush(self) -> None:
        self.original.flush()


_stdout_lock = threading.Lock()


@contextlib.contextmanager
def vendor_stdout_to_log(what: str) -> Iterator[None]:
    """Route what pyaxengine print()s on this thread to the log (DEBUG), line by line."""
    with _stdout_lock:
        original = sys.stdout
        capture = _ThreadStdout(original, threading.get_ident())
        sys.stdout = capture
    try:
        yield
    finally:
        with _stdout_lock:
            if sys.stdout is capture:
                sys.stdout = original
        for line in capture.buffer_text.getvalue().splitlines():
            if line.strip():
                log.debug("pyaxengine (%s): %s", what, line)


def import_axengine() -> Any:
    try:
        with vendor_stdout_to_log("import"):
            import axengine
    except ImportError as exc:
        raise ImportError(
            "the axengine backend needs pyaxengine (module `axengine`), which is not on PyPI: install the wheel "
            f"from the AXERA-TECH/pyaxengine releases ({exc})"
        ) from exc
    return axengine


def _groups(session: Any) -> list[tuple[list[Any], list[Any]]]:
    """NodeArgs of every shape group; pyaxengine has no public group count, so probe until it refuses."""
    groups: list[tuple[list[Any], list[Any]]] = []
    while True:
        try:
            groups.append((session.get_inputs(len(groups)), session.get_outputs(len(groups))))
        except (IndexError, ValueError):
            return groups


class AxengineDecoderStack:
    """DecoderStack over pyaxengine (or its fake): host-resident bf16 KV, copied to the card every call."""

    # How prefill() splits a prompt (runtime/planner.py); None: plain chunks. open_stack sets it from costs.
    planner: Planner | None = None

    def __init__(self, layer_paths: Sequence[str | Path], post_path: str | Path, axengine: Any | None = None, *,
                 device_index: int = 0) -> None:
        ax = axengine if axengine is not None else import_axengine()
        options = [{"device_id": device_index}]  # an index into the device list, as a list of dicts

        self._layers: list[Any] = []
        self._post: Any = None
        self._kv: HostKV | None = None  # bf16 bits; made once the spec is known
        self._closed = False
        try:
            with vendor_stdout_to_log("load"):
                for path in layer_paths:
                    self._layers.append(ax.InferenceSession(str(path), providers=[PROVIDER], provider_options=options))
                self._post = ax.InferenceSession(str(post_path), providers=[PROVIDER], provider_options=options)
            self._nodes = _groups(self._layers[0])
            self.spec = self._read_spec()
        except AttributeError as exc:
            self.close()
            if "VNpuKind" not in str(exc):
                raise
            raise RuntimeError(
                "pyaxengine could not initialise the NPU (axclrtEngineInit returned an error, which pyaxengine "
                f"reports as {exc!r}); check that no other process drives the card (`axcl-smi`)") from exc
        except BaseException:
            self.close()  # what was loaded stays in CMM otherwise (see close)
            raise
        self._bf16 = next(n.dtype for n in self._nodes[0][0] if n.name == "input")
        self._kv = HostKV(len(self._layers), self.spec.decode_capacity, self.spec.kv_dim, np.uint16,
                          adopt=as_bf16_bits)
        # the no-history group's placeholder: never read, fed as zeros of whatever shape the node declares
        self._placeholders = {g: {n.name: np.zeros(n.shape, n.dtype) for n in ins if n.name in ("K_cache", "V_cache")}
                              for g, (ins, _) in enumerate(self._nodes) if self.spec.groups[g].history == 0}

    def _read_spec(self) -> StackSpec:
        groups = []
        for g, (ins, _) in enumerate(self._nodes):
            shapes = {n.name: n.shape for n in ins}
            tokens = int(np.prod(shapes["indices"]))
            groups.append(ShapeGroup(g, tokens, shapes["mask"][-1] - tokens, shapes["K_cache"][1]))
        outs = {n.name: n.shape for n in self._nodes[0][1]}
        inputs = {n.name: n.shape for n in self._nodes[0][0]}
        return StackSpec(layers=len(self._layers), hidden=inputs["input"][-1], kv_dim=outs["K_cache_out"][-1],
                         vocab=self._post.get_outputs()[0].shape[-1], groups=tuple(groups), io_dtype="bfloat16")

    def _feed(self, g: int, name: str, bits: np.ndarray) -> np.ndarray:
        node = next(n for n in self._nodes[g][0] if n.name == name)
        arr = bits.reshape(node.shape)
        return arr.view(self._bf16) if arr.dtype == np.uint16 else arr

    def _run_layers(self, group: ShapeGroup, x: np.ndarray, indices: np.ndarray, mask: np.ndarray,
                    start: int, count: int) -> np.ndarray:
        g, rows = group.index, group.kv_rows
        mask_bits = float32_to_bf16(mask)
        names = [n.name for n in self._nodes[g][1]]
        placeholder = self._placeholders.get(g)
        kv = self._host_kv()
        for m, session in enumerate(self._layers):
            feed = {"input": self._feed(g, "input", x), "indices": self._feed(g, "indices", indices),
                    "mask": self._feed(g, "mask", mask_bits)}
            if placeholder is not None:
                feed.update(placeholder)
            else:
                k_cache, v_cache = kv.rows(m, rows)
                feed["K_cache"] = self._feed(g, "K_cache", k_cache)
                feed["V_cache"] = self._feed(g, "V_cache", v_cache)
            out = dict(zip(names, session.run(None, feed, shape_group=g), strict=True))
            kv.write(m, start, out["K_cache_out"].view(np.uint16).reshape(-1, self.spec.kv_dim)[:count],
                     out["V_cache_out"].view(np.uint16).reshape(-1, self.spec.kv_dim)[:count])
            x = out["output"].view(np.uint16)
        return x.reshape(-1, self.spec.hidden)

    def _logits(self, hidden_bits: np.ndarray) -> np.ndarray:
        node = self._post.get_inputs()[0]
        (logits,) = self._post.run(None, {node.name: hidden_bits.reshape(node.shape).view(node.dtype)})
        return bf16_to_float32(logits.view(np.uint16)).reshape(-1)

    def prefill(self, embeds: np.ndarray, start: int, want_logits: bool = True) -> np.ndarray | None:
        embeds = np.asarray(embeds, dtype=np.float32).reshape(-1, self.spec.hidden)
        last = None
        for chunk in make_plan(self.spec, start, len(embeds), self.planner):
            rows = embeds[chunk.start - start: chunk.start - start + chunk.count]
            if chunk.group.is_decode:
                last = self._decode_hidden(rows[0], chunk.start)
                continue
            x = np.zeros((chunk.group.tokens, self.spec.hidden), np.uint16)
            x[: chunk.count] = float32_to_bf16(rows)
            out = self._run_layers(chunk.group, x, prefill_indices(chunk.start, chunk.count, chunk.group.tokens),
                                   prefill_mask(chunk.start, chunk.group), chunk.start, chunk.count)
            last = out[chunk.count - 1]
        assert last is not None  # a plan never plans nothing
        return self._logits(last) if want_logits else None

    def _decode_hidden(self, embed: np.ndarray, pos: int) -> np.ndarray:
        group = select_decode_group(self.spec, pos)  # raises ContextOverflowError past the capacity
        x = float32_to_bf16(np.asarray(embed, np.float32).reshape(self.spec.hidden))
        return self._run_layers(group, x, decode_indices(pos), decode_mask(pos, group.history), pos, 1)[0]

    def decode(self, embed: np.ndarray, pos: int) -> np.ndarray:
        return self._logits(self._decode_hidden(embed, pos))

    def _host_kv(self) -> HostKV:
        assert self._kv is not None  # made in __init__ once the spec is read; a failed __init__ returns no stack
        return self._kv

    def kv_save(self, length: int) -> KVSnapshot:
        return self._host_kv().save(length)

    def kv_restore(self, snapshot: KVSnapshot) -> None:
        self._host_kv().restore(snapshot)

    def close(self) -> None:
        """Unload every session now: pyaxengine keeps them in a module-level list, so dropping frees nothing."""
        if self._closed:
            return
        self._closed = True
        sessions = [*self._layers, *([self._post] if self._post is not None else [])]
        for session in sessions:
            _unload(session)
        self._layers.clear()
        self._post = None
        if self._kv is not None:
            self._kv.clear()
        log.debug("axengine decoder stack closed: %d sessions unloaded", len(sessions))


def _unload(session: Any) -> None:
    """Free one session's model and IO buffers on the card through pyaxengine's private `_unload()`.

    It is idempotent in pyaxengine (it clears its io and model id), so the atexit pass that runs later over
    the module's list does nothing more. The session object stays in that list: removing it would make its
    __del__ raise. If a pyaxengine version lacks the method, say so: the card memory stays held until exit.
    """
    unload = getattr(getattr(session, "_sess", None), "_unload", None)
    if unload is None:
        log.warning("this pyaxengine has no session._sess._unload(): the model stays in the card's CMM until the "
                    "process exits; restart the process before loading another model")
        return
    unload()
