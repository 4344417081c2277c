"""Models the simulated card can load: CPU-twin ONNX graphs, or synthetic "null compute" models.

Either way the card reports what the real engine reports for the vendor axmodel: the contract's tensor
names, dims per shape group (decode: K_cache [1,C,kv_dim], mask [1,1,C+1]; prefill groups from the
`ax.shape_groups` metadata), data type BF16 for every float tensor, UINT32 for `indices`, and sizes in bytes.
A twin executes through onnxruntime in float32 (bf16 at the device boundary); a null model reads nothing
and writes deterministic pseudo-random bf16, so benchmarks can use a full-size geometry cheaply.

The "no history" prefill group declares its placeholder `K_cache` / `V_cache` as [1, 1, hidden], the shape
vendor code feeds there (docs/sdk-notes.md, "The no-history placeholder"); it is never read, so a twin's
graph gets zeros of its own [1, 1, kv_dim] instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from math import prod
from typing import Any, Protocol

import numpy as np

from .. import axcl_codes as codes
from ..bf16 import float32_to_bf16
from .timing import Geometry

LAYER_INPUTS = ("input", "indices", "mask", "K_cache", "V_cache")
LAYER_OUTPUTS = ("K_cache_out", "V_cache_out", "output")
PLACEHOLDERS = ("K_cache", "V_cache")
_ORT_TYPES = {"tensor(float)": codes.AXCL_DATA_TYPE_BF16, "tensor(uint32)": codes.AXCL_DATA_TYPE_UINT32,
              "tensor(int32)": codes.AXCL_DATA_TYPE_INT32, "tensor(float16)": codes.AXCL_DATA_TYPE_FP16,
              "tensor(uint8)": codes.AXCL_DATA_TYPE_UINT8, "tensor(int8)": codes.AXCL_DATA_TYPE_INT8}


class ModelFormatError(ValueError):
    """The file cannot be presented as a vendor layer/post model."""


@dataclass(frozen=True)
class TensorDesc:
    name: str
    dtype: int  # axclrtEngineDataType
    dims: tuple[tuple[int, ...], ...]  # one shape per shape group
    sizes: tuple[int, ...] = field(init=False, repr=False, compare=False)  # bytes per shape group

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", tuple(prod(d) * codes.DATA_TYPE_BYTES[self.dtype] for d in self.dims))

    def size(self, group: int) -> int:
        return self.sizes[group]


class Runner(Protocol):
    needs_inputs: bool

    def run(self, group: int, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """float32/uint32 arrays for the model's outputs, or uint8 arrays holding the raw output bytes."""
        ...


@dataclass
class ModelDesc:
    inputs: tuple[TensorDesc, ...]
    outputs: tuple[TensorDesc, ...]
    kind: str  # "layer" (decode + prefill groups), "post" (lm-head) or "other"
    cmm_bytes: int
    runner: Runner
    compiler_version: str = "sim"
    group_tokens: tuple[int, ...] = field(default=())
    # (group, tensor) -> the shape the runner wants where the card declares another (the unread placeholder)
    runner_shapes: dict[tuple[int, str], tuple[int, ...]] = field(default_factory=dict)

    @property
    def groups(self) -> int:
        return len(self.inputs[0].dims)


def _layer_dims(name: str, tokens: int, history: int, kv_rows: int, hidden: int, kv_dim: int) -> tuple[int, ...]:
    if history == 0 and name in PLACEHOLDERS:
        return (1, 1, hidden)  # what vendor bundles declare for the unread no-history cache
    return {
        "input": (1, tokens, hidden), "output": (1, tokens, hidden), "indices": (1, tokens),
        "mask": (1, tokens, history + tokens), "K_cache": (1, kv_rows, kv_dim), "V_cache": (1, kv_rows, kv_dim),
        "K_cache_out": (1, tokens, kv_dim), "V_cache_out": (1, tokens, kv_dim),
    }[name]


def _placeholder_runner_shapes(groups: list[dict[str, int]], kv_dim: int) -> dict[tuple[int, str], tuple[int, ...]]:
    return {(g, name): (1, max(group["kv_rows"], 1), kv_dim)
            for g, group in enumerate(groups) if group["history"] == 0 for name in PLACEHOLDERS}


def _layer_tensors(names: tuple[str, ...], dtypes: dict[str, int], groups: list[dict[str, int]],
                   hidden: int, kv_dim: int) -> tuple[TensorDesc, ...]:
    return tuple(
        TensorDesc(n, dtypes[n], tuple(_layer_dims(n, g["tokens"], g["history"], g["kv_rows"], hidden, kv_dim)
                                       for g in groups))
        for n in names
    )


# -- null compute ----------------------------------------------------------------------------------


