"""The simulated card itself: memory, per-thread contexts, models, timing, counters and fault injection."""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import numpy as np
import pytest

from ax_llm_provider.runtime import axcl_codes as codes
from ax_llm_provider.runtime.axcl_props import AxclrtDeviceProperties, get_device_properties, reboot_device
from ax_llm_provider.runtime.errors import DeviceOfflineError
from ax_llm_provider.runtime.simcard import (
    DEVICE_BASE,
    PRESETS,
    Geometry,
    SimCard,
    get_preset,
    null_layer,
    null_post,
)

S = codes.signed
G = Geometry(layers=2, hidden=8, kv_dim=4, vocab=16, capacity=6, chunk=4, prefill_histories=(0, 4),
             layer_cmm_bytes=1000, post_cmm_bytes=2000)


def ready(card: SimCard | None = None) -> SimCard:
    card = card or SimCard()
    assert card.init(None) == 0
    assert card.rt.set_device(card.rt.get_device_list()[0][0]) == 0
    assert card.rt.engine_init(0) == 0
    return card


def bound_layer(card: SimCard, group: int = 0) -> tuple[int, int, int, dict[str, int]]:
    """Load a null layer, bind every tensor of `group` to its own buffer; (model, ctx, io, buffers)."""
    rt = card.rt
    path = card.register_model("sim://t/l0", lambda: null_layer(G))
    model, _ = rt.engine_load_from_file(path)
    ctx, _ = rt.engine_create_context(model)
    info, _ = rt.engine_get_io_info(model)
    io, _ = rt.engine_create_io(info)
    buffers = {}
    for side in ("input", "output"):
        for i in range(getattr(rt, f"engine_get_num_{side}s")(info)):
            size = getattr(rt, f"engine_get_{side}_size_by_index")(info, group, i)
            ptr, _ = rt.malloc(size, 0)
            getattr(rt, f"engine_set_{side}_buffer_by_index")(io, i, ptr, size)
            buffers[getattr(rt, f"engine_get_{side}_name_by_index")(info, i)] = ptr
    return model, ctx, io, buffers


def test_calls_before_init_or_without_context_fail() -> None:
    card = SimCard()
    assert card.rt.get_device_list() == ([], S(codes.ERR_DEVICE_NOT_ACTIVE))
    card.init(None)
    assert card.rt.malloc(8, 0) == (None, S(codes.ERR_DEVICE_NO_ACTIVE_DEVICE))
    assert card.rt.set_device(0) == S(codes.ERR_DEVICE_INVALID_ID)  # ids are bus numbers, not indices
    assert card.rt.set_device(1) == 0
    assert card.rt.malloc(8, 0)[1] == 0


def test_contexts_are_per_thread() -> None:
    card = ready()
    ctx, ret = card.rt.get_current_context()
    assert ret == 0 and ctx
    seen: dict[str, Any] = {}

    def worker() -> None:
        seen["before"] = card.rt.malloc(8, 0)[1]
        seen["bind"] = card.rt.set_current_context(ctx)
        seen["after"] = card.rt.malloc(8, 0)[1]

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == {"before": S(codes.ERR_DEVICE_NO_ACTIVE_DEVICE), "bind": 0, "after": 0}
    assert card.rt.set_current_context(0) == -1


def test_device_pointers_and_bounds() -> None:
    card = ready()
    ptr, _ = card.rt.malloc(16, 0)
    assert ptr >= DEVICE_BASE
    host = np.zeros(32, np.uint8)
    # past the end of the allocation: refused instead of corrupting a neighbour
    assert card.rt.memcpy(ptr + 8, host.ctypes.data, 16, 1) == S(codes.ERR_MEMORY_EXECUTE_FAIL)
    # a host pointer where a device pointer is due (kind mismatch)
    assert card.rt.memcpy(host.ctypes.data, host.ctypes.data, 4, 1) == S(codes.ERR_MEMORY_EXECUTE_FAIL)
    assert card.rt.memcpy(host.ctypes.data, host.ctypes.data + 8, 4, 0) == 0  # H2H needs no device
    assert card.rt.mem_flush(ptr + 4, 4) == S(codes.ERR_MEMORY_NOT_DEVICE_MEMORY)
    assert card.rt.mem_flush(ptr, 4) == 0


