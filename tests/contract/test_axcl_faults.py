"""Device faults surface from the axcl backend as typed errors, leave nothing behind, and allow recovery."""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ax_llm_provider.runtime import axcl_codes as codes
from ax_llm_provider.runtime.axcl_backend import AxclDecoderStack
from ax_llm_provider.runtime.errors import (
    DeviceError,
    DeviceMemoryError,
    DeviceOfflineError,
    DeviceTimeoutError,
)
from ax_llm_provider.runtime.simcard import Geometry, SimCard

G = Geometry(layers=4, hidden=64, kv_dim=32, vocab=300, capacity=80, chunk=16, prefill_histories=(0, 16, 32),
             layer_cmm_bytes=1 << 20, post_cmm_bytes=4 << 20)
EMBED = np.full(G.hidden, 0.01, np.float32)


BIG_KV = Geometry(layers=4, hidden=64, kv_dim=256, vocab=300, capacity=4000, chunk=16, prefill_histories=(0, 16),
                  layer_cmm_bytes=1 << 20, post_cmm_bytes=4 << 20)  # 8 MB of models, 16 MB of KV


def open_null(card: SimCard, geometry: Geometry = G, **kwargs: object) -> AxclDecoderStack:
    layers, post = card.add_null_stack(geometry)
    return AxclDecoderStack(layers, post, card, **kwargs)  # type: ignore[arg-type]


def assert_released(card: SimCard) -> None:
    assert not card.models and not card.ios and card.memory.used == 0 and not card.inited


def test_execute_error_is_typed_and_the_next_step_works() -> None:
    card = SimCard()
    with open_null(card) as stack:
        stack.decode(EMBED, 0)
        card.faults.fail_execute(code=codes.ERR_ENGINE_EXECUTE_FAIL)
        with pytest.raises(DeviceError, match="engine_execute failed with 0x8030070C") as info:
            stack.decode(EMBED, 1)
        assert type(info.value) is DeviceError and info.value.code == codes.signed(0x8030070C)
        assert "layer 0, shape group 0" in str(info.value)
        stack.decode(EMBED, 1)  # retry succeeds


def test_offline_card_raises_offline_and_close_still_completes() -> None:
    card = SimCard()
    stack = open_null(card)
    card.faults.go_offline()
    with pytest.raises(DeviceOfflineError, match="not reachable"):
        stack.decode(EMBED, 0)
    stack.close()  # logs warnings, never raises
    card.faults.come_online()
    stack.close()


def test_reopen_after_reboot() -> None:
    card = SimCard()
    stack = open_null(card)
    card.faults.go_offline()
    with pytest.raises(DeviceOfflineError):
        stack.prefill(np.zeros((3, G.hidden), np.float32), 0)
    stack.close()
    card.lib_rt.axclrtRebootDevice(1)  # the recovery ladder's firmware reboot
    with open_null(card) as again:
        assert np.isfinite(again.decode(EMBED, 0)).all()


def test_hang_ends_in_the_declared_execute_failure() -> None:
    # no header declares a timeout code: a hang comes back as a plain execute failure, and naming it a
    # timeout is the engine watchdog's job (tests/unit/test_recovery.py)
    card = SimCard()
    with open_null(card) as stack:
        card.faults.hang_execute(after=2, timeout_s=0.05)
        with pytest.raises(DeviceError, match="0x8030070C") as info:
            stack.decode(EMBED, 0)
        assert not isinstance(info.value, DeviceTimeoutError)


def test_hang_can_be_released_from_another_thread() -> None:
    card = SimCard()
    with open_null(card) as stack:
        hang = card.faults.hang_execute(timeout_s=10)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                stack.decode(EMBED, 0)
            except DeviceError as exc:
                errors.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        assert hang.entered.wait(5)
        card.faults.release_hang()
        worker.join(5)
        assert len(errors) == 1 and type(errors[0]) is DeviceError


def test_cmm_precheck_refuses_the_load_before_touching_the_card() -> None:
    card = SimCard(cmm_total_bytes=20 << 20)
    with pytest.raises(DeviceMemoryError, match="model files need 8 MB plus a 13 MB floor, 20 MB of CMM remain"):
        open_null(card, BIG_KV, cmm_floor_mb=13)
    assert_released(card)
    with pytest.raises(DeviceMemoryError, match="KV cache and IO buffers need 16 MB"):
        open_null(card, BIG_KV, cmm_floor_mb=0)  # the models fit, the buffers do not
    assert_released(card)


def test_cmm_guard_initialises_the_sys_api_first() -> None:
    card = SimCard(cmm_total_bytes=20 << 20)
    with pytest.raises(DeviceMemoryError, match="CMM budget check"):  # the old guard skipped silently here
        open_null(card, BIG_KV, cmm_floor_mb=13)
    assert card.counters.calls["sys.init"] == 1 and card.counters.calls["sys.mem_query_status"] >= 1


