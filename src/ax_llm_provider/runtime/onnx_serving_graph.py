"""The CPU serving graph: a twin's layer graphs and post graph rewritten into one graph of few, large nodes.

The per-layer twin graphs spell every step in plain ONNX operators (about 85 nodes per layer: the RMS
norms, rotary embedding, the grouped-query attention with its cache slicing, transposes and masks). On
a CPU, decoding one token of a small model is then dominated by the fixed cost of each node, not by
arithmetic. This module rewrites those graphs, at load time, into onnxruntime's fused operators:

- RMS norm (Mul x x, ReduceMean, Add eps, Sqrt, Div, Mul weight) -> `SimplifiedLayerNormalization`;
  a residual Add feeding a norm -> `com.microsoft.SkipSimplifiedLayerNormalization` (sum and norm in one);
- rotary embedding, cache slicing, masking, attention and KV write -> one `com.microsoft.GroupQueryAttention`
  that reads the packed q|k|v projection (or q and k after their per-head norms), applies the rotary
  embedding from `cos_cache`/`sin_cache`, appends the new K/V rows to a `[1, kv_heads, C, head_dim]` cache
  in place (past and present bound to the same buffer) and attends causally;
- every layer and the post graph (final norm and lm head, on the last row only) in one graph;
- the int8-compute products on grid/remainder rows (runtime/onnx_serving_rows.py): the 4-bit projections
  when asked (`int8_rows`, the decode session), the converter's 8-bit heads always.

The projections (MatMulNBits with their offset terms, float MatMuls, biases) are kept node for node, so the
weights are the twin's own. The rewrite recognises the graphs `convert/graph.py` writes: the contract names
(`q_flat`, `k_flat`, `V_cache_out`, `input`, `output`) and the converter's name hints (`q_rope_halves_*`,
`ctx_flat_*`, `inv_freq_*`); a graph that does not have them raises `ServingGraphError`.

Graph inputs: `input` [1, S, H], `seqlens_k` int32 [1] (= start + S - 1), `total_sequence_length` int32 scalar
(= start + S), `past_key_i` / `past_value_i` [1, kv_heads, C, head_dim]. Outputs: `logits` [1, 1, vocab] of
the last row, `present_key_i` / `present_value_i` (the same buffers as the pasts when bound so).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .onnx_graph_edit import EditableGraph, only_consumer
from .onnx_serving_rows import CONTRIB, int8_compute, kernel_grid_heads

OPSET = 17
SHARED = ("seqlens_k", "total_sequence_length", "cos_cache", "sin_cache")
EXTERNAL_BYTES = 4096  # initializers this large stay out of the model proto (build_serving_graph)


class ServingGraphError(ValueError):
    """The twin's graphs are not in the form the serving rewrite recognises (docs/cpu-twin.md)."""


@dataclass(frozen=True)
class Geometry:
    """Attention geometry read from a layer graph."""

    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    inv_freq: np.ndarray  # [head_dim / 2] float32


def _fuse_rms_norms(g: EditableGraph) -> None:
    """Mul(x,x) -> ReduceMean -> Add(eps) -> Sqrt -> Div(x, .) -> Mul(., w)  =>  SimplifiedLayerNormalization."""
    for div in [n for n in g.nodes if n.op_type == "Div"]:
        x, root = div.input
        sqrt = g.producer(root)
        add = g.producer(sqrt.input[0]) if sqrt is not None and sqrt.op_type == "Sqrt" else None
        mean = g.producer(add.input[0]) if add is not None and add.op_type == "Add" else None
        square = g.producer(mean.input[0]) if mean is not None and mean.op_type == "ReduceMean" else None
        scale = only_consumer(g, div.output[0], "Mul")
        if (sqrt is None or add is None or mean is None or square is None or scale is None
                or square.op_type != "Mul" or list(square.input) != [x, x]):
            continue
        eps, weight = g.const(add.input[1]), scale.input[1]
        if eps is None or eps.size != 1 or weight not in g.inits:
            continue
        norm = helper.make_node("SimplifiedLayerNormalization", [x, weight], [scale.output[0]],
                                name=f"{scale.name}_sln", axis=-1, epsilon=float(eps.reshape(-1)[0]), stash_type=1)
        g.replace([square, mean, add, sqrt, div, scale], [norm])


