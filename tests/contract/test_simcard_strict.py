"""The simulated card is no kinder than the card: each test here fails on the earlier, kinder simulator.

One process per card (with the real error), a bound context on every thread, dirty fresh memory, pyaxcl's
bare `except:` swallowing a Ctrl+C, the aliasing hazard of the bind path on request, and only codes the
V3.10.2 headers declare (or native codes passed through).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ax_llm_provider.runtime import axcl_codes as codes
from ax_llm_provider.runtime.axcl_backend import AxclDecoderStack
from ax_llm_provider.runtime.errors import DeviceError, DeviceOfflineError
from ax_llm_provider.runtime.simcard import Geometry, SimCard, null_layer
from ax_llm_provider.runtime.simcard.ownership import owner_pid

S = codes.signed
G = Geometry(layers=2, hidden=64, kv_dim=32, vocab=50, capacity=40, chunk=8, prefill_histories=(0, 8),
             layer_cmm_bytes=1 << 20, post_cmm_bytes=2 << 20)
SRC = Path(__file__).resolve().parents[2] / "src"

SECOND_PROCESS = """
import sys
from ax_llm_provider.runtime.axcl_backend import AxclDecoderStack
from ax_llm_provider.runtime.errors import DeviceOfflineError
from ax_llm_provider.runtime.simcard import SimCard
card = SimCard()
print(card.init(None), card.rt.set_device(1))
layers, post = card.add_null_stack()
try:
    AxclDecoderStack(layers, post, card)
except DeviceOfflineError as exc:
    print("refused:", exc)
"""


def second_process() -> list[str]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-c", SECOND_PROCESS], capture_output=True, text=True, env=env,
                          timeout=120, check=True)
    return done.stdout.strip().splitlines()


def ready() -> SimCard:
    card = SimCard()
    assert card.init(None) == 0 and card.rt.set_device(1) == 0 and card.rt.engine_init(0) == 0
    return card


@pytest.mark.spawns
def test_a_second_process_is_refused_with_the_real_error() -> None:
    card = ready()
    assert owner_pid(card.namespace, 1) == os.getpid()
    lines = second_process()
    assert lines[0] == f"0 {S(codes.ERR_DEVICE_PORT_ALLOCATE)}"  # init works, set_device does not
    assert lines[1].startswith("refused:") and "0x80300186" in lines[1] and "another process" in lines[1]
    assert card.lib_rt.axclrtGetDeviceProperties(1, None) == S(codes.ERR_DEVICE_NULL_POINTER)
    card.finalize()
    assert owner_pid(card.namespace, 1) is None
    assert second_process()[0] == "0 0"  # free again once the owner finalised


def test_a_second_card_object_in_the_same_process_shares_the_device() -> None:
    first, second = ready(), ready()
    assert first.rt.malloc(8, 0)[1] == 0 and second.rt.malloc(8, 0)[1] == 0


def test_every_device_call_needs_a_bound_context_on_its_thread() -> None:
    card = ready()
    model, _ = card.rt.engine_load_from_file(card.register_model("sim://s/l0", lambda: null_layer(G)))
    info, _ = card.rt.engine_get_io_info(model)
    io, _ = card.rt.engine_create_io(info)
    ptr, _ = card.rt.malloc(64, 0)
    seen: dict[str, object] = {}

    def worker() -> None:  # the old card answered all of these from a thread without a context
        seen["io_info"] = card.rt.engine_get_io_info(model)[1]
        seen["create_io"] = card.rt.engine_create_io(info)[1]
        seen["setter"] = card.rt.engine_set_input_buffer_by_index(io, 0, ptr, 64)
        seen["context"] = card.rt.engine_create_context(model)[1]
        seen["num_inputs"] = card.rt.engine_get_num_inputs(info)
        seen["host"] = card.rt.malloc_host(8)[1]  # host memory needs no device

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    no_device = S(codes.ERR_DEVICE_NO_ACTIVE_DEVICE)
    assert seen == {"io_info": no_device, "create_io": no_device, "setter": no_device, "context": no_device,
                    "num_inputs": 0, "host": 0}


def test_fresh_device_memory_is_dirty_by_default() -> None:
    card = ready()
    ptr, _ = card.rt.malloc(4, 0)
    out = np.zeros(4, np.uint8)
    card.rt.memcpy(out.ctypes.data, ptr, 4, codes.AXCL_MEMCPY_DEVICE_TO_HOST)
    assert out.tolist() == [0xFF] * 4  # a bf16 NaN pattern, as stale CMM may hold


def test_a_ctrl_c_inside_a_call_comes_back_as_minus_one() -> None:
    card = SimCard()
    layers, post = card.add_null_stack(G)
    with AxclDecoderStack(layers, post, card) as stack:
        card.faults.interrupt_next("engine_execute")
        with pytest.raises(DeviceError, match="Ctrl") as info:  # not a KeyboardInterrupt: pyaxcl ate it
            stack.decode(np.zeros(G.hidden, np.float32), 0)
        assert info.value.code == -1


def test_a_card_owned_elsewhere_reads_as_offline_with_a_hint() -> None:
    card = SimCard()
    layers, post = card.add_null_stack(G)
    card.take_ownership = lambda device_id: False  # type: ignore[method-assign]  # another process holds it
    with pytest.raises(DeviceOfflineError, match="another process holds the card"):
        AxclDecoderStack(layers, post, card)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_aliased_outputs_break_the_bind_path_and_not_the_copy(tiny_twin: Callable[..., Path], family: str) -> None:
    pytest.importorskip("onnxruntime")
    from ax_llm_provider.model.layout import scan_model_dir
    from ax_llm_provider.runtime.bf16 import bf16_to_float32
    from ax_llm_provider.runtime.simcard.reference import CardReference

    files = scan_model_dir(tiny_twin(family, 0, decode_capacity=63, prefill_chunk=8, prefill_histories=(0, 8, 16)))
    ref = CardReference(files.layers, files.post)
    table = bf16_to_float32(np.fromfile(files.embedding, dtype="<u2")).reshape(-1, ref.spec.hidden)
    want = [ref.prefill(table[:12], 0), ref.decode(table[5], 12), ref.decode(table[6], 13)]

    def run(kv_write: str) -> list[np.ndarray]:
        card = SimCard(corrupt_aliased_outputs=True)
        with AxclDecoderStack(files.layers, files.post, card, kv_write=kv_write) as stack:
            return [stack.prefill(table[:12], 0), stack.decode(table[5], 12), stack.decode(table[6], 13)]

    assert all(np.array_equal(g, w) for g, w in zip(run("d2d"), want, strict=True))  # the copy never aliases
    assert not all(np.array_equal(g, w) for g, w in zip(run("bind"), want, strict=True))


def test_the_card_returns_only_declared_or_native_codes() -> None:
    simcard = SRC / "ax_llm_provider" / "runtime" / "simcard"
    used = set()
    for path in simcard.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "codes" \
                    and node.attr.startswith(("ERR_", "AX_ERR_")):
                used.add(node.attr)
    assert used, "no codes found: the scan is broken"
    for name in sorted(used):
        value = getattr(codes, name)
        assert value in codes.DECLARED or codes.is_native(value), f"{name} = {value:#x} is declared nowhere"
