from __future__ import annotations

import math

import pytest

from ax_llm_provider.engine.keepalive import InvalidKeepAliveError, parse_keep_alive


@pytest.mark.parametrize(("value", "seconds"), [
    ("5m", 300), ("24h", 86400), ("1h30m", 5400), ("1.5s", 1.5), ("300", 300), (300, 300), (0, 0), ("0", 0),
    ("500ms", 0.5),
])
def test_durations(value: object, seconds: float) -> None:
    assert parse_keep_alive(value, default=1) == pytest.approx(seconds)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["-1m", -1, "-1", -0.5])
def test_negative_is_forever(value: object) -> None:
    assert parse_keep_alive(value, default=1) == math.inf  # type: ignore[arg-type]


def test_default_when_absent() -> None:
    assert parse_keep_alive(None, default=42) == 42 and parse_keep_alive("", default=7) == 7


@pytest.mark.parametrize("value", ["5 minutes", "m", "5x", True, "1h-3m"])
def test_invalid(value: object) -> None:
    with pytest.raises(InvalidKeepAliveError, match="keep_alive"):
        parse_keep_alive(value, default=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity", math.nan, math.inf])
def test_nan_and_inf_are_refused(value: object) -> None:
    """Ollama's Go duration parser knows no nan/inf; "nan" used to mean forever here."""
    with pytest.raises(InvalidKeepAliveError, match="keep_alive"):
        parse_keep_alive(value, default=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [1e10, "1e10", 1e300, "3000000h", 2**63])
def test_beyond_go_duration_range_is_forever(value: object) -> None:
    """Above ~9.2e9 s a timer thread threw OverflowError; Ollama's duration saturates, so it is forever."""
    assert parse_keep_alive(value, default=1) == math.inf  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [9.2e9, "2562047h", 9223372036.5, 9.3e9, "2562048h"])
def test_every_finite_keep_alive_fits_a_timer(value: object) -> None:
    import threading
    seconds = parse_keep_alive(value, default=1)  # type: ignore[arg-type]
    assert seconds == math.inf or seconds <= threading.TIMEOUT_MAX
