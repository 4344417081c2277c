"""The pyaxengine fake reproduces pyaxengine 0.1.3 (docs/sdk-notes.md, "pyaxengine"); the same pins run on
the real module (-m npu).

On a card, set AX_LLM_TEST_AXMODEL to a `*_together.axmodel` for the session-level checks.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import numpy as np
import pytest

from ax_llm_provider.runtime import axcl_codes as codes
from ax_llm_provider.runtime.simcard import Geometry, SimCard, make_axengine, null_layer

ml_dtypes = pytest.importorskip("ml_dtypes")
G = Geometry(layers=1, hidden=8, kv_dim=4, vocab=16, capacity=6, chunk=4, prefill_histories=(0, 4))
PROVIDER = "AXCLRTExecutionProvider"


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.npu)])
def setup(request: pytest.FixtureRequest) -> tuple[Any, str]:
    """(axengine module, path of a layer model)."""
    if request.param == "real":
        ax = pytest.importorskip("axengine")
        path = os.environ.get("AX_LLM_TEST_AXMODEL") or pytest.skip("set AX_LLM_TEST_AXMODEL")
        return ax, path
    card = SimCard()
    return make_axengine(card), card.register_model("sim://ax/l0.axmodel", lambda: null_layer(G))


def feed(session: Any, group: int = 0) -> dict[str, np.ndarray]:
    return {n.name: np.zeros(n.shape, n.dtype) for n in session.get_inputs(group)}


def test_module_surface(setup: tuple[Any, str]) -> None:
    ax, _ = setup
    assert ax.get_all_providers() == ["AxEngineExecutionProvider", PROVIDER]
    assert PROVIDER in ax.get_available_providers()
    assert (ax.axclrt_provider_name, ax.axengine_provider_name) == (PROVIDER, "AxEngineExecutionProvider")
    params = list(inspect.signature(ax.InferenceSession.__init__).parameters)
    assert params[:5] == ["self", "path_or_bytes", "sess_options", "providers", "provider_options"]
    run = list(inspect.signature(ax.InferenceSession.run).parameters)
    assert run == ["self", "output_names", "input_feed", "run_options", "shape_group"]


def test_session_node_args_and_run(setup: tuple[Any, str]) -> None:
    ax, path = setup
    session = ax.InferenceSession(path, providers=[PROVIDER], provider_options=[{"device_id": 0}])
    assert session.get_providers() == PROVIDER  # a str, not a list
    inputs = session.get_inputs()
    mask = next(n for n in inputs if n.name == "mask")
    assert isinstance(mask.shape, list) and mask.dtype == np.dtype(ml_dtypes.bfloat16)
    assert next(n for n in inputs if n.name == "indices").dtype == np.dtype(np.uint32)
    outputs = session.run(None, feed(session), shape_group=0)
    assert [o.shape for o in outputs] == [tuple(n.shape) for n in session.get_outputs(0)]
    group1 = session.run(None, feed(session, 1), shape_group=1)
    assert [o.shape for o in group1] == [tuple(n.shape) for n in session.get_outputs(1)]


def test_run_error_types_in_order() -> None:
    card = SimCard()
    ax = make_axengine(card)
    session = ax.InferenceSession(card.register_model("sim://ax/l0", lambda: null_layer(G)), providers=PROVIDER)
    good = feed(session)
    partial = dict(good)
    partial.pop("mask")
    with pytest.raises(ValueError, match="missing from input feed"):
        session.run(None, partial)
    with pytest.raises(ValueError, match="not in model outputs name list"):
        session.run(["nope"], good)
    with pytest.raises(ValueError, match="out of range"):
        session.run(None, good, shape_group=9)
    with pytest.raises(IndexError):
        session.run(None, good, shape_group=3)  # == count: the real code's off-by-one
    with pytest.raises(ValueError, match="Invalid shape group"):
        session.run(["output"], good, shape_group=3)
    wrong = dict(good, mask=np.zeros(good["mask"].shape, np.float32))
    with pytest.raises(AssertionError, match="howerver"):  # no casting, and the real typo
        session.run(None, wrong)
    with pytest.raises(ValueError, match="is not in list"):  # HEAD: a subset of outputs is refused
        session.run(["output"], good)
    card.faults.fail_execute()
    with pytest.raises(RuntimeError, match="axclrtEngineExecute failed 0x-7fcff8f4"):
        session.run(None, good)


def test_output_order_follows_the_rank_logic() -> None:
    card = SimCard()
    ax = make_axengine(card)
    session = ax.InferenceSession(card.register_model("sim://ax/l0", lambda: null_layer(G)))
    names = [n.name for n in session.get_outputs()]
    by_model = session.run(None, feed(session))
    a, b, c = names
    permuted = session.run([c, a, b], feed(session))
    # pyaxengine's run() ranks outputs by output_names.index(): asking for [C, A, B] returns [B, C, A]
    assert [x.shape for x in permuted] == [by_model[1].shape, by_model[2].shape, by_model[0].shape]


def test_provider_selection_and_options() -> None:
    card = SimCard(device_ids=(0x81,))
    ax = make_axengine(card)
    path = card.register_model("sim://ax/l0", lambda: null_layer(G))
    with pytest.raises(ValueError, match="is not available"):
        ax.InferenceSession(path, providers="AxEngineExecutionProvider")
    with pytest.raises(ValueError, match="No available provider"):
        ax.InferenceSession(path, providers=("AXCLRTExecutionProvider",))
    with pytest.raises(KeyError):
        ax.InferenceSession(path, provider_options={"device_id": 0})  # a dict, not a list of dicts
    with pytest.raises(RuntimeError, match="out of range"):
        ax.InferenceSession(path, provider_options=[{"device_id": 1}])  # an index, not the bus id
    session = ax.InferenceSession(path, providers=[("AXCLRTExecutionProvider", {"device_id": 5})])
    assert session.get_providers() == PROVIDER  # the tuple's options are ignored
    with pytest.raises(ImportError, match="No providers found"):
        make_axengine(card, providers=[])


def test_unsupported_dtype_is_refused_at_construction() -> None:
    card = SimCard()
    ax = make_axengine(card)

    def fp16_layer() -> Any:
        desc = null_layer(G)
        from ax_llm_provider.runtime.simcard import TensorDesc

        first = desc.inputs[0]
        desc.inputs = (TensorDesc(first.name, codes.AXCL_DATA_TYPE_FP16, first.dims), *desc.inputs[1:])
        return desc

    with pytest.raises(ValueError, match="Unsupported data type '13'"):
        ax.InferenceSession(card.register_model("sim://ax/fp16", fp16_layer))


def test_each_run_copies_every_fed_input_and_every_output() -> None:
    card = SimCard()
    ax = make_axengine(card)
    session = ax.InferenceSession(card.register_model("sim://ax/l0", lambda: null_layer(G)))
    inputs = feed(session)
    before = dict(card.counters.bytes_by_kind)
    session.run(None, inputs)
    fed = sum(a.nbytes for a in inputs.values())
    assert card.counters.bytes_by_kind["H2D"] - before.get("H2D", 0) == fed
    assert card.counters.bytes_by_kind["D2H"] - before.get("D2H", 0) == sum(
        int(np.prod(n.shape)) * n.dtype.itemsize for n in session.get_outputs())


def test_atexit_teardown_unloads_and_finalizes() -> None:
    card = SimCard()
    ax = make_axengine(card)
    session = ax.InferenceSession(card.register_model("sim://ax/l0", lambda: null_layer(G)))
    assert card.models and card.memory.used
    ax._module.shutdown()
    assert not card.models and card.memory.used == 0 and not card.inited
    del session
