"""Structured logs with a request id, and optional Prometheus metrics.

Logs: every record emitted while a request runs on the device thread carries `request_id` (a
`logging.Filter` reads it from a thread-local the engine sets), and each finished request logs one
"request done" line with its counts and durations as `extra` fields: endpoint, model, prompt_eval_count,
eval_count, reused_tokens (prefix cache), truncated, done_reason, load/prompt/eval/total ms, queue ms and
tok/s. `JsonFormatter` writes one JSON object per line (journald and `jq` friendly) with every extra field;
`configure_logging(json_format=True)` installs it (the service does; a library never configures logging).

Metrics: if `prometheus_client` is importable, `metrics()` returns counters, histograms and gauges
registered once per process (requests by endpoint and outcome, durations, tokens, prefix reuse,
recoveries by rung, device temperature, CMM, online); `start_metrics_server(port)` serves them. Without
the package every call is a no-op, so the engine never depends on it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

_local = threading.local()
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def current_request_id() -> str | None:
    return getattr(_local, "request_id", None)


def set_request_id(request_id: str | None) -> None:
    _local.request_id = request_id


class RequestIdFilter(logging.Filter):
    """Adds `request_id` (or "-") to every record; attach it to a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request_id and every `extra` field."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(level: int | str = "INFO", json_format: bool = True, stream: Any = None) -> logging.Handler:
    """Root logging for a service: JSON lines (or plain text with the request id) on stderr."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if json_format else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if isinstance(level, int) else level.upper())
    return handler


def request_fields(chunk: Mapping[str, Any], endpoint: str, request_id: str, queued_ms: float) -> dict[str, Any]:
    """The `extra` fields of a "request done" line, from the final response chunk."""
    ax = chunk.get("ax") or {}
    eval_count = chunk.get("eval_count") or 0
    eval_ns = chunk.get("eval_duration") or 0
    return {
        "request_id": request_id, "endpoint": endpoint, "model": chunk.get("model"),
        "done_reason": chunk.get("done_reason"), "prompt_eval_count": chunk.get("prompt_eval_count"),
        "eval_count": eval_count, "reused_tokens": ax.get("prompt_cache_reused_tokens", 0),
        "truncated": bool(ax.get("truncation")), "warnings": len(ax.get("warnings") or []),
        "load_ms": round((chunk.get("load_duration") or 0) / 1e6, 1),
        "prompt_ms": round((chunk.get("prompt_eval_duration") or 0) / 1e6, 1),
        "eval_ms": round(eval_ns / 1e6, 1), "total_ms": round((chunk.get("total_duration") or 0) / 1e6, 1),
        "queued_ms": round(queued_ms, 1), "tok_s": round(eval_count / (eval_ns / 1e9), 1) if eval_ns else None,
    }


# ---- metrics -------------------------------------------------------------------------------------------


class _NoMetrics:
    enabled = False

    def request_done(self, fields: dict[str, Any]) -> None: ...

    def request_failed(self, endpoint: str, error: BaseException) -> None: ...

    def recovery(self, rung: str) -> None: ...

    def device(self, reading: Any) -> None: ...


class _Metrics(_NoMetrics):
    enabled = True

    def __init__(self, prom: Any) -> None:
        self.requests = prom.Counter("axllm_requests_total", "Finished requests", ["endpoint", "outcome"])
        self.duration = prom.Histogram("axllm_request_seconds", "Request wall time", ["endpoint"],
                                       buckets=(0.25, 0.5, 1, 2, 3, 5, 8, 13, 30, 60))
        self.tokens = prom.Counter("axllm_generated_tokens_total", "Generated tokens")
        self.prompt = prom.Counter("axllm_prompt_tokens_total", "Prompt tokens evaluated or reused")
        self.reused = prom.Counter("axllm_reused_prompt_tokens_total", "Prompt tokens served by the prefix cache")
        self.recoveries = prom.Counter("axllm_recoveries_total", "Device recoveries", ["rung"])
        self.temperature = prom.Gauge("axllm_device_temperature_celsius", "NPU card junction temperature")
        self.cmm_free = prom.Gauge("axllm_device_cmm_free_bytes", "Free CMM on the card")
        self.cmm_total = prom.Gauge("axllm_device_cmm_total_bytes", "CMM on the card")
        self.online = prom.Gauge("axllm_device_online", "1 while the card answers")

    def request_done(self, fields: dict[str, Any]) -> None:
        self.requests.labels(fields["endpoint"], "ok").inc()
        self.duration.labels(fields["endpoint"]).observe(fields["total_ms"] / 1e3)
        self.tokens.inc(fields["eval_count"] or 0)
        self.prompt.inc(fields["prompt_eval_count"] or 0)
        self.reused.inc(fields["reused_tokens"] or 0)

    def request_failed(self, endpoint: str, error: BaseException) -> None:
        self.requests.labels(endpoint, type(error).__name__).inc()

    def recovery(self, rung: str) -> None:
        self.recoveries.labels(rung).inc()

    def device(self, reading: Any) -> None:
        self.online.set(1 if reading.online else 0)
        if reading.temperature_c is not None:
            self.temperature.set(reading.temperature_c)
        if reading.cmm_free_mb is not None and reading.cmm_total_mb is not None:
            self.cmm_free.set(reading.cmm_free_mb * 2**20)
            self.cmm_total.set(reading.cmm_total_mb * 2**20)


_metrics: _NoMetrics | None = None
_metrics_lock = threading.Lock()


def metrics() -> _NoMetrics:
    """The process's metrics (Prometheus when `prometheus_client` is installed, else no-ops)."""
    global _metrics
    if _metrics is None:
        with _metrics_lock:
            if _metrics is None:
                try:
                    import prometheus_client
                except ImportError:
                    _metrics = _NoMetrics()
                else:
                    _metrics = _Metrics(prometheus_client)
    return _metrics


def start_metrics_server(port: int, addr: str = "127.0.0.1") -> bool:
    """Serve /metrics on addr:port; False (with a warning) when prometheus_client is missing."""
    if not metrics().enabled:
        logging.getLogger(__name__).warning("prometheus_client is not installed: no metrics on port %d "
                                            "(pip install prometheus-client)", port)
        return False
    import prometheus_client

    prometheus_client.start_http_server(port, addr=addr)
    return True


__all__ = ["JsonFormatter", "RequestIdFilter", "configure_logging", "current_request_id", "metrics",
           "request_fields", "set_request_id", "start_metrics_server"]