def _fuse_skip_norms(g: EditableGraph) -> None:
    """Add(a, b) feeding SimplifiedLayerNormalization => SkipSimplifiedLayerNormalization (the sum is output 3)."""
    producers = {o: n for n in g.nodes for o in n.output}
    norms_of: dict[str, int] = {}
    for node in g.nodes:
        if node.op_type == "SimplifiedLayerNormalization":
            norms_of[node.input[0]] = norms_of.get(node.input[0], 0) + 1
    for norm in [n for n in g.nodes if n.op_type == "SimplifiedLayerNormalization"]:
        add = producers.get(norm.input[0])
        if add is None or add.op_type != "Add" or any(i in g.inits for i in add.input) or norms_of[add.output[0]] > 1:
            continue
        eps = next(a.f for a in norm.attribute if a.name == "epsilon")
        fused = helper.make_node("SkipSimplifiedLayerNormalization", [add.input[0], add.input[1], norm.input[1]],
                                 [norm.output[0], "", "", add.output[0]], name=f"{norm.name}_skip",
                                 domain=CONTRIB, epsilon=eps)
        g.replace([add, norm], [fused])


def _by_pattern(g: EditableGraph, pattern: str, what: str) -> onnx.NodeProto:
    found = [n for n in g.nodes if n.output and re.fullmatch(pattern, n.output[0])]
    if len(found) != 1:
        raise ServingGraphError(f"expected one {what} node (output {pattern!r}), found {len(found)}")
    return found[0]


def read_geometry(model: onnx.ModelProto) -> Geometry:
    """Heads, kv heads, head dim, hidden width and rotary frequencies of a twin layer graph."""
    g = EditableGraph(model.graph.node, model.graph.initializer, copy=False)
    shapes = {}
    for flat in ("q_flat", "k_flat"):
        reshape = only_consumer(g, flat, "Reshape")
        shape = g.const(reshape.input[1]) if reshape is not None else None
        if shape is None or len(shape) != 4:
            raise ServingGraphError(f"no per-head Reshape of {flat!r} in the layer graph")
        shapes[flat] = shape
    inv = [g.const(name) for name in g.inits if re.fullmatch(r"inv_freq_\d+", name)]
    if len(inv) != 1 or inv[0] is None:
        raise ServingGraphError("no single 'inv_freq_*' rotary frequency initializer in the layer graph")
    hidden = next(v for v in model.graph.input if v.name == "input").type.tensor_type.shape.dim[-1].dim_value
    return Geometry(heads=int(shapes["q_flat"][2]), kv_heads=int(shapes["k_flat"][2]),
                    head_dim=int(shapes["q_flat"][3]), hidden=int(hidden),
                    inv_freq=np.asarray(inv[0], dtype=np.float32).reshape(-1))


