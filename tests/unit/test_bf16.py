from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from ax_llm_provider.runtime.bf16 import bf16_to_float32, float32_to_bf16


def test_exact_values_survive() -> None:
    values = np.array([0.0, 1.0, -2.0, 0.5, 65536.0, -65536.0], dtype=np.float32)
    assert np.array_equal(bf16_to_float32(float32_to_bf16(values)), values)


def test_round_to_nearest_even() -> None:
    # 1 + 2**-8 lies exactly between two bf16 values (1 and 1 + 2**-7): ties go to the even one (1).
    assert bf16_to_float32(float32_to_bf16(np.array([1 + 2**-8], dtype=np.float32)))[0] == 1.0
    assert bf16_to_float32(float32_to_bf16(np.array([1 + 3 * 2**-8], dtype=np.float32)))[0] == 1 + 2**-6


def test_nan_stays_nan() -> None:
    assert np.isnan(bf16_to_float32(float32_to_bf16(np.array([np.nan], dtype=np.float32))))[0]


@given(st.floats(min_value=-(2.0**100), max_value=2.0**100, width=32).filter(lambda v: v == 0 or abs(v) > 1e-30))
def test_relative_error_within_bf16_precision(x: float) -> None:
    back = float(bf16_to_float32(float32_to_bf16(np.array([x], dtype=np.float32)))[0])
    assert abs(back - x) <= abs(x) * 2**-8 + 1e-38
