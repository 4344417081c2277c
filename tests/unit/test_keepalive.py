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