def _attention(g: EditableGraph, geo: Geometry) -> None:
    """Replace everything from the q|k|v split to `ctx_flat_*` with one GroupQueryAttention node."""
    split = _by_pattern(g, "q_flat", "q|k|v Split")
    if list(split.output) != ["q_flat", "k_flat", "V_cache_out"]:
        raise ServingGraphError(f"the q|k|v Split has outputs {list(split.output)}")
    ctx = _by_pattern(g, r"ctx_flat_\d+", "attention output")
    q_in = _by_pattern(g, r"q_rope_halves_\d+", "q rotary Split").input[0]
    k_in = _by_pattern(g, r"k_rope_halves_\d+", "k rotary Split").input[0]
    heads_of: dict[str, onnx.NodeProto] = {}
    for name in ("q_flat", "k_flat"):
        reshape = only_consumer(g, name, "Reshape")
        if reshape is None:
            raise ServingGraphError(f"{name} is not read by exactly one Reshape to heads")
        heads_of[name] = reshape
    extra: list[onnx.NodeProto] = []
    if q_in == heads_of["q_flat"].output[0] and k_in == heads_of["k_flat"].output[0]:
        qkv = [split.input[0], "", ""]  # packed: q heads, then k heads, then v heads
    else:  # per-head norms (qwen3) sit between the split and the rotary embedding: flatten their outputs
        flat = "gqa_flat_shape"
        g.inits[flat] = numpy_helper.from_array(np.array([0, 0, -1], dtype=np.int64), flat)
        extra = [helper.make_node("Reshape", [q_in, flat], ["gqa_q"], name="gqa_q_flat"),
                 helper.make_node("Reshape", [k_in, flat], ["gqa_k"], name="gqa_k_flat")]
        qkv = ["gqa_q", "gqa_k", "V_cache_out"]
    gqa = helper.make_node(
        "GroupQueryAttention",
        [*qkv, "past_key", "past_value", "seqlens_k", "total_sequence_length", "cos_cache", "sin_cache"],
        [ctx.output[0], "present_key", "present_value"], name="gqa", domain=CONTRIB,
        num_heads=geo.heads, kv_num_heads=geo.kv_heads, do_rotary=1, rotary_interleaved=0,
        scale=float(1.0 / np.sqrt(geo.head_dim)))
    g.replace([ctx], [*extra, gqa])


def _prune(g: EditableGraph, outputs: Iterable[str]) -> None:
    """Drop nodes and initializers that no wanted output depends on."""
    needed = set(outputs)
    kept: list[onnx.NodeProto] = []
    for node in reversed(g.nodes):
        if any(o in needed for o in node.output if o):
            kept.append(node)
            needed.update(i for i in node.input if i)
    g.nodes = kept[::-1]
    g.inits = {k: v for k, v in g.inits.items() if k in needed}


def _renamed(g: EditableGraph, rename: Any) -> tuple[list[onnx.NodeProto], dict[str, TensorProto]]:
    """The nodes with renamed tensors, and the initializers under their new names (the source tensors, uncopied)."""
    nodes = []
    for node in g.nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = rename(node.name)
        copy.input[:] = [rename(n) if n else "" for n in node.input]
        copy.output[:] = [rename(n) if n else "" for n in node.output]
        nodes.append(copy)
    return nodes, {rename(name): tensor for name, tensor in g.inits.items()}


