"""Ollama's keep_alive: a duration string ("10m", "24h", "-1m", "1h30m") or a number of seconds.

0 unloads right after the request; any negative value keeps the model loaded forever. Go's durations
saturate at about 292 years (2**63 ns), so longer values are forever too, which also keeps them under
the largest timeout a timer thread accepts. Go parses no nan or inf, so neither do we.
"""

from __future__ import annotations

import math
import re
import threading

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
FOREVER = math.inf
# Go's largest time.Duration in seconds, no more than a timer thread can wait.
MAX_SECONDS = min((2**63 - 1) / 1e9, threading.TIMEOUT_MAX)


class InvalidKeepAliveError(ValueError):
    pass


def parse_keep_alive(value: float | int | str | None, default: float) -> float:
    """Seconds to keep the model loaded after the request; math.inf for forever, 0 to unload."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise InvalidKeepAliveError(f"keep_alive must be a duration like '5m' or a number of seconds, not {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        try:
            seconds = float(text)  # "300" is seconds, as Ollama accepts
        except ValueError:
            seconds = _parse_duration(text)
    if math.isnan(seconds) or math.isinf(seconds):
        raise InvalidKeepAliveError(
            f"invalid keep_alive {value!r}: use a duration such as '5m', a number of seconds, or -1 for forever")
    return FOREVER if seconds < 0 or seconds > MAX_SECONDS else seconds


def _parse_duration(text: str) -> float:
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    total, pos = 0.0, 0
    for match in _PART.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not body or pos != len(body):
        raise InvalidKeepAliveError(
            f"invalid keep_alive {text!r}: use a Go-style duration such as '5m', '24h', '1h30m', "
            "'-1' (forever) or '0' (unload)"
        )
    return sign * total