def test_counters_and_timing_model() -> None:
    card = ready(SimCard("qwen3-0.6b-w8a16"))
    t = card.timing
    ptr, _ = card.rt.malloc(4096, 0)
    host_alloc, _ = card.rt.malloc_host(4096)
    plain = np.zeros(4096, np.uint8)
    before = card.clock.device_ms
    card.rt.memcpy(ptr, host_alloc, 4096, 1)
    card.rt.memcpy(plain.ctypes.data, ptr, 1000, 2)
    card.rt.memcpy(ptr + 1000, ptr, 1000, 3)
    c = card.counters
    assert (c.bytes_by_kind["H2D"], c.bytes_by_kind["D2H"], c.bytes_by_kind["D2D"]) == (4096, 1000, 1000)
    assert c.bus_bytes == 5096 and c.calls["memcpy"] == 3
    # malloc_host is plain malloc: no discount against a numpy buffer
    expected = t.transfer_ms(4096, True) + t.transfer_ms(1000, False) + t.d2d_ms(1000)
    assert card.clock.device_ms - before == pytest.approx(expected)
    assert t.transfer_ms(4096, True) == t.transfer_ms(4096, False)
    model, ctx, io, _ = bound_layer(card)
    before = card.clock.device_ms
    assert card.rt.engine_execute(model, ctx, 0, io) == 0
    assert card.clock.device_ms - before == pytest.approx(t.decode_layer_ms)
    assert c.executes == 1 and card.clock.slept_ms == 0.0


def test_round_trip_per_bus_call_but_not_for_host_only_setters() -> None:
    card = ready()
    model, ctx, io, buf = bound_layer(card)
    rpc = card.timing.rpc_ms
    before = card.clock.device_ms
    assert card.rt.engine_set_output_buffer_by_index(io, 0, buf["output"], 16) == 0  # host-side setter
    assert card.clock.device_ms == before
    card.rt.engine_get_io_info(model)  # a request to the card
    assert card.clock.device_ms == pytest.approx(before + rpc)
    assert card.clock.by_kind["rpc"] > 0


def test_legacy_timing_model_is_selectable() -> None:
    legacy = SimCard(timing_model="legacy").timing
    strict = SimCard().timing
    assert legacy.transfer_ms(64, True) + legacy.unpinned_extra_ms == pytest.approx(strict.transfer_ms(64, True))
    assert legacy.rpc_ms == 0 and strict.rpc_ms > 0
    with pytest.raises(ValueError, match="unknown timing model"):
        SimCard(timing_model="kind")


def test_presets_are_labelled() -> None:
    assert set(PRESETS) == {"qwen3-0.6b-w8a16", "qwen2.5-0.5b-w4a16", "qwen2.5-1.5b-w4a16"}
    for preset in PRESETS.values():
        assert "ESTIMATE" in preset.source
    q = get_preset("qwen3-0.6b-w8a16")
    assert (q.geometry.layers, q.geometry.capacity, q.timing.decode_layer_ms, q.timing.post_ms) == (28, 2559, 1.51, 7.9)
    with pytest.raises(ValueError, match="unknown simulated-card preset"):
        get_preset("nope")


def test_null_models_report_vendor_shapes() -> None:
    layer = null_layer(G)
    dims = {t.name: t.dims for t in (*layer.inputs, *layer.outputs)}
    assert dims["K_cache"] == ((1, 6, 4), (1, 1, 8), (1, 4, 4))  # no-history placeholder: [1, 1, hidden]
    assert dims["mask"] == ((1, 1, 7), (1, 4, 4), (1, 4, 8))
    assert dims["indices"] == ((1, 1), (1, 4), (1, 4))
    assert {t.name: t.dtype for t in layer.inputs}["indices"] == codes.AXCL_DATA_TYPE_UINT32
    assert null_post(G).outputs[0].dims == ((1, 1, 16),)


