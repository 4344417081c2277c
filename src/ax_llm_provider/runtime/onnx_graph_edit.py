"""Editing an ONNX graph in place: its nodes and initializers with producer/consumer look-ups, integer attributes.

The CPU serving rewrite (runtime/onnx_serving_graph.py, runtime/onnx_serving_rows.py) works on these.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class EditableGraph:
    """A graph's nodes and initializers, with producer/consumer look-ups rebuilt on demand."""

    def __init__(self, nodes: Iterable[onnx.NodeProto], inits: Iterable[TensorProto], copy: bool = True) -> None:
        self.nodes: list[onnx.NodeProto] = []
        for node in nodes:  # copies: the rewrites edit nodes in place, the source graph stays as it was
            if copy:
                node_copy = onnx.NodeProto()
                node_copy.CopyFrom(node)
                node = node_copy
            self.nodes.append(node)
        self.inits: dict[str, TensorProto] = {t.name: t for t in inits}  # not copied: never edited

    def producer(self, name: str) -> onnx.NodeProto | None:
        return next((n for n in self.nodes if name in n.output), None)

    def consumers(self, name: str) -> list[onnx.NodeProto]:
        return [n for n in self.nodes if name in n.input]

    def const(self, name: str) -> np.ndarray | None:
        tensor = self.inits.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def replace(self, old: Sequence[onnx.NodeProto], new: Sequence[onnx.NodeProto]) -> None:
        """Drop `old` nodes; insert `new` where the last of them stood (their inputs are all produced before it)."""
        at = max(self._index(n) for n in old)
        for node in new:
            self.nodes.insert(at + 1, node)
            at += 1
        drop = {id(n) for n in old}
        self.nodes = [n for n in self.nodes if id(n) not in drop]

    def _index(self, node: onnx.NodeProto) -> int:
        return next(i for i, n in enumerate(self.nodes) if n is node)


def only_consumer(g: EditableGraph, name: str, op: str) -> onnx.NodeProto | None:
    """The node reading `name`, when exactly one node reads it and it is an `op`."""
    users = g.consumers(name)
    return users[0] if len(users) == 1 and users[0].op_type == op else None


def int_attr(node: onnx.NodeProto, name: str, default: int | None = None) -> int | None:
    return next((a.i for a in node.attribute if a.name == name), default)


def set_int_attr(node: onnx.NodeProto, name: str, value: int) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(name, value)])
