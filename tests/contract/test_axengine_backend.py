"""The axengine backend (pyaxengine sessions, host KV) over the pyaxengine fake: correct, and as slow as documented."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("ml_dtypes")

from ax_llm_provider.model.layout import scan_model_dir  # noqa: E402
from ax_llm_provider.runtime.axengine_backend import AxengineDecoderStack  # noqa: E402
from ax_llm_provider.runtime.bf16 import bf16_to_float32  # noqa: E402
from ax_llm_provider.runtime.simcard import SimCard, make_axengine  # noqa: E402
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