def test_execute_is_deterministic_and_validates_bindings() -> None:
    card = ready()
    model, ctx, io, buf = bound_layer(card)
    out = np.zeros(16, np.uint8)

    def output() -> list[int]:
        card.rt.memcpy(out.ctypes.data, buf["output"], 16, 2)
        return out.tolist()

    assert card.rt.engine_execute(model, ctx, 0, io) == 0
    first = output()
    assert card.rt.engine_execute(model, ctx, 0, io) == 0
    assert output() == first and any(first)
    assert card.rt.engine_execute(model, ctx, 5, io) == S(codes.ERR_ENGINE_ILLEGAL_PARAM)
    other, _ = card.rt.engine_create_context(model)
    assert card.rt.engine_execute(model + 999, other, 0, io) == S(codes.ERR_ENGINE_ILLEGAL_PARAM)
    # group 1 needs a 4-row input: the decode-sized binding is too small
    assert card.rt.engine_execute(model, ctx, 1, io) == S(codes.ERR_ENGINE_ILLEGAL_PARAM)
    card.rt.free(buf["mask"])
    assert card.rt.engine_execute(model, ctx, 0, io) == S(codes.ERR_ENGINE_EXECUTE_FAIL)


def test_by_name_buffer_functions_keep_the_published_bug() -> None:
    card = ready()
    model, _, io, buf = bound_layer(card)
    ptr, _ = card.rt.malloc(4096, 0)
    assert card.rt.engine_set_input_buffer_by_name(io, "mask", ptr, 8) == 0
    assert card.rt.engine_get_input_buffer_by_index(io, 0) == (ptr, 8, 0)  # hit the first tensor


def test_repeated_engine_init_succeeds_and_its_failure_can_be_injected() -> None:
    card = ready()
    assert card.rt.engine_init(0) == 0  # vendor code calls it once per session, dozens of times per process
    assert card.rt.engine_get_vnpu_kind() == (0, 0)
    card.faults.fail_engine_init()
    assert card.rt.engine_init(0) == S(codes.ERR_ENGINE_EXECUTE_FAIL)


def test_injected_execute_and_load_faults() -> None:
    card = ready()
    model, ctx, io, _ = bound_layer(card)
    card.faults.fail_execute(after=1, times=2)
    results = [card.rt.engine_execute(model, ctx, 0, io) for _ in range(4)]
    assert results == [0, S(codes.ERR_ENGINE_EXECUTE_FAIL), S(codes.ERR_ENGINE_EXECUTE_FAIL), 0]
    card.faults.fail_load(code=codes.ERR_ENGINE_UNEXPECT_RESPONSE)
    assert card.rt.engine_load_from_file("sim://t/l0") == (0, S(codes.ERR_ENGINE_UNEXPECT_RESPONSE))
    assert card.rt.engine_load_from_file("sim://t/l0")[1] == 0
    assert card.rt.engine_load_from_file("/no/such/file.axmodel") == (0, S(codes.ERR_ENGINE_ILLEGAL_PARAM))


def test_cmm_exhaustion() -> None:
    card = ready()
    card.faults.limit_cmm(card.cmm_used() + 1500)
    assert card.rt.malloc(2000, 0) == (None, S(codes.AX_ERR_CMM_NOMEM))  # the card's own code, passed through
    card.register_model("sim://t/post", lambda: null_post(G))
    assert card.rt.engine_load_from_file("sim://t/post") == (0, S(codes.ERR_ENGINE_EXECUTE_FAIL))
    assert card.sys.mem_query_status() == ({}, S(codes.AX_ERR_CMM_NOTREADY))  # AXCL_SYS_Init first
    assert card.sys.init() == 0
    status, ret = card.sys.mem_query_status()
    assert ret == 0 and status["remain_size"] <= 2 and set(status) == {
        "total_size", "remain_size", "block_cnt", "partition"}


