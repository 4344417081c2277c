"""The axengine backend (pyaxengine sessions, host KV) over the pyaxengine fake: correct, and as slow as documented."""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("ml_dtypes")

from ax_llm_provider.model.layout import scan_model_dir  # noqa: E402
from ax_llm_provider.runtime.axengine_backend import AxengineDecoderStack  # noqa: E402
from ax_llm_provider.runtime.bf16 import bf16_to_float32  # noqa: E402
from ax_llm_provider.runtime.simcard import Geometry, SimCard, make_axengine  # noqa: E402
from ax_llm_provider.runtime.simcard.reference import CardReference  # noqa: E402

GEOMETRY = {"decode_capacity": 63, "prefill_chunk": 8, "prefill_histories": (0, 8, 16, 24)}


def test_matches_the_card_reference_bit_for_bit(tiny_twin: Callable[..., Path]) -> None:
    files = scan_model_dir(tiny_twin("qwen3", 0, **GEOMETRY))
    ref = CardReference(files.layers, files.post)
    table = bf16_to_float32(np.fromfile(files.embedding, dtype="<u2")).reshape(-1, ref.spec.hidden)
    card = SimCard()
    stack = AxengineDecoderStack(files.layers, files.post, make_axengine(card))
    assert stack.spec.groups == ref.spec.groups
    ids = np.arange(3, 40)  # every prefill group, then the decode-group fallback
    got, want = stack.prefill(table[ids], 0), ref.prefill(table[ids], 0)
    assert got is not None and np.array_equal(got, want)
    snapshot = stack.kv_save(len(ids))
    token = int(np.argmax(got))
    first = [stack.decode(table[token], 37), stack.decode(table[token + 1], 38)]
    assert np.array_equal(first[0], ref.decode(table[token], 37))
    stack.kv_restore(snapshot)
    assert np.array_equal(stack.decode(table[token], 37), first[0])
    # the documented cost: the full KV window crosses the bus on every layer call
    before = card.counters.bus_bytes
    stack.decode(table[token + 1], 38)
    kv_window = 2 * ref.spec.layers * ref.spec.decode_capacity * ref.spec.kv_dim * 2
    assert card.counters.bus_bytes - before > kv_window
    stack.close()
    stack.close()


def test_missing_sdk_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_axengine(name: str, *args: object, **kwargs: object) -> object:
        if name == "axengine":
            raise ImportError("No module named 'axengine'")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_axengine)
    with pytest.raises(ImportError, match="pyaxengine releases"):
        AxengineDecoderStack([], "post.axmodel")


# ---- what real pyaxengine does that the old fake hid (each test fails on the old backend) -------------------

NARROW_KV = Geometry(layers=3, hidden=64, kv_dim=32, vocab=50, capacity=40, chunk=8, prefill_histories=(0, 8, 16),
                     layer_cmm_bytes=1 << 20, post_cmm_bytes=2 << 20)


def open_null(card: SimCard, axengine: object | None = None) -> AxengineDecoderStack:
    layers, post = card.add_null_stack(NARROW_KV)
    return AxengineDecoderStack(layers, post, axengine or make_axengine(card))


def test_no_history_placeholder_is_fed_in_the_shape_the_node_declares() -> None:
    card = SimCard()
    stack = open_null(card)
    group = next(g for g in stack.spec.groups if g.history == 0 and not g.is_decode)
    node = next(n for n in stack._layers[0].get_inputs(group.index) if n.name == "K_cache")
    assert node.shape == [1, 1, NARROW_KV.hidden]  # vendor bundles: [1, 1, hidden], not [1, 1, kv_dim]
    logits = stack.prefill(np.full((5, NARROW_KV.hidden), 0.01, np.float32), 0)  # the old code: ValueError (reshape)
    assert logits is not None and np.isfinite(logits).all()
    stack.close()


def test_close_unloads_sessions_the_module_still_holds() -> None:
    card = SimCard()
    fake = make_axengine(card)
    stack = open_null(card, fake)
    one_copy = card.cmm_used()
    assert len(card.models) == NARROW_KV.layers + 1
    stack.close()  # pyaxengine keeps the sessions in its module list: only an explicit unload frees the card
    assert len(fake._module.sessions) == NARROW_KV.layers + 1
    assert not card.models and card.memory.used == 0
    again = open_null(card, fake)  # a reload holds one copy, not two
    assert card.cmm_used() == one_copy
    again.close()


def test_dropping_a_session_frees_nothing_as_in_pyaxengine() -> None:
    card = SimCard()
    fake = make_axengine(card)
    session = fake.InferenceSession(card.add_null_stack(NARROW_KV)[1], providers=["AXCLRTExecutionProvider"])
    del session
    gc.collect()
    assert len(card.models) == 1  # still loaded: the module list keeps it until interpreter exit


def test_failed_engine_init_is_reported_as_the_npu_not_the_attribute_error() -> None:
    card = SimCard()
    fake = make_axengine(card)
    card.faults.fail_engine_init()
    with pytest.raises(RuntimeError, match="could not initialise the NPU") as info:
        open_null(card, fake)
    assert isinstance(info.value.__cause__, AttributeError)  # what pyaxengine itself raises
    assert not card.models


def test_vendor_info_lines_go_to_the_log_not_stdout(capsys: pytest.CaptureFixture[str],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    card = SimCard()
    fake = make_axengine(card)
    capsys.readouterr()
    with caplog.at_level(logging.DEBUG, logger="ax_llm_provider.runtime.axengine_backend"):
        stack = open_null(card, fake)
    assert capsys.readouterr().out == ""
    assert sum("[INFO] SOC Name" in r.getMessage() for r in caplog.records) == NARROW_KV.layers + 1
    stack.close()


def test_stdout_of_other_threads_is_left_alone(capsys: pytest.CaptureFixture[str]) -> None:
    from ax_llm_provider.runtime.axengine_backend import vendor_stdout_to_log

    with vendor_stdout_to_log("test"):
        other = threading.Thread(target=lambda: print("from another thread"))
        other.start()
        other.join()
        print("from the loading thread")
    assert capsys.readouterr().out == "from another thread\n"