def rotary_tables(inv_freq: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin [capacity, head_dim / 2] of position * inv_freq, rounded as the layer graphs round them."""
    angles = np.arange(capacity, dtype=np.float32)[:, None] * inv_freq.astype(np.float32)[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def build_serving_graph(layers: Sequence[onnx.ModelProto], post: onnx.ModelProto, capacity: int, int8_rows: bool,
                        store: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, Geometry, list[str]]:
    """One ModelProto running every layer and the post graph (see the module docstring).

    The weights (initializers of 4 kB or more) are not in it: they go into `store` (graph name -> array; names
    already there are reused), the model keeps external-data placeholders, and the names come back third. The
    sessions take the arrays with `SessionOptions.add_external_initializers`, which uses the memory as it is,
    so two sessions of the serving graph share one copy of the weights and no weight is serialized.

    int8_rows: run the 4-bit projections at int8 compute on grid/remainder rows (`onnx_serving_rows.int8_compute`): the
    faster form for one row (decode); the fp32-compute kernel is the faster one for prefill chunks.
    """
    if not layers:
        raise ServingGraphError("no layer graphs to build a serving graph from")
    geo = read_geometry(layers[0])
    nodes: list[onnx.NodeProto] = []
    inits: dict[str, TensorProto] = {}  # graph name -> source tensor (named as in its source graph)
    last = len(layers) - 1
    for i, model in enumerate(layers):
        if not np.array_equal(read_geometry(model).inv_freq, geo.inv_freq):
            raise ServingGraphError(f"layer {i} has other rotary frequencies than layer 0")
        g = EditableGraph(model.graph.node, model.graph.initializer)
        _fuse_rms_norms(g)
        _attention(g, geo)
        if int8_rows:
            int8_compute(g)
        _prune(g, ["output"])
        names = {"input": "input" if i == 0 else f"hidden_{i - 1}", "output": f"hidden_{i}",
                 "past_key": f"past_key_{i}", "past_value": f"past_value_{i}",
                 "present_key": f"present_key_{i}", "present_value": f"present_value_{i}"}
        layer_nodes, layer_inits = _renamed(
            g, lambda n, i=i, names=names: names.get(n, n if n in SHARED else f"l{i}.{n}"))
        nodes += layer_nodes
        inits |= layer_inits
    # The post graph reads the last row of the final hidden state only.
    p = EditableGraph(post.graph.node, post.graph.initializer)
    _fuse_rms_norms(p)
    kernel_grid_heads(p)
    post_nodes, post_inits = _renamed(
        p, lambda n: {"input": "last_row", "output": "logits"}.get(n, f"post.{n}"))
    ends = {"last_start": [-1], "last_end": [np.iinfo(np.int64).max], "last_axis": [1]}
    inits |= {k: numpy_helper.from_array(np.array(v, dtype=np.int64), k) for k, v in ends.items()}
    nodes.append(helper.make_node("Slice", [f"hidden_{last}", "last_start", "last_end", "last_axis"], ["last_row"],
                                  name="last_row"))
    nodes += post_nodes
    inits |= post_inits
    cos, sin = rotary_tables(geo.inv_freq, capacity)
    inits |= {"cos_cache": numpy_helper.from_array(cos, "cos_cache"),
              "sin_cache": numpy_helper.from_array(sin, "sin_cache")}
    whole = EditableGraph(nodes, [], copy=False)
    whole.inits = inits
    _fuse_skip_norms(whole)
    vocab = post.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    cache: list[str | int] = [1, geo.kv_heads, "C", geo.head_dim]
    f32 = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("input", f32, [1, "S", geo.hidden]),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
              helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, [])]
    outputs = [helper.make_tensor_value_info("logits", f32, [1, 1, vocab])]
    for i in range(len(layers)):
        inputs += [helper.make_tensor_value_info(f"past_{kind}_{i}", f32, cache) for kind in ("key", "value")]
        outputs += [helper.make_tensor_value_info(f"present_{kind}_{i}", f32, cache) for kind in ("key", "value")]
    _prune(whole, [o.name for o in outputs])
    model = onnx.ModelProto()  # filled in place: make_graph / make_model would copy the weights again
    model.ir_version = layers[0].ir_version
    model.producer_name = "ax_llm_provider.runtime"
    model.opset_import.extend([helper.make_opsetid("", OPSET), helper.make_opsetid(CONTRIB, 1)])
    model.graph.name = "serving"
    model.graph.node.extend(whole.nodes)
    external = []
    for name, tensor in whole.inits.items():
        placeholder = model.graph.initializer.add()
        if len(tensor.raw_data) < EXTERNAL_BYTES:
            placeholder.CopyFrom(tensor)
        else:
            if name not in store:
                store[name] = numpy_helper.to_array(tensor)
            placeholder.data_type = tensor.data_type
            placeholder.dims.extend(tensor.dims)
            placeholder.data_location = TensorProto.EXTERNAL
            entry = placeholder.external_data.add()
            entry.key, entry.value = "location", "in-memory"
            external.append(name)
        placeholder.name = name
    model.graph.input.extend(inputs)
    model.graph.output.extend(outputs)
    return model, geo, external