@cache
def _noise(name: str, nbytes: int) -> np.ndarray:
    """Deterministic bf16 noise (N(0, 1)) as raw bytes; cached because every layer shares the geometry."""
    rng = np.random.default_rng([sum(map(ord, name)), nbytes])
    values = rng.standard_normal(nbytes // 2, dtype=np.float32)
    return float32_to_bf16(values).view(np.uint8)


class NullRunner:
    needs_inputs = False

    def __init__(self, outputs: tuple[TensorDesc, ...]) -> None:
        groups = len(outputs[0].dims)
        self._results = [{t.name: _noise(t.name, t.size(g)) for t in outputs} for g in range(groups)]

    def run(self, group: int, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._results[group]


def null_layer(geometry: Geometry) -> ModelDesc:
    g = geometry
    groups = [{"tokens": 1, "history": g.capacity, "kv_rows": g.capacity}]
    groups += [{"tokens": g.chunk, "history": h, "kv_rows": max(h, 1)} for h in g.prefill_histories]
    groups += [{"tokens": 1, "history": c, "kv_rows": c} for c in g.extra_decode_capacities]
    dtypes = {n: codes.AXCL_DATA_TYPE_BF16 for n in LAYER_INPUTS + LAYER_OUTPUTS}
    dtypes["indices"] = codes.AXCL_DATA_TYPE_UINT32
    outputs = _layer_tensors(LAYER_OUTPUTS, dtypes, groups, g.hidden, g.kv_dim)
    return ModelDesc(_layer_tensors(LAYER_INPUTS, dtypes, groups, g.hidden, g.kv_dim), outputs, "layer",
                     g.layer_cmm_bytes, NullRunner(outputs), "sim-null",
                     tuple(x["tokens"] for x in groups))


def null_post(geometry: Geometry) -> ModelDesc:
    bf16 = codes.AXCL_DATA_TYPE_BF16
    outputs = (TensorDesc("output", bf16, ((1, 1, geometry.vocab),)),)
    return ModelDesc((TensorDesc("input", bf16, ((1, 1, geometry.hidden),)),), outputs, "post",
                     geometry.post_cmm_bytes, NullRunner(outputs), "sim-null", (1,))


# -- CPU twin --------------------------------------------------------------------------------------


class OrtRunner:
    needs_inputs = True

    def __init__(self, session: Any, output_names: list[str]) -> None:
        self._session = session
        self._names = output_names

    def run(self, group: int, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._names, self._session.run(self._names, feeds), strict=True))


def _ort_session(source: str | bytes, threads: int) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ImportError("the simulated card runs CPU twins with onnxruntime: "
                          "pip install 'ax-llm-provider[cpu]'") from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # fixed, so results match other sessions bit for bit
    options.inter_op_num_threads = 1
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _fixed(shape: list[Any], what: str) -> tuple[int, ...]:
    if not all(isinstance(d, int) for d in shape):
        raise ModelFormatError(f"{what} has symbolic dims {shape} and no ax.shape_groups metadata to fix them")
    return tuple(shape)


def load_twin(source: str | bytes, threads: int = 1, path: str = "<memory>") -> ModelDesc:
    """Describe and prepare a CPU-twin layer or post graph (docs/cpu-twin.md) as the card would.

    `source` is a file path or the ONNX bytes (engine_load_from_mem); `path` names it in messages.
    """
    if isinstance(source, str):
        path = source
    session = _ort_session(source, threads)
    meta = session.get_modelmeta().custom_metadata_map
    ins, outs = session.get_inputs(), session.get_outputs()
    dtypes = {}
    for t in (*ins, *outs):
        if t.type not in _ORT_TYPES:
            raise ModelFormatError(f"{path}: tensor {t.name} has type {t.type}, which the card cannot hold")
        dtypes[t.name] = _ORT_TYPES[t.type]
    runner = OrtRunner(session, [o.name for o in outs])
    size = len(source) if isinstance(source, bytes) else os.path.getsize(source)
    if "ax.shape_groups" in meta:
        groups = json.loads(meta["ax.shape_groups"])
        names = {t.name for t in (*ins, *outs)}
        if not set(LAYER_INPUTS + LAYER_OUTPUTS) <= names:
            raise ModelFormatError(f"{path}: a layer twin needs tensors {LAYER_INPUTS + LAYER_OUTPUTS}, "
                                   f"has {sorted(names)}")
        shapes = {t.name: t.shape for t in ins}
        hidden, kv_dim = shapes["input"][-1], shapes["K_cache"][-1]
        return ModelDesc(_layer_tensors(tuple(t.name for t in ins), dtypes, groups, hidden, kv_dim),
                         _layer_tensors(tuple(t.name for t in outs), dtypes, groups, hidden, kv_dim),
                         "layer", size, runner, "sim-twin", tuple(g["tokens"] for g in groups),
                         _placeholder_runner_shapes(groups, kv_dim))
    kind = "post" if os.path.basename(path).rsplit(".", 1)[0].endswith("_post") else "other"
    return ModelDesc(tuple(TensorDesc(t.name, dtypes[t.name], (_fixed(t.shape, f"{path}:{t.name}"),)) for t in ins),
                     tuple(TensorDesc(t.name, dtypes[t.name], (_fixed(t.shape, f"{path}:{t.name}"),)) for t in outs),
                     kind, size, runner, "sim-twin", (1,))


def shuffled(desc: ModelDesc, seed: int) -> ModelDesc:
    """The same model with its inputs and outputs in another index order (the real order is unknown)."""
    rng = np.random.default_rng(seed)
    ins = tuple(desc.inputs[i] for i in rng.permutation(len(desc.inputs)))
    outs = tuple(desc.outputs[i] for i in rng.permutation(len(desc.outputs)))
    return ModelDesc(ins, outs, desc.kind, desc.cmm_bytes, desc.runner, desc.compiler_version, desc.group_tokens,
                     desc.runner_shapes)


ModelFactory = Callable[[], ModelDesc]
