"""Pin pyaxcl's API surface as docs/sdk-notes.md records it: names, argument order, return tuples, constants, codes.

Every test runs on the simulated card, and on the real `axcl` module when a card is present (`-m npu`),
so the simulated card and the backends can only disagree with hardware on facts nobody here could know.
Engine getters on real hardware need a layer model: set AX_LLM_TEST_AXMODEL to a `*_together.axmodel`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from ax_llm_provider.runtime import axcl_codes as codes
from ax_llm_provider.runtime.simcard import Geometry, SimCard, null_layer

S = codes.signed

# pyAXCL 3.10.2 (axcl/axcl.py, axcl/rt/*.py): Python parameter names, in order.
DOCUMENTED_TOP = {"init": ["config"], "finalize": [], "set_log_level": ["level"]}
DOCUMENTED_RT = {
    "get_version": [], "get_soc_name": [], "set_device": ["device_id"], "reset_device": ["device_id"],
    "get_device": [], "get_device_count": [], "get_device_list": [], "synchronize_device": [],
    "get_device_properties": ["device_id"], "create_context": ["device_id"], "destroy_context": ["context"],
    "set_current_context": ["context"], "get_current_context": [], "get_default_context": ["device_id"],
    "create_stream": [], "destroy_stream": ["stream"], "destroy_stream_force": ["stream"],
    "synchronize_stream": ["stream"], "synchronize_stream_with_timeout": ["stream", "timeout"],
    "malloc": ["size", "policy"], "malloc_cached": ["size", "policy"], "free": ["dev_ptr"],
    "mem_flush": ["dev_ptr", "size"], "mem_invalidate": ["dev_ptr", "size"], "malloc_host": ["size"],
    "free_host": ["host_ptr"], "memset": ["dev_ptr", "value", "count"],
    "memcpy": ["dst_ptr", "src_ptr", "count", "kind"], "memcmp": ["dev_ptr1", "dev_ptr2", "count"],
    "engine_init": ["npu_kind"], "engine_get_vnpu_kind": [], "engine_finalize": [],
    "engine_load_from_file": ["model_path"], "engine_load_from_mem": ["model", "model_size"],
    "engine_unload": ["model_id"], "engine_get_model_compiler_version": ["model_id"],
    "engine_set_affinity": ["model_id", "mask"], "engine_get_affinity": ["model_id"],
    "engine_get_usage": ["model_path"], "engine_get_usage_from_mem": ["model", "model_size"],
    "engine_get_usage_from_mode_id": ["model_id"], "engine_get_model_type": ["model_path"],
    "engine_get_io_info": ["model_id"], "engine_destroy_io_info": ["io_info"],
    "engine_get_shape_groups_count": ["io_info"], "engine_get_num_inputs": ["io_info"],
    "engine_get_num_outputs": ["io_info"], "engine_get_input_size_by_index": ["io_info", "group", "index"],
    "engine_get_output_size_by_index": ["io_info", "group", "index"],
    "engine_get_input_name_by_index": ["io_info", "index"], "engine_get_output_name_by_index": ["io_info", "index"],
    "engine_get_input_index_by_name": ["io_info", "name"], "engine_get_output_index_by_name": ["io_info", "name"],
    "engine_get_input_dims": ["io_info", "group", "index"], "engine_get_output_dims": ["io_info", "group", "index"],
    "engine_get_input_data_type": ["io_info", "index"], "engine_get_output_data_type": ["io_info", "index"],
    "engine_create_io": ["io_info"], "engine_destroy_io": ["io"],
    "engine_set_input_buffer_by_index": ["io", "index", "data_buffer", "size"],
    "engine_set_output_buffer_by_index": ["io", "index", "data_buffer", "size"],
    "engine_get_input_buffer_by_index": ["io", "index"], "engine_get_output_buffer_by_index": ["io", "index"],
    "engine_create_context": ["model_id"], "engine_execute": ["model_id", "context_id", "group", "io"],
    "engine_execute_async": ["model_id", "context_id", "group", "io", "stream"],
}
GEOMETRY = Geometry(layers=1, hidden=8, kv_dim=4, vocab=16, capacity=6, chunk=4, prefill_histories=(0, 4))


def _real_axcl() -> Any:
    axcl = pytest.importorskip("axcl", reason="pyaxcl is not installed")
    if axcl.init(None) != 0:
        pytest.skip("axcl.init failed: no card")
    devices, ret = axcl.rt.get_device_list()
    if ret != 0 or not devices:
        axcl.finalize()
        pytest.skip("no AXCL device")
    return axcl


@pytest.fixture(params=["sim", pytest.param("real", marks=pytest.mark.npu)])
def axcl(request: pytest.FixtureRequest) -> Iterator[Any]:
    """An initialised module with a device set on this thread: the simulated card or the real pyaxcl."""
    module = SimCard() if request.param == "sim" else _real_axcl()
    if request.param == "sim":
        assert module.init(None) == 0
    devices, ret = module.rt.get_device_list()
    assert ret == 0 and devices
    assert module.rt.set_device(devices[0]) == 0
    yield module
    module.rt.engine_finalize()  # harmless when engine_init was not called
    module.rt.reset_device(devices[0])
    module.finalize()


@pytest.fixture
def layer_path(axcl: Any) -> str:
    if isinstance(axcl, SimCard):
        return axcl.register_model("sim://sig/l0.axmodel", lambda: null_layer(GEOMETRY))
    path = os.environ.get("AX_LLM_TEST_AXMODEL")
    if not path:
        pytest.skip("set AX_LLM_TEST_AXMODEL to a *_together.axmodel to check engine getters on the card")
    return path


def _params(fn: Any) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


def test_documented_functions_have_documented_parameters(axcl: Any) -> None:
    for name, params in DOCUMENTED_TOP.items():
        assert _params(getattr(axcl, name)) == params, name
    for name, params in DOCUMENTED_RT.items():
        assert _params(getattr(axcl.rt, name)) == params, name


def test_constants(axcl: Any) -> None:
    for where in (axcl, axcl.rt):
        assert (where.AXCL_MEMCPY_HOST_TO_HOST, where.AXCL_MEMCPY_HOST_TO_DEVICE, where.AXCL_MEMCPY_DEVICE_TO_HOST,
                where.AXCL_MEMCPY_DEVICE_TO_DEVICE, where.AXCL_MEMCPY_HOST_PHY_TO_DEVICE,
                where.AXCL_MEMCPY_DEVICE_TO_HOST_PHY) == (0, 1, 2, 3, 4, 5)
        assert (where.AXCL_MEM_MALLOC_HUGE_FIRST, where.AXCL_MEM_MALLOC_HUGE_ONLY,
                where.AXCL_MEM_MALLOC_NORMAL_ONLY) == (0, 1, 2)
    types = axcl.rt.axcl_rt_engine_type
    assert (types.AXCL_DATA_TYPE_UINT32, types.AXCL_DATA_TYPE_FP16, types.AXCL_DATA_TYPE_BF16,
            types.AXCL_DATA_TYPE_FP32) == (8, 13, 14, 15)
    assert (axcl.rt.AXCL_VNPU_DISABLE, axcl.rt.AXCL_VNPU_LITTLE_BIG) == (0, 3)
    assert axcl.AXCL_SUCC == 0


def test_device_and_memory_conventions(axcl: Any) -> None:
    rt = axcl.rt
    version = rt.get_version()
    assert len(version) == 4 and version[-1] == 0
    props, ret = rt.get_device_properties(rt.get_device()[0])  # pyAXCL 3.10 (it dropped the utilization call)
    assert ret == 0 and props["free_cmm_size"] <= props["total_cmm_size"] and len(props["sw_version"]) == 64
    ptr, ret = rt.malloc(256, axcl.AXCL_MEM_MALLOC_NORMAL_ONLY)
    assert ret == 0 and isinstance(ptr, int) and ptr
    host, ret = rt.malloc_host(64)
    assert ret == 0 and isinstance(host, int)
    src = np.arange(64, dtype=np.uint8)
    assert rt.memcpy(ptr + 100, src.ctypes.data, 64, axcl.AXCL_MEMCPY_HOST_TO_DEVICE) == 0  # interior pointer
    assert rt.memcpy(ptr, ptr + 100, 64, axcl.AXCL_MEMCPY_DEVICE_TO_DEVICE) == 0
    back = np.zeros(64, dtype=np.uint8)
    assert rt.memcpy(back.ctypes.data, ptr, 64, axcl.AXCL_MEMCPY_DEVICE_TO_HOST) == 0
    assert back.tolist() == src.tolist()
    assert rt.memcmp(ptr, ptr + 100, 64) == 0
    assert rt.memset(ptr, 7, 8) == 0
    assert rt.memcmp(ptr, ptr + 100, 64) != 0
    # guards return pyaxcl's own -1 without calling C
    assert rt.memcpy(0, src.ctypes.data, 1, axcl.AXCL_MEMCPY_HOST_TO_DEVICE) == -1
    assert rt.memcpy(ptr, None, 1, axcl.AXCL_MEMCPY_HOST_TO_DEVICE) == -1
    assert rt.free(0) == -1 and rt.memset(None, 0, 1) == -1
    # free wants the exact base: an interior pointer is not device memory
    assert rt.free(ptr + 1) == S(codes.ERR_MEMORY_NOT_DEVICE_MEMORY)
    assert rt.free(ptr) == 0
    assert rt.free(ptr) == S(codes.ERR_MEMORY_NOT_DEVICE_MEMORY)  # double free
    assert rt.free_host(host) == 0


def test_engine_io_conventions(axcl: Any, layer_path: str) -> None:
    rt = axcl.rt
    rt.engine_init(axcl.rt.AXCL_VNPU_DISABLE)
    assert rt.engine_load_from_file("") == (0, -1)
    model_id, ret = rt.engine_load_from_file(layer_path)
    assert ret == 0 and isinstance(model_id, int) and model_id
    context_id, ret = rt.engine_create_context(model_id)
    assert ret == 0 and context_id
    info, ret = rt.engine_get_io_info(model_id)
    assert ret == 0 and info
    groups, ret = rt.engine_get_shape_groups_count(info)
    assert ret == 0 and groups >= 1
    n_in = rt.engine_get_num_inputs(info)
    assert isinstance(n_in, int) and n_in >= 5 and rt.engine_get_num_inputs(0) == 0
    names = [rt.engine_get_input_name_by_index(info, i) for i in range(n_in)]
    assert {"input", "indices", "mask", "K_cache", "V_cache"} <= set(names)
    assert rt.engine_get_input_name_by_index(info, n_in) is None
    assert rt.engine_get_input_index_by_name(info, "mask") == names.index("mask")
    assert rt.engine_get_input_index_by_name(info, "no_such_tensor") == S(codes.ERR_ENGINE_ILLEGAL_PARAM)
    assert rt.engine_get_input_index_by_name(info, "") == -1
    dims, ret = rt.engine_get_input_dims(info, 0, names.index("K_cache"))
    assert ret == 0 and isinstance(dims, list) and len(dims) == 3
    assert rt.engine_get_input_dims(info, groups, 0) == ([], S(codes.ERR_ENGINE_INVALID_INDEX))
    assert rt.engine_get_input_size_by_index(info, 0, names.index("indices")) == 4
    assert rt.engine_get_input_size_by_index(info, 0, n_in) == codes.SIZE_INVALID_INDEX
    assert rt.engine_get_input_data_type(info, names.index("indices")) == (8, 0)
    assert rt.engine_get_input_data_type(info, names.index("mask")) == (14, 0)
    assert rt.engine_get_input_data_type(info, n_in)[1] == S(codes.ERR_ENGINE_ILLEGAL_PARAM)
    io, ret = rt.engine_create_io(info)
    assert ret == 0 and io and rt.engine_create_io(0) == (None, -1)
    assert rt.engine_get_input_buffer_by_index(io, 0) == (None, 0, 0)
    assert rt.engine_set_input_buffer_by_index(0, 0, 1, 1) == -1
    assert rt.engine_set_input_buffer_by_index(io, 0, None, 8) == S(codes.ERR_ENGINE_NULL_POINTER)
    buf, _ = rt.malloc(64, axcl.AXCL_MEM_MALLOC_NORMAL_ONLY)
    assert rt.engine_set_input_buffer_by_index(io, 0, buf, 0) == S(codes.ERR_ENGINE_ILLEGAL_PARAM)
    assert rt.engine_set_input_buffer_by_index(io, n_in, buf, 8) == S(codes.ERR_ENGINE_ILLEGAL_PARAM)
    assert rt.engine_set_input_buffer_by_index(io, 0, buf + 8, 8) == 0  # offsets accepted by the setter
    assert rt.engine_get_input_buffer_by_index(io, 0) == (buf + 8, 8, 0)
    assert rt.engine_execute(model_id, context_id, 0, 0) == -1
    assert rt.engine_execute(0, context_id, 0, io) == S(codes.ERR_ENGINE_ILLEGAL_PARAM)
    assert rt.engine_execute(model_id, 0, 0, io) == S(codes.ERR_ENGINE_ILLEGAL_PARAM)
    assert rt.engine_destroy_io(io) == 0 and rt.engine_destroy_io(0) == -1
    assert rt.free(buf) == 0
    assert rt.engine_unload(model_id) == 0


def test_runtime_codes_are_negative_int32() -> None:
    assert S(0x8030010B) == -2144337653
    assert codes.unsigned(-2144337653) == 0x8030010B
    assert codes.code_name(S(0x8030070C)) == "AXCL_ERR_ENGINE_EXECUTE_FAIL"
    assert codes.code_name(S(0x80300581)) == "AXCL_ERR_MEMORY_NOT_DEVICE_MEMORY"
    assert codes.code_name(S(0x80300186)) == "AXCL_ERR_DEVICE_PORT_ALLOCATE"
    assert codes.code_name(-1) == "PYAXCL_WRAPPER_GUARD"
    assert codes.SIZE_INVALID_INDEX == 18446744071565215617
