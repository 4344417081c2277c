"""The `serving` layout of the onnx backend: the CPU serving graph (runtime/onnx_serving_graph.py) in one session.

One `run` per step evaluates every layer, the final norm and the lm head. The KV cache is one
`[1, kv_heads, C, head_dim]` float32 array per layer and per K/V, bound once as both the GroupQueryAttention
`past_*` input and its `present_*` output: onnxruntime appends the new rows in place. The other bindings
(the input rows, the two sequence-length scalars, the logits) are preallocated arrays rebound only when a
shape changes, so a decode step copies one embedding in and reads the logits out.

Snapshots (`kv_save` / `kv_restore`) use the rows-by-position layout every backend shares
([length, kv_dim], kv_dim = kv_heads * head_dim, heads side by side), converted from and to the
head-major cache here, so the prefix cache works as on the other layouts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .contract import plan_prefill, select_decode_group
from .onnx_backend import TwinFormatError, import_onnxruntime, read_shape_groups, session_options
from .protocol import KVSnapshot
from .spec import StackSpec

log = logging.getLogger(__name__)


SPIN_ENV = "AX_LLM_ONNX_SPIN"


def spin_decode() -> bool:
    """Whether the decode session's workers spin inside a step: yes unless AX_LLM_ONNX_SPIN=0.

    A decode step is ~1400 small nodes; each projection and each attention is a parallel section, and a
    sleeping worker pays a wake-up in each, so without spinning 2 threads decode little faster than 1
    (docs/cpu-twin.md). The spinning stops when the step's run returns (onnxruntime's
    `session.force_spinning_stop`): between steps and when idle the workers sleep, so the cores go back to
    the host's other work. AX_LLM_ONNX_SPIN=0 never spins at all.
    """
    raw = os.environ.get(SPIN_ENV, "1").strip().lower()
    if raw in ("1", "true", "yes", "on", ""):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{SPIN_ENV}={raw!r} is not understood: set it to 1 (spin inside a decode step, the default) "
                     "or 0 (never spin)")


class ServingOnnxDecoderStack:
    """DecoderStack over the CPU serving graph: fused operators, every layer and the post graph in one session.

    Two sessions of the same graph share the KV arrays: prefill chunks run the 4-bit projections on
    onnxruntime's fp32-compute kernel (the faster one for many rows), decode steps on its int8-compute kernel
    over grid/remainder rows (about 4x faster for one row; runtime/onnx_serving_rows.py). Which one runs
    depends only on the call (prefill or decode), so a prompt's KV rows come out the same whether it is
    prefilled at once or in pieces after a prefix-cache restore.
    """

    planner = None  # plain chunks: the CPU's cost grows with the tokens, no plan beats them
    exact_shapes = False  # trimmed shapes only; the card's exact shapes run on the per-layer layout

    def __init__(self, layer_paths: Sequence[Path], post_path: Path, *, threads: int | None = None,
                 spin: bool | None = None) -> None:
        import onnx

        from .onnx_serving_graph import build_serving_graph

        ort = import_onnxruntime()
        spin = spin_decode() if spin is None else spin  # read first: a bad value fails before anything loads
        layers = [onnx.load(str(p)) for p in layer_paths]
        groups = read_shape_groups({p.key: p.value for p in layers[0].metadata_props}, layer_paths[0])
        for model, path in zip(layers[1:], layer_paths[1:], strict=True):
            if read_shape_groups({p.key: p.value for p in model.metadata_props}, path) != groups:
                raise TwinFormatError(f"{path} has other shape groups than {layer_paths[0]}")
        post = onnx.load(str(post_path))
        vocab = int(post.graph.output[0].type.tensor_type.shape.dim[-1].dim_value)
        capacity = max(g.history for g in groups if g.is_decode)
        sessions = []
        self._weights: dict[str, np.ndarray] = {}  # shared by both sessions; must outlive them
        self._weight_values: list[Any] = []
        for int8_rows in (False, True):
            graph, geo, names = build_serving_graph(layers, post, capacity, int8_rows, self._weights)
            values = [ort.OrtValue.ortvalue_from_numpy(self._weights[n]) for n in names]
            self._weight_values += values
            options = session_options(ort, threads, spin=int8_rows and spin)  # only decode steps spin
            options.add_external_initializers(names, values)
            sessions.append(ort.InferenceSession(graph.SerializeToString(), options,
                                                 providers=["CPUExecutionProvider"]))
            del graph
        del layers, post
        self.spec = StackSpec(layers=len(layer_paths), hidden=geo.hidden, kv_dim=geo.kv_heads * geo.head_dim,
                              vocab=vocab, groups=groups, io_dtype="float32")
        shape = (1, geo.kv_heads, capacity, geo.head_dim)
        self._k = [np.zeros(shape, dtype=np.float32) for _ in range(self.spec.layers)]
        self._v = [np.zeros(shape, dtype=np.float32) for _ in range(self.spec.layers)]
        self._seqlens = np.zeros(1, dtype=np.int32)  # start + rows - 1
        self._total = np.zeros((), dtype=np.int32)  # start + rows
        self._logits = np.zeros((1, 1, vocab), dtype=np.float32)
        self._chunk, self._step = (_Bound(s, self) for s in sessions)
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this decoder stack is closed; load the model again")

    def prefill(self, embeds: np.ndarray, start: int, want_logits: bool = True) -> np.ndarray | None:
        self._check_open()
        embeds = np.asarray(embeds, dtype=np.float32)
        count = len(embeds)
        if count < 1:
            raise ValueError("nothing to prefill: no embeddings given")
        if start + count > self.spec.decode_capacity:
            plan_prefill(self.spec, start, count)  # raises the capacity error every backend raises
        size = self.spec.prefill_chunk
        for offset in range(0, count, size):
            self._chunk.run(embeds[offset:offset + size], start + offset)
        return self._logits.reshape(-1).copy() if want_logits else None

    def decode(self, embed: np.ndarray, pos: int) -> np.ndarray:
        self._check_open()
        select_decode_group(self.spec, pos)  # raises beyond the capacity, as every backend does
        self._step.run(np.asarray(embed, dtype=np.float32).reshape(1, -1), pos)
        return self._logits.reshape(-1).copy()

    # -- prefix cache support: rows by position, [length, kv_heads * head_dim] ---------------------

    def kv_save(self, length: int) -> KVSnapshot:
        def rows(cache: np.ndarray) -> np.ndarray:
            # a copy always: with one KV head the transposed view is already contiguous and would alias the cache
            return cache[0, :, :length].transpose(1, 0, 2).reshape(length, self.spec.kv_dim).copy()

        return KVSnapshot(length=length, k=tuple(rows(k) for k in self._k), v=tuple(rows(v) for v in self._v))

    def kv_restore(self, snapshot: KVSnapshot) -> None:
        n = snapshot.length
        for layer in range(self.spec.layers):
            for cache, saved in ((self._k[layer], snapshot.k[layer]), (self._v[layer], snapshot.v[layer])):
                heads, _, dim = cache.shape[1:]
                cache[0, :, :n] = np.asarray(saved).reshape(n, heads, dim).transpose(1, 0, 2)  # in place: bound

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        del self._chunk, self._step  # releases the sessions and their thread pools while the stack lives on
        self._weight_values.clear()
        self._weights.clear()
        self._k.clear()
        self._v.clear()
        log.debug("onnx serving stack closed")


class _Bound:
    """One session with the stack's arrays bound: the KV caches (past and present: appended in place), the
    two sequence-length scalars and the logits once; the input rows when their count changes."""

    def __init__(self, session: Any, stack: ServingOnnxDecoderStack) -> None:
        self._session, self._stack = session, stack
        self._rows: np.ndarray | None = None
        binding = self._binding = session.io_binding()
        binding.bind_cpu_input("seqlens_k", stack._seqlens)
        binding.bind_cpu_input("total_sequence_length", stack._total)
        logits = stack._logits
        binding.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        for layer in range(stack.spec.layers):
            for kind, cache in (("key", stack._k[layer]), ("value", stack._v[layer])):
                binding.bind_cpu_input(f"past_{kind}_{layer}", cache)
                binding.bind_output(f"present_{kind}_{layer}", "cpu", 0, np.float32, list(cache.shape),
                                    cache.ctypes.data)

    def run(self, rows: np.ndarray, start: int) -> None:
        """Evaluate rows [n, H] at positions start..start+n-1; the logits of the last land in the stack's array."""
        n = len(rows)
        if self._rows is None or self._rows.shape[1] != n:
            self._rows = np.empty((1, n, self._stack.spec.hidden), dtype=np.float32)
            self._binding.bind_cpu_input("input", self._rows)
        self._rows[0] = rows
        self._stack._seqlens[0] = start + n - 1
        self._stack._total[()] = start + n
        self._session.run_with_iobinding(self._binding)
