"""Grid/remainder rows for onnxruntime's int8-compute MatMulNBits kernel: int8 speed, float precision.

At accuracy level 4 the kernel rounds each 32-value block of its input to int8 (step absmax / 127) before
multiplying. Fed x as it is, that rounding changes SmolLM2's greedy tokens. Fed two rows instead, x on that
grid and the remainder (at most half a step, so rounded on a grid ~250x finer), the two products add up to
the float product within ~1e-5 of the block maximum, and the kernel costs far less than its fp32-compute
sibling for one or two rows (docs/cpu-twin.md).

- `int8_compute`: a layer's 4-bit projections move to level 4 on grid/remainder rows;
- `kernel_grid_heads`: the 8-bit heads the converter already feeds grid/remainder rows (its eleven-node split,
  convert/graph.py) take the kernel-made grid and sum their two rows with Split + Add instead of ReduceSum.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .onnx_graph_edit import EditableGraph, int_attr, only_consumer, set_int_attr

CONTRIB = "com.microsoft"


def int8_compute(g: EditableGraph) -> None:
    """Run the fp32-compute 4-bit MatMulNBits at accuracy level 4 (int8 compute) on `grid_split` rows.

    With one input row, onnxruntime's fp32-compute 4-bit kernel costs ~4x its int8-compute kernel on x86-64
    AVX2 (measured with 1.32: 445 vs 111 us for 576 x 3072), and the int8 kernel costs little more for two rows
    than for one.
    """
    splits: dict[str, str] = {}
    for node in [n for n in g.nodes if n.op_type == "MatMulNBits"]:
        k, block = int_attr(node, "K"), int_attr(node, "block_size")
        if (int_attr(node, "bits") != 4 or int_attr(node, "accuracy_level", 0) != 0 or k is None or block is None
                or k % block):
            continue
        set_int_attr(node, "accuracy_level", 4)
        x, y = node.input[0], node.output[0]
        new: list[onnx.NodeProto] = []
        if x not in splits:
            splits[x], new = grid_split(g, x, k, block)
            _reuse_blocks(g, x, k, block)
        node.input[0] = splits[x]
        node.output[0] = f"{y}_rows2"
        users = g.consumers(y)
        offset = users[0] if len(users) == 1 and users[0].op_type == "Add" else None
        at = g.nodes.index(node)
        if offset is not None:  # y + offset term: one Sum of the two halves and the offset term
            g.nodes[at:at + 1] = [*new, node]
            g.replace([offset], _sum_rows(node, [i for i in offset.input if i != y], list(offset.output)))
        else:
            g.nodes[at:at + 1] = [*new, node, *_sum_rows(node, [], [y])]


def kernel_grid_heads(g: EditableGraph) -> None:
    """The converter's level-4 heads: its split of x becomes `grid_split`'s, its row sum a Split + Add.

    The converter spells the grid out (Abs, ReduceMax, Max, Mul, Div, Round, Mul, Sub, Concat, two Reshapes)
    and sums the two result rows with a ReduceSum over a [1, 2, S, N] view, which onnxruntime runs as a generic
    strided reduction (~130 us for the 49152-wide lm head against ~30 us for Split + Add, measured with 1.32).
    A head whose input is not that split, or whose K is not whole blocks, stays as it is.
    """
    for node in [n for n in g.nodes if n.op_type == "MatMulNBits" and int_attr(n, "accuracy_level", 0) == 4]:
        k, block = int_attr(node, "K"), int_attr(node, "block_size")
        x = _converter_split_input(g, node.input[0])
        halves = only_consumer(g, node.output[0], "Reshape")
        total = only_consumer(g, halves.output[0], "ReduceSum") if halves is not None else None
        if x is None or halves is None or total is None or k is None or block is None or k % block:
            continue
        node.input[0], new = grid_split(g, x, k, block)
        at = g.nodes.index(node)
        g.nodes[at:at] = new
        g.replace([halves, total], _sum_rows(node, [], list(total.output)))


def _sum_rows(node: onnx.NodeProto, addends: list[str], outputs: list[str]) -> list[onnx.NodeProto]:
    """The grid row's and the remainder row's products of `node` (its [1, 2S, N] output) summed, with `addends`."""
    y = node.output[0]
    halves = helper.make_node("Split", [y], [f"{y}_grid", f"{y}_rest"], name=f"{node.name}_halves", axis=1)
    total = helper.make_node("Sum" if addends else "Add", [f"{y}_grid", f"{y}_rest", *addends], outputs,
                             name=f"{node.name}_sum")
    return [halves, total]


def _converter_split_input(g: EditableGraph, rows: str) -> str | None:
    """x, when `rows` is Reshape(Concat(grid, Sub(Reshape(x), grid))) as convert/graph.py writes it."""
    reshape = g.producer(rows)
    concat = g.producer(reshape.input[0]) if reshape is not None and reshape.op_type == "Reshape" else None
    if concat is None or concat.op_type != "Concat" or len(concat.input) != 2:
        return None
    rest = g.producer(concat.input[1])
    if rest is None or rest.op_type != "Sub" or rest.input[1] != concat.input[0]:
        return None
    blocks = g.producer(rest.input[0])
    return blocks.input[0] if blocks is not None and blocks.op_type == "Reshape" else None


def _reuse_blocks(g: EditableGraph, x: str, k: int, block: int) -> None:
    """Let the offset term's block sums read the split's [1, S, K / block, block] view of x, not their own."""
    for reshape in g.consumers(x):
        shape = g.const(reshape.input[1]) if reshape.op_type == "Reshape" and len(reshape.input) > 1 else None
        if shape is not None and list(shape) == [0, 0, k // block, block]:
            for user in g.consumers(reshape.output[0]):
                user.input[:] = [f"{x}.blocks" if i == reshape.output[0] else i for i in user.input]


def _identity_weights(g: EditableGraph, block: int) -> list[str]:
    """A `block` x `block` identity (4-bit codes, unit scales, zero points 0), one per source graph (0.5 kB)."""
    names = [f"grid_identity_{block}.{part}" for part in ("codes", "scales", "zero_points")]
    if names[0] not in g.inits:
        eye = np.eye(block, dtype=np.uint8)
        values = [(eye[:, 0::2] | (eye[:, 1::2] << 4)).reshape(block, 1, block // 2),
                  np.ones(block, dtype=np.float32),
                  np.zeros(block, dtype=np.uint8)]  # one byte per row: a row is a single block
        g.inits.update({name: numpy_helper.from_array(value, name) for name, value in zip(names, values, strict=True)})
    return names


def grid_split(g: EditableGraph, x: str, k: int, block: int) -> tuple[str, list[onnx.NodeProto]]:
    """x [1, S, K] -> [1, 2S, K]: x on the int8 grid of each block (absmax / 127 steps), then the remainder.

    The grid row comes from the level-4 kernel itself: an identity MatMulNBits fed the blocks as rows returns each
    rounded to its own grid (step absmax / 127; zero points 0, so no zero-point correction to cancel). The
    projection kernel takes that row without rounding error and the remainder ~250x finer: the two products add
    up to the float product within ~1e-5 of the block maximum (convert/graph.py spells the split out for heads).
    """
    def const(name: str, value: Any) -> str:
        full = f"{x}.{name}"
        g.inits[full] = numpy_helper.from_array(np.asarray(value), full)
        return full

    def node(op: str, inputs: list[str], out: str, **attrs: Any) -> onnx.NodeProto:
        return helper.make_node(op, inputs, [f"{x}.{out}"], name=f"{x}.{out}_node", **attrs)

    identity = _identity_weights(g, block)
    p = f"{x}."
    nodes = [
        node("Reshape", [x, const("blocks_shape", np.array([0, 0, k // block, block], dtype=np.int64))], "blocks"),
        node("MatMulNBits", [p + "blocks", *identity], "grid", domain=CONTRIB, K=block, N=block, bits=4,
             block_size=block, accuracy_level=4),
        node("Sub", [p + "blocks", p + "grid"], "rest"),
        node("Concat", [p + "grid", p + "rest"], "both", axis=1),
        node("Reshape", [p + "both", const("rows_shape", np.array([0, 0, k], dtype=np.int64))], "split"),
    ]
    return p + "split", nodes
