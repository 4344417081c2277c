"""What the card computes, without the card: onnxruntime on a CPU twin with the card's numerics.

Every tensor that crosses a model boundary on the card is bf16, so this reference rounds exactly there
(embeddings in, K/V rows, hidden states between layers, logits out), runs each chunk with its compiled
group shape (padding rows included) and uses the same session options as the simulated card. A backend
driving the simulated card correctly therefore matches it bit for bit; the float32 `onnx` backend only
matches it up to bf16 rounding. Needs onnxruntime (the [cpu] extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..bf16 import bf16_round
from ..contract import (
    decode_indices,
    decode_mask,
    prefill_indices,
    prefill_mask,
    select_decode_group,
)
from ..host_kv import HostKV, as_bf16_values
from ..planner import Planner, make_plan
from ..protocol import KVSnapshot
from ..spec import ShapeGroup, StackSpec
from .models import LAYER_OUTPUTS, load_twin


class CardReference:
    """A DecoderStack with host KV (bf16 values held as float32) and card-exact rounding."""

    # How prefill() splits a prompt (runtime/planner.py); None: plain chunks. open_stack sets it from costs.
    planner: Planner | None = None

    def __init__(self, layer_paths: Sequence[str | Path], post_path: str | Path, threads: int = 1) -> None:
        self._layers = [load_twin(str(p), threads) for p in layer_paths]
        self._post = load_twin(str(post_path), threads)
        first = self._layers[0]
        dims = {t.name: t.dims for t in (*first.inputs, *first.outputs)}
        groups = tuple(ShapeGroup(g, dims["indices"][g][1], dims["mask"][g][2] - dims["indices"][g][1],
                                  dims["K_cache"][g][1]) for g in range(first.groups))
        self.spec = StackSpec(layers=len(self._layers), hidden=dims["input"][0][-1], kv_dim=dims["K_cache"][0][-1],
                              vocab=self._post.outputs[0].dims[0][-1], groups=groups, io_dtype="bfloat16")
        self._kv = HostKV(len(self._layers), self.spec.decode_capacity, self.spec.kv_dim, np.float32,
                          adopt=as_bf16_values)  # bf16 values held as float32

    def _run(self, group: ShapeGroup, x: np.ndarray, indices: np.ndarray, mask: np.ndarray,
             start: int, count: int) -> np.ndarray:
        for m, layer in enumerate(self._layers):
            k_cache, v_cache = self._kv.rows(m, group.kv_rows)
            out = layer.runner.run(group.index, {"input": x, "indices": indices, "mask": bf16_round(mask),
                                                 "K_cache": k_cache, "V_cache": v_cache})
            k, v, x = (bf16_round(out[name]) for name in LAYER_OUTPUTS)
            self._kv.write(m, start, k[0, :count], v[0, :count])
        return x[0]

    def _logits(self, hidden: np.ndarray) -> np.ndarray:
        out = self._post.runner.run(0, {"input": hidden.reshape(1, 1, -1)})
        return bf16_round(out[self._post.outputs[0].name]).reshape(-1)

    def _decode_hidden(self, embed: np.ndarray, pos: int) -> np.ndarray:
        group = select_decode_group(self.spec, pos)
        x = bf16_round(embed).reshape(1, 1, -1)
        return self._run(group, x, decode_indices(pos), decode_mask(pos, group.history), pos, 1)[0]

    def prefill(self, embeds: np.ndarray, start: int, want_logits: bool = True) -> np.ndarray | None:
        embeds = np.asarray(embeds, np.float32).reshape(-1, self.spec.hidden)
        hidden = None
        for chunk in make_plan(self.spec, start, len(embeds), self.planner):
            rows = embeds[chunk.start - start: chunk.start - start + chunk.count]
            if chunk.group.is_decode:
                hidden = self._decode_hidden(rows[0], chunk.start)
                continue
            x = np.zeros((1, chunk.group.tokens, self.spec.hidden), np.float32)
            x[0, :chunk.count] = bf16_round(rows)
            out = self._run(chunk.group, x, prefill_indices(chunk.start, chunk.count, chunk.group.tokens),
                            prefill_mask(chunk.start, chunk.group), chunk.start, chunk.count)
            hidden = out[chunk.count - 1]
        assert hidden is not None
        return self._logits(hidden) if want_logits else None

    def decode(self, embed: np.ndarray, pos: int) -> np.ndarray:
        return self._logits(self._decode_hidden(np.asarray(embed, np.float32), pos))

    def kv_save(self, length: int) -> KVSnapshot:
        return self._kv.save(length)

    def kv_restore(self, snapshot: KVSnapshot) -> None:
        self._kv.restore(snapshot)

    def close(self) -> None:
        self._layers.clear()
        self._kv.clear()
