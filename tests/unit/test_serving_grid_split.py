"""The serving graph's grid/remainder rows: the grid row is each block on the int8 kernel's own grid, exactly."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from ax_llm_provider.runtime.onnx_graph_edit import EditableGraph
from ax_llm_provider.runtime.onnx_serving_graph import OPSET
from ax_llm_provider.runtime.onnx_serving_rows import CONTRIB, grid_split

BLOCK = 32


def split_rows(x: np.ndarray) -> np.ndarray:
    """Run the rewrite's split alone on x [1, S, K]; returns [1, 2S, K] (grid rows, then remainder rows)."""
    g = EditableGraph([], [])
    out, nodes = grid_split(g, "x", x.shape[-1], BLOCK)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "S", x.shape[-1]])]
    graph = helper.make_graph(nodes, "split", inputs, [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                              list(g.inits.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(CONTRIB, 1)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


@pytest.mark.parametrize("rows", [1, 3])
def test_grid_rows_sit_on_each_blocks_int8_grid_and_the_remainder_completes_them(rows: int) -> None:
    rng = np.random.default_rng(rows)
    k = 18 * BLOCK
    scales = np.exp(rng.normal(0, 3, size=(1, rows, k // BLOCK, 1)))  # blocks from ~1e-4 to ~1e4
    x = (rng.standard_normal((1, rows, k // BLOCK, BLOCK)) * scales).astype(np.float32)
    x[0, 0, 2] = 0.0  # an all-zero block must not turn into NaN
    x[0, -1, 5, 7] = 1e3 * np.abs(x[0, -1, 5]).max()  # an outlier: the rest of its block lands on coarse steps
    x = x.reshape(1, rows, k)
    both = split_rows(x)
    assert both.shape == (1, 2 * rows, k)
    grid, rest = both[:, :rows].reshape(rows, -1, BLOCK), both[:, rows:].reshape(rows, -1, BLOCK)
    blocks = x.reshape(rows, -1, BLOCK)
    amax = np.abs(blocks).max(-1, keepdims=True)
    step = amax / np.float32(127)
    codes = np.divide(grid, step, out=np.zeros_like(grid), where=step > 0)
    # whole steps, up to float rounding of the product (a few 1e-4 of a step on aarch64, where the kernel does not
    # compute code x step exactly): the projection kernel rounds this row back to the same codes
    assert np.abs(codes - np.round(codes)).max() < 1e-3
    assert np.abs(codes).max() < 127.001
    assert np.allclose(np.abs(grid).max(-1, keepdims=True), amax, rtol=1e-5)  # the kernel's step is the same
    assert np.all(np.abs(rest) <= step * (0.5 + 1e-3) + 1e-30)  # under half a step: quantized ~250x finer
    np.testing.assert_allclose(grid + rest, blocks, rtol=0, atol=float(amax.max()) * 1e-7)
    assert not np.isnan(both).any() and not both[0, 0].reshape(-1, BLOCK)[2].any()


def test_grid_row_products_match_the_float_product_where_one_row_as_is_does_not() -> None:
    """Through a 4-bit projection at int8 compute: grid + remainder rows near the float product, one row far off.

    The zero points are given, as the converter writes them: on aarch64 onnxruntime's int8 kernel without them is
    ~1e-2 off the float product whatever the rows."""
    rng = np.random.default_rng(7)
    k, n = 6 * BLOCK, 40
    codes = rng.integers(0, 16, size=(n, k)).astype(np.uint8)
    scales = (rng.random((n, k // BLOCK)) * 0.02 + 0.001).astype(np.float32)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).reshape(n, k // BLOCK, BLOCK // 2)
    zero_points = np.full(n * ((k // BLOCK + 1) // 2), 8 | 8 << 4, dtype=np.uint8)  # two 4-bit points a byte
    weights = (codes.reshape(n, -1, BLOCK) - 8.0) * scales[..., None]
    node = helper.make_node("MatMulNBits", ["a", "w", "s", "z"], ["y"], domain=CONTRIB, K=k, N=n, bits=4,
                            block_size=BLOCK, accuracy_level=4)
    graph = helper.make_graph([node], "p", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, "M", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [onnx.numpy_helper.from_array(packed, "w"),
                               onnx.numpy_helper.from_array(scales.reshape(-1), "s"),
                               onnx.numpy_helper.from_array(zero_points, "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(CONTRIB, 1)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = (rng.standard_normal((1, 1, k)) * np.repeat(np.exp(rng.normal(0, 2, k // BLOCK)), BLOCK)).astype(np.float32)
    exact = x[0].astype(np.float64) @ weights.reshape(n, k).T.astype(np.float64)
    two = session.run(None, {"a": split_rows(x)})[0]
    one = session.run(None, {"a": x})[0]
    scale = np.abs(exact).max()
    two_error = np.abs(two[0, 0] + two[0, 1] - exact[0]).max() / scale
    one_error = np.abs(one[0, 0] - exact[0]).max() / scale
    assert two_error < 1e-4
    assert one_error > 30 * two_error  # what the split is for