def test_offline_then_reboot() -> None:
    card = ready()
    ptr, _ = card.rt.malloc(8, 0)
    card.faults.go_offline()
    assert card.rt.malloc(8, 0) == (None, S(codes.ERR_DEVICE_NO_CONNECT))
    assert card.rt.free(ptr) == S(codes.ERR_DEVICE_NO_CONNECT)
    assert card.rt.engine_get_num_inputs(1) == 0  # bare-value getters return their default
    assert card.rt.malloc_host(8)[1] == 0  # host memory does not need the card
    with pytest.raises(DeviceOfflineError, match="0x80300181"):
        get_device_properties(card.lib_rt, 1)
    reboot_device(card.lib_rt, 1)
    assert card.memory.used == 0 and card.rt.malloc(8, 0)[1] == S(codes.ERR_DEVICE_NO_ACTIVE_DEVICE)
    assert card.rt.set_device(1) == 0 and card.rt.malloc(8, 0)[1] == 0


def test_hang_blocks_until_released() -> None:
    card = ready()
    model, ctx, io, _ = bound_layer(card)
    hang = card.faults.hang_execute(timeout_s=10)
    result: list[int] = []
    card_ctx = card.rt.get_current_context()[0]
    t = threading.Thread(target=lambda: (card.rt.set_current_context(card_ctx),
                                         result.append(card.rt.engine_execute(model, ctx, 0, io))))
    t.start()
    assert hang.entered.wait(5)
    assert t.is_alive() and not result
    card.faults.release_hang()
    t.join(5)
    assert result == [S(codes.ERR_ENGINE_EXECUTE_FAIL)]  # no declared timeout code: the watchdog names hangs
    assert card.rt.engine_execute(model, ctx, 0, io) == 0  # fires once


def test_hang_times_out() -> None:
    card = ready()
    model, ctx, io, _ = bound_layer(card)
    card.faults.hang_execute(timeout_s=0.05)
    assert card.rt.engine_execute(model, ctx, 0, io) == S(codes.ERR_ENGINE_EXECUTE_FAIL)


def test_device_properties_through_ctypes_struct() -> None:
    assert ctypes.sizeof(AxclrtDeviceProperties) == 240
    assert AxclrtDeviceProperties.temperature.offset == 84 and AxclrtDeviceProperties.npuLoading.offset == 108
    card = ready()
    card.faults.temperature_ramp(start_c=50, per_execute_c=1.0, max_c=60)
    props = get_device_properties(card.lib_rt, 1)
    assert props.temperature_c == 50 and props.pci_bus_id == 1
    assert props.total_cmm_kb == 7040 * 1024 and props.free_cmm_kb <= props.total_cmm_kb
    card.counters.executes = 100
    assert get_device_properties(card.lib_rt, 1).temperature_c == 60
    assert card.lib_rt.axclrtGetDeviceProperties(1, None) == S(codes.ERR_DEVICE_NULL_POINTER)
    assert not hasattr(card.lib_rt, "axclrtRegisterDeviceStatusCallback")  # absent from V3.10.2


def test_shuffled_io_order_keeps_names() -> None:
    card = ready(SimCard(shuffle_io_seed=1))
    model, _ = card.rt.engine_load_from_file(card.register_model("sim://t/l0", lambda: null_layer(G)))
    info, _ = card.rt.engine_get_io_info(model)
    names = [card.rt.engine_get_input_name_by_index(info, i) for i in range(5)]
    assert sorted(names) == sorted(["input", "indices", "mask", "K_cache", "V_cache"])
    assert names != ["input", "indices", "mask", "K_cache", "V_cache"]


def test_wrong_arity_raises_like_python() -> None:
    card = ready()
    with pytest.raises(TypeError):
        card.rt.memcpy(1, 2, 3)


def test_sleep_mode_spends_the_simulated_time() -> None:
    from ax_llm_provider.runtime.simcard import TimingModel

    card = ready(SimCard(timing=TimingModel(decode_layer_ms=5.0, prefill_layer_ms=5.0, post_ms=5.0), sleep=True))
    model, ctx, io, _ = bound_layer(card)
    assert card.rt.engine_execute(model, ctx, 0, io) == 0
    assert card.clock.device_ms >= 5.0 and card.clock.slept_ms >= 4.5
