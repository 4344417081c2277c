"""The `axengine` backend: pyaxengine `InferenceSession`s, one per layer plus the post model.

The documented simple, slow fallback. pyaxengine copies every input it is fed host-to-device on every
`run()` and every output back, so the KV cache lives on the host and its full window crosses PCIe on every
layer call (about 10 MB per layer per token for Qwen3-0.6B at C = 2559). It exists for boards and setups
where pyaxcl is missing, and as the baseline the `axcl` backend is measured against.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
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
from .planner import Planner, make_plan
from .protocol import KVSnapshot
from .spec import ShapeGroup, StackSpec

log = logging.getLogger(__name__)
PROVIDER = "AXCLRTExecutionProvider"


def import_axengine() -> Any:
    try:
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

        def session(path: str | Path) -> Any:
            return ax.InferenceSession(str(path), providers=[PROVIDER], provider_options=options)

        self._layers = [session(p) for p in layer_paths]
        self._post = session(post_path)
        self._nodes = _groups(self._layers[0])
        self.spec = self._read_spec()
        c, kv = self.spec.decode_capacity, self.spec.kv_dim
        self._bf16 = next(n.dtype for n in self._nodes[0][0] if n.name == "input")
        self._k = [np.zeros((1, c, kv), np.uint16) for _ in self._layers]
        self._v = [np.zeros((1, c, kv), np.uint16) for _ in self._layers]
        self._closed = False

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
        for m, session in enumerate(self._layers):
            feed = {"input": self._feed(g, "input", x), "indices": self._feed(g, "indices", indices),
                    "mask": self._feed(g, "mask", mask_bits),
                    "K_cache": self._feed(g, "K_cache", self._k[m][:, :rows]),
                    "V_cache": self._feed(g, "V_cache", self._v[m][:, :rows])}
            out = dict(zip(names, session.run(None, feed, shape_group=g), strict=True))
            self._k[m][0, start:start + count] = out["K_cache_out"].view(np.uint16).reshape(-1, self.spec.kv_dim)[:count]
            self._v[m][0, start:start + count] = out["V_cache_out"].view(np.uint16).reshape(-1, self.spec.kv_dim)[:count]
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

    def kv_save(self, length: int) -> KVSnapshot:
        return KVSnapshot(length, tuple(k[0, :length].copy() for k in self._k), tuple(v[0, :length].copy() for v in self._v))

    def kv_restore(self, snapshot: KVSnapshot) -> None:
        n = snapshot.length
        for layer in range(len(self._k)):
            for dst, src in ((self._k[layer], snapshot.k[layer]), (self._v[layer], snapshot.v[layer])):
                dst[0, :n] = src if src.dtype == np.uint16 else float32_to_bf16(src)

    def close(self) -> None:
        """pyaxengine sessions have no close(): dropping them lets its atexit/__del__ unload the models."""
        if self._closed:
            return
        self._closed = True
        self._layers.clear()
        self._post = None
        self._k.clear()
        self._v.clear()
        log.debug("axengine decoder stack closed")