def test_cmm_guard_falls_back_to_device_properties() -> None:
    card = SimCard(cmm_total_bytes=20 << 20)
    card.sys.mem_query_status = lambda: ({}, -1)  # type: ignore[method-assign]
    with pytest.raises(DeviceMemoryError, match="CMM budget check"):
        open_null(card, BIG_KV, cmm_floor_mb=13)
    assert card.counters.calls["get_device_properties"] >= 1


def test_malloc_failure_without_precheck_is_a_memory_error(caplog: pytest.LogCaptureFixture) -> None:
    card = SimCard()
    card.sys.mem_query_status = lambda: ({}, -1)  # type: ignore[method-assign]  # no CMM reading at all
    card.rt.get_device_properties = lambda device_id: ({}, -1)  # type: ignore[method-assign]
    card.faults.limit_cmm(20 << 20)
    with pytest.raises(DeviceMemoryError, match="axcl.rt.malloc failed with 0x800B0018 AX_ERR_CMM_NOMEM"):
        open_null(card, BIG_KV)
    assert "loading without the budget check" in caplog.text  # never silently
    assert_released(card)


def test_load_failing_with_cmm_short_is_a_memory_error() -> None:
    card = SimCard()
    layers, post = card.add_null_stack(G)
    original = card.rt.engine_load_from_file
    loads = []

    def load(path: str) -> tuple[int, int]:
        loads.append(path)
        if len(loads) == 3:
            card.faults.limit_cmm(card.cmm_used() + 1024)  # CMM fills up behind our back
        return original(path)

    card.rt.engine_load_from_file = load  # type: ignore[method-assign]
    with pytest.raises(DeviceMemoryError, match="needs 1 MB of CMM") as info:
        AxclDecoderStack(layers, post, card, cmm_floor_mb=0)
    assert codes.unsigned(info.value.code) == codes.ERR_ENGINE_EXECUTE_FAIL  # the declared code, reclassified
    assert_released(card)


def test_load_failure_midway_unloads_what_was_loaded() -> None:
    card = SimCard()
    card.faults.fail_load(code=codes.ERR_ENGINE_EXECUTE_FAIL, after=2)
    with pytest.raises(DeviceError, match="engine_load_from_file"):
        open_null(card)
    assert_released(card)


def test_abandoned_stack_is_finalised() -> None:
    card = SimCard()
    stack = open_null(card)
    assert stack._finalizer.atexit  # also runs at interpreter exit
    del stack
    gc.collect()
    assert_released(card)


def test_progress_is_reported_per_file() -> None:
    seen: list[tuple[int, int]] = []
    with open_null(SimCard(), progress=lambda done, total: seen.append((done, total))):
        pass
    assert seen == [(i, G.layers + 1) for i in range(1, G.layers + 2)]


def test_two_stacks_share_one_device_session() -> None:
    card = SimCard()
    a, b = open_null(card), open_null(card)
    assert card.counters.calls["init"] == 1 and card.counters.calls["engine_init"] == 1
    a.close()
    assert card.inited and np.isfinite(b.decode(EMBED, 0)).all()
    b.close()
    assert_released(card)


def test_recovery_after_a_failed_step_matches_the_reference(tiny_twin: Callable[..., Path]) -> None:
    pytest.importorskip("onnxruntime")
    from ax_llm_provider.model.layout import scan_model_dir
    from ax_llm_provider.runtime.bf16 import bf16_to_float32
    from ax_llm_provider.runtime.simcard.reference import CardReference

    files = scan_model_dir(tiny_twin("qwen2", 0, decode_capacity=63, prefill_chunk=8, prefill_histories=(0, 8, 16)))
    ref = CardReference(files.layers, files.post)
    table = bf16_to_float32(np.fromfile(files.embedding, dtype="<u2")).reshape(-1, ref.spec.hidden)
    card = SimCard(dirty_memory=True)
    with AxclDecoderStack(files.layers, files.post, card) as stack:
        for s in (stack, ref):
            s.prefill(table[:12], 0)
            s.decode(table[5], 12)
        card.faults.fail_execute(after=1)  # fails in the middle of the layer loop
        with pytest.raises(DeviceError):
            stack.decode(table[6], 13)
        for pos, token in ((13, 6), (14, 7), (15, 8)):
            assert np.array_equal(stack.decode(table[token], pos), ref.decode(table[token], pos))


def test_an_execute_that_fails_after_blocking_is_a_timeout() -> None:
    card = SimCard()
    with open_null(card) as stack:
        card.faults.hang_execute(after=1, timeout_s=0.6)  # the runtime gives up after 0.6 s
        with pytest.raises(DeviceTimeoutError, match="failed after blocking 0.6 s") as info:
            stack.decode(EMBED, 0)
        assert codes.unsigned(info.value.code) == codes.ERR_ENGINE_EXECUTE_FAIL  # the code itself says nothing
