"""The CPU serving layout of the onnx backend: all decoder layers of a twin in one onnxruntime session.

The per-layer graphs keep the vendor contract (what the card runs, and what the card-path tests check);
driving them costs one `session.run` per layer per token, plus a Python round trip and a KV row copy
each. For CPU serving the layer graphs are composed at load time, unchanged, into one graph: layer i's
`output` feeds layer i+1's `input`, `indices` and `mask` are shared, and each layer keeps its own
`K_cache_i` / `V_cache_i` inputs and `K_cache_out_i` / `V_cache_out_i` outputs. The arithmetic is the
per-layer graphs' own, so the tokens are the same as on the per-layer path.

The KV cache stays in the host arrays (runtime/host_kv.py `HostKV`), bound in place with onnxruntime's IOBinding:
each layer's whole cache array is bound once as its `K_cache_i` input (the graph reads the first
Hc = M - S rows, M being the mask width), and each step binds the `K_cache_out_i` outputs to the cache
rows of the new positions, so onnxruntime writes the new keys and values where they belong and no
row is copied by Python.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .host_kv import HostKV
from .onnx_backend import (
    LAYER_INPUTS,
    LAYER_OUTPUTS,
    OnnxDecoderStack,
    TwinFormatError,
    import_onnxruntime,
    read_shape_groups,
    session_options,
)
from .spec import StackSpec

log = logging.getLogger(__name__)

SHARED_INPUTS = ("indices", "mask")  # one tensor for every layer


def _layer_names(layer: int, last: bool) -> dict[str, str]:
    """How the contract names of layer `layer` are called in the fused graph."""
    return {
        "input": "input" if layer == 0 else f"hidden_{layer - 1}",
        "output": "output" if last else f"hidden_{layer}",
        "K_cache": f"K_cache_{layer}", "V_cache": f"V_cache_{layer}",
        "K_cache_out": f"K_cache_out_{layer}", "V_cache_out": f"V_cache_out_{layer}",
        "indices": "indices", "mask": "mask", "": "",  # "" marks an omitted optional input
    }


def fuse_layer_models(models: Sequence[Any]) -> Any:
    """Compose per-layer twin graphs (onnx ModelProtos, in layer order) into one ModelProto.

    Inputs: input, indices, mask, K_cache_0, V_cache_0, ...; outputs: K_cache_out_0, V_cache_out_0, ...,
    output. Every other name is prefixed with its layer (`l3.qkv_12`), so names stay unique.
    """
    import onnx
    from onnx import helper

    if not models:
        raise TwinFormatError("no layer graphs to fuse")
    first = models[0].graph
    graph = helper.make_graph([], "fused_layers", [], [])
    by_name = {v.name: v for v in first.input}
    graph.input.extend([by_name["input"], by_name["indices"], by_name["mask"]])
    for layer, model in enumerate(models):
        names = _layer_names(layer, last=layer == len(models) - 1)

        def rename(name: str, layer: int = layer, names: dict[str, str] = names) -> str:
            return names.get(name, f"l{layer}.{name}")

        for node in model.graph.node:
            copy = graph.node.add()
            copy.CopyFrom(node)
            copy.name = f"l{layer}.{node.name}"
            copy.input[:] = [rename(n) for n in node.input]
            copy.output[:] = [rename(n) for n in node.output]
        for tensor in model.graph.initializer:
            copy_t = graph.initializer.add()
            copy_t.CopyFrom(tensor)
            copy_t.name = rename(tensor.name)
        for value in model.graph.input:
            if value.name in ("K_cache", "V_cache"):
                graph.input.append(helper.make_tensor_value_info(
                    rename(value.name), value.type.tensor_type.elem_type,
                    [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]))
        for value in model.graph.output:
            if value.name != "output" or layer == len(models) - 1:
                copy_v = graph.output.add()
                copy_v.CopyFrom(value)
                copy_v.name = rename(value.name)
    fused = helper.make_model(graph, opset_imports=list(models[0].opset_import),
                              producer_name=models[0].producer_name)
    fused.ir_version = models[0].ir_version
    onnx.checker.check_model(fused, full_check=False)
    return fused


def _metadata(model: Any) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


class FusedOnnxDecoderStack(OnnxDecoderStack):
    """DecoderStack over one onnxruntime session holding every layer, with the KV cache bound in place.

    Trimmed shapes only (the vendor-shape path is the per-layer `OnnxDecoderStack`, exact_shapes=True).
    """

    def __init__(self, layer_paths: Sequence[Path], post_path: Path, *, threads: int | None = None) -> None:
        import onnx

        ort = import_onnxruntime()
        self.exact_shapes = False
        models = [onnx.load(str(p)) for p in layer_paths]
        self.spec = self._fused_spec(models, layer_paths, ort, post_path, threads)
        fused = fuse_layer_models(models)
        del models
        options = session_options(ort, threads)
        self._session = ort.InferenceSession(fused.SerializeToString(), options, providers=["CPUExecutionProvider"])
        del fused
        self._layers: list[Any] = []  # no per-layer sessions on this layout
        self._kv = HostKV(self.spec.layers, self.spec.decode_capacity, self.spec.kv_dim, np.float32)
        self._binding = self._session.io_binding()
        for layer in range(self.spec.layers):  # the whole cache, bound once; the graph reads its first Hc rows
            self._binding.bind_cpu_input(f"K_cache_{layer}", self._kv.k[layer])
            self._binding.bind_cpu_input(f"V_cache_{layer}", self._kv.v[layer])
        self._closed = False

    def _fused_spec(self, models: Sequence[Any], paths: Sequence[Path], ort: Any, post_path: Path,
                    threads: int | None) -> StackSpec:
        groups = read_shape_groups(_metadata(models[0]), paths[0])
        for model, path in zip(models[1:], paths[1:], strict=True):
            if read_shape_groups(_metadata(model), path) != groups:
                raise TwinFormatError(f"{path} has other shape groups than {paths[0]}")
        for model, path in zip(models, paths, strict=True):
            ins, outs = [v.name for v in model.graph.input], [v.name for v in model.graph.output]
            if tuple(ins) != LAYER_INPUTS or sorted(outs) != sorted(LAYER_OUTPUTS):
                raise TwinFormatError(f"{path} has inputs {ins} and outputs {outs}, expected "
                                      f"{list(LAYER_INPUTS)} and {list(LAYER_OUTPUTS)}")
        dims = {v.name: v.type.tensor_type.shape.dim for v in models[0].graph.input}
        self._post = ort.InferenceSession(str(post_path), session_options(ort, threads),
                                          providers=["CPUExecutionProvider"])
        return StackSpec(layers=len(models), hidden=int(dims["input"][-1].dim_value),
                         kv_dim=int(dims["K_cache"][-1].dim_value),
                         vocab=int(self._post.get_outputs()[0].shape[-1]), groups=groups, io_dtype="float32")

    def _run_layers(self, x: np.ndarray, indices: np.ndarray, mask: np.ndarray, kv_rows: int,
                    start: int, count: int) -> np.ndarray:
        """One run over all layers; the new K/V rows land in the cache rows start..start+count-1 directly."""
        if x.shape[1] != count:
            raise ValueError("the fused layout runs trimmed chunks only: every input row is a real token")
        binding = self._binding
        binding.bind_cpu_input("input", np.ascontiguousarray(x, dtype=np.float32))
        binding.bind_cpu_input("indices", np.ascontiguousarray(indices))
        binding.bind_cpu_input("mask", np.ascontiguousarray(mask))
        shape = [1, count, self.spec.kv_dim]
        for layer in range(self.spec.layers):
            for name, cache in (("K_cache_out", self._kv.k[layer]), ("V_cache_out", self._kv.v[layer])):
                rows = cache[:, start:start + count]  # contiguous: whole rows of a C-contiguous array
                binding.bind_output(f"{name}_{layer}", "cpu", 0, np.float32, shape, rows.ctypes.data)
        out = np.empty((1, count, self.spec.hidden), dtype=np.float32)
        binding.bind_output("output", "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        self._session.run_with_iobinding(binding)
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._session = None
        self._binding = None
        super().close()
