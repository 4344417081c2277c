"""The `onnx` backend: onnxruntime on the CPU twin, with the host holding the KV cache.

It follows the vendor contract (groups, masks, positions) so that what passes here passes on the
card; only the place where the KV lives differs. KV rows live in one preallocated float32 array per
layer, [1, C, kv_dim], written by position (gpt-fast style).

With `exact_shapes=True` every call uses the compiled group shapes, as the card does (padding rows,
full history windows). By default the CPU trims them: the twin's graphs have symbolic dimensions, so a
chunk of n tokens after h valid rows runs as [1, n, H] against exactly h history rows. Masked-out
columns contribute exp(-65536) = 0 to attention, so the real rows' results are the same, and the CPU
does not pay for 128-row padding or a 2047-row window at a 40-token context.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .contract import (
    Chunk,
    decode_indices,
    decode_mask,
    plan_prefill,
    prefill_indices,
    prefill_mask,
    select_decode_group,
)
from .host_kv import HostKV
from .planner import Planner, make_plan
from .protocol import KVSnapshot
from .spec import ShapeGroup, StackSpec

log = logging.getLogger(__name__)

LAYER_INPUTS = ("input", "indices", "mask", "K_cache", "V_cache")
LAYER_OUTPUTS = ("K_cache_out", "V_cache_out", "output")


class TwinFormatError(ValueError):
    """A twin graph does not follow docs/cpu-twin.md."""


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:  # the core must import without it
        raise ImportError(
            "the onnx backend needs onnxruntime: pip install 'ax-llm-provider[cpu]'"
        ) from exc
    return onnxruntime


def session_options(ort: Any, threads: int | None, spin: bool = False) -> Any:
    """Session options of every twin session: full graph optimization, one inter-op thread.

    spin: the intra-op workers spin between parallel sections instead of sleeping, and stop spinning when a
    run returns (the serving layout's decode session; runtime/onnx_serving.py). Otherwise they never spin: on
    a Pi or a shared CI machine a pool spinning between runs starves the host's other threads.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if spin:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


def read_shape_groups(metadata: dict[str, str], path: Path) -> tuple[ShapeGroup, ...]:
    raw = metadata.get("ax.shape_groups")
    if raw is None:
        raise TwinFormatError(f"{path} has no 'ax.shape_groups' metadata; convert it with `ax-llm convert`")
    try:
        return tuple(
            ShapeGroup(index=i, tokens=int(g["tokens"]), history=int(g["history"]), kv_rows=int(g["kv_rows"]))
            for i, g in enumerate(json.loads(raw))
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise TwinFormatError(f"{path} has malformed 'ax.shape_groups' metadata: {raw!r}") from exc


class OnnxDecoderStack:
    """DecoderStack over onnxruntime sessions, one per layer file plus the post graph."""

    # How prefill() splits a prompt (runtime/planner.py); None: plain chunks. open_stack sets it from costs.
    planner: Planner | None = None

    def __init__(self, layer_paths: Sequence[Path], post_path: Path, *, threads: int | None = None,
                 exact_shapes: bool = False) -> None:
        self.exact_shapes = exact_shapes
        ort = import_onnxruntime()
        options = session_options(ort, threads)
        self._layers = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in layer_paths]
        self._post = ort.InferenceSession(str(post_path), options, providers=["CPUExecutionProvider"])
        self.spec = self._read_spec(layer_paths)
        self._kv = HostKV(len(self._layers), self.spec.decode_capacity, self.spec.kv_dim, np.float32)
        self._closed = False

    def _read_spec(self, layer_paths: Sequence[Path]) -> StackSpec:
        first = self._layers[0]
        groups = read_shape_groups(first.get_modelmeta().custom_metadata_map, layer_paths[0])
        for session, path in zip(self._layers[1:], layer_paths[1:], strict=True):
            if read_shape_groups(session.get_modelmeta().custom_metadata_map, path) != groups:
                raise TwinFormatError(f"{path} has other shape groups than {layer_paths[0]}")
        names = [i.name for i in first.get_inputs()]
        if tuple(names) != LAYER_INPUTS:
            raise TwinFormatError(f"{layer_paths[0]} inputs are {names}, expected {list(LAYER_INPUTS)}")
        shapes = {i.name: i.shape for i in first.get_inputs()}
        vocab = self._post.get_outputs()[0].shape[-1]
        return StackSpec(
            layers=len(self._layers),
            hidden=int(shapes["input"][-1]),
            kv_dim=int(shapes["K_cache"][-1]),
            vocab=int(vocab),
            groups=groups,
            io_dtype="float32",
        )

    # -- execution ---------------------------------------------------------------------------

    def _run_layers(self, x: np.ndarray, indices: np.ndarray, mask: np.ndarray, kv_rows: int,
                    start: int, count: int) -> np.ndarray:
        """Run all layers on x [1, S, H] against kv_rows cache rows; write the first `count` new K/V rows at `start`."""
        for layer, session in enumerate(self._layers):
            k_cache, v_cache = self._kv.rows(layer, kv_rows)
            k_out, v_out, x = session.run(
                LAYER_OUTPUTS, {"input": x, "indices": indices, "mask": mask, "K_cache": k_cache, "V_cache": v_cache})
            self._kv.write(layer, start, k_out[0, :count], v_out[0, :count])
        return x

    def _run_chunk(self, chunk: Chunk, embeds: np.ndarray) -> np.ndarray:
        """Hidden state of the chunk's last token."""
        group, start, count = chunk.group, chunk.start, chunk.count
        if not self.exact_shapes:
            # Trimmed: n real rows against exactly `start` history rows (a one-row placeholder when none).
            mask = np.zeros((1, count, start + count), dtype=np.float32)
            mask[0, :, start:] = prefill_mask(0, ShapeGroup(-1, count, 0, 1))[0]
            indices = np.arange(start, start + count, dtype=np.uint32).reshape(1, count)
            out = self._run_layers(embeds.reshape(1, count, -1), indices, mask, max(start, 1), start, count)
            return out[0, count - 1]
        if group.is_decode:
            out = self._run_layers(embeds.reshape(1, 1, -1), decode_indices(start), decode_mask(start, group.history),
                                   group.kv_rows, start, 1)
            return out[0, 0]
        x = np.zeros((1, group.tokens, self.spec.hidden), dtype=np.float32)
        x[0, :count] = embeds
        out = self._run_layers(x, prefill_indices(start, count, group.tokens), prefill_mask(start, group),
                               group.kv_rows, start, count)
        return out[0, count - 1]

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this decoder stack is closed; load the model again")

    def _logits(self, hidden: np.ndarray) -> np.ndarray:
        (logits,) = self._post.run(None, {"input": hidden.reshape(1, 1, -1).astype(np.float32, copy=False)})
        return logits.reshape(-1)

    def _plan(self, start: int, count: int) -> list[Chunk]:
        if self.planner is not None or self.exact_shapes:
            return make_plan(self.spec, start, count, self.planner)
        # Trimmed shapes need no compiled window, so even a history longer than the largest prefill
        # group is prefilled in P-token chunks (the card would fall back to one decode call per token).
        if start + count > self.spec.decode_capacity:
            return plan_prefill(self.spec, start, count)  # raises the capacity error
        size = self.spec.prefill_chunk
        return [Chunk(s, min(size, start + count - s), self.spec.decode_group)
                for s in range(start, start + count, size)]

    def prefill(self, embeds: np.ndarray, start: int, want_logits: bool = True) -> np.ndarray | None:
        self._check_open()
        embeds = np.asarray(embeds, dtype=np.float32)
        if len(embeds) < 1:
            raise ValueError("nothing to prefill: no embeddings given")
        hidden = None
        for chunk in self._plan(start, len(embeds)):
            offset = chunk.start - start
            hidden = self._run_chunk(chunk, embeds[offset:offset + chunk.count])
        assert hidden is not None  # plan_prefill never returns an empty plan
        return self._logits(hidden) if want_logits else None

    def decode(self, embed: np.ndarray, pos: int) -> np.ndarray:
        self._check_open()
        group = select_decode_group(self.spec, pos)
        hidden = self._run_chunk(Chunk(pos, 1, group), np.asarray(embed, dtype=np.float32))
        return self._logits(hidden)

    # -- prefix cache support ----------------------------------------------------------------

    def kv_save(self, length: int) -> KVSnapshot:
        return self._kv.save(length)

    def kv_restore(self, snapshot: KVSnapshot) -> None:
        self._kv.restore(snapshot)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._layers.clear()
        self._post = None  # releases the session and its thread pool even while the stack object lives on
        self._kv.clear()
        log.debug("onnx decoder stack closed")
