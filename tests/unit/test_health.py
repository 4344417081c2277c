"""Health monitor policies (thermal pause, offline, hang watch, watchdog), engine.health() and structured logs."""

from __future__ import annotations

import io
import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.engine.ops.health import (
    DeviceOverheatedError,
    DeviceReading,
    HealthConfig,
    HealthMonitor,
    host_figures,
)
from ax_llm_provider.engine.ops.recovery import DeviceActivity, RecoveryPolicy
from ax_llm_provider.engine.worker.scheduler import CancelToken, RequestTimeoutError
from ax_llm_provider.model.store import ModelStore
from ax_llm_provider.observability import (
    JsonFormatter,
    RequestIdFilter,
    metrics,
    request_fields,
    set_request_id,
)
from ax_llm_provider.runtime.errors import DeviceMemoryError
from ax_llm_provider.runtime.simcard import SimCard

FAST = HealthConfig(period_s=0.02, execute_timeout_s=0.2, thermal_wait_s=0.5, hang_reboot_s=0.5, hang_fatal_s=0.8,
                    temp_warn_c=70, temp_pause_c=85, temp_resume_c=75)


class FakeHooks:
    def __init__(self) -> None:
        self.activity = DeviceActivity()
        self.reading: DeviceReading | None = DeviceReading(online=True, temperature_c=45.0)
        self.calls: list[str] = []
        self.is_alive = True

    def probe(self) -> DeviceReading | None:
        return self.reading

    def on_hang(self, stuck_s: float) -> None:
        self.calls.append("hang")

    def on_hang_reboot(self, stuck_s: float) -> None:
        self.calls.append("reboot")

    def on_hang_fatal(self, stuck_s: float) -> None:
        self.calls.append("fatal")

    def on_offline(self, reading: DeviceReading) -> None:
        self.calls.append("offline")

    def alive(self) -> bool:
        return self.is_alive

    def last_progress(self) -> float:
        return 0.0


@pytest.fixture()
def hooks() -> FakeHooks:
    return FakeHooks()


def monitor_of(hooks: FakeHooks, config: HealthConfig = FAST) -> HealthMonitor:
    return HealthMonitor(hooks, config)


def until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_config_validates_and_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="resume < pause"):
        HealthConfig(temp_pause_c=80, temp_resume_c=80)
    monkeypatch.setenv("AX_LLM_TEMP_PAUSE", "90")
    monkeypatch.setenv("AX_LLM_HANG_REBOOT", "off")
    monkeypatch.setenv("AX_LLM_EXECUTE_TIMEOUT", "3")
    config = HealthConfig.from_env(period_s=1.0)
    assert config.temp_pause_c == 90 and config.hang_reboot_s is None and config.execute_timeout_s == 3
    assert config.period_s == 1.0


def test_thermal_pause_and_resume_with_hysteresis(hooks: FakeHooks) -> None:
    monitor = monitor_of(hooks)
    for temp, paused in ((60, False), (72, False), (86, True), (80, True), (75, False), (84, False)):
        hooks.reading = DeviceReading(online=True, temperature_c=temp)
        monitor.read_now()
        assert monitor.paused is paused, temp


def test_gate_waits_then_fails_fast_with_the_numbers(hooks: FakeHooks) -> None:
    monitor = monitor_of(hooks)
    hooks.reading = DeviceReading(online=True, temperature_c=91.0)
    monitor.read_now()
    started = time.monotonic()
    with pytest.raises(DeviceOverheatedError, match=r"at 91 °C, above the pause threshold 85 °C.*cools to 75 °C"):
        monitor.wait_until_cool(CancelToken(10), started)
    assert 0.45 <= time.monotonic() - started < 2.0
    # a request that already waited in the queue for longer than thermal_wait_s fails at once
    quick = time.monotonic()
    with pytest.raises(DeviceOverheatedError):
        monitor.wait_until_cool(CancelToken(10), quick - 5)
    assert time.monotonic() - quick < 0.2


def test_gate_lets_the_request_through_once_cool(hooks: FakeHooks) -> None:
    monitor = monitor_of(hooks, HealthConfig(period_s=0.02, thermal_wait_s=5, temp_resume_c=75)).start()
    try:
        hooks.reading = DeviceReading(online=True, temperature_c=95.0)
        assert until(lambda: monitor.paused)
        started = time.monotonic()

        def cool() -> None:
            hooks.reading = DeviceReading(online=True, temperature_c=60.0)

        import threading

        threading.Timer(0.3, cool).start()
        monitor.wait_until_cool(CancelToken(10), started)
        assert 0.25 < time.monotonic() - started < 3
    finally:
        monitor.stop()


def test_gate_honours_the_request_deadline(hooks: FakeHooks) -> None:
    monitor = monitor_of(hooks, HealthConfig(period_s=0.02, thermal_wait_s=60))
    hooks.reading = DeviceReading(online=True, temperature_c=99.0)
    monitor.read_now()
    with pytest.raises(RequestTimeoutError):
        monitor.wait_until_cool(CancelToken(0.2), time.monotonic())


def test_offline_needs_two_reads_and_is_reported_once(hooks: FakeHooks) -> None:
    monitor = monitor_of(hooks)
    hooks.reading = DeviceReading(online=False, error="device is not connected")
    monitor.read_now()
    assert hooks.calls == []
    monitor.read_now()
    monitor.read_now()
    assert hooks.calls == ["offline"]
    assert not monitor.live()
    hooks.reading = DeviceReading(online=True, temperature_c=40)
    monitor.read_now()
    assert monitor.live()


class FakeClock:
    """A monotonic clock the test moves; `run` ticks the monitor every 10 ms of fake time, with no sleeping."""

    def __init__(self) -> None:
        self.now = time.monotonic()  # near the real clock: DeviceActivity stamps answers with the real one

    def __call__(self) -> float:
        return self.now

    def run(self, monitor: HealthMonitor, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now += 0.01
            monitor.tick()


def test_hang_watch_cancels_then_reboots_then_gives_up(hooks: FakeHooks) -> None:
    clock = FakeClock()
    monitor = HealthMonitor(hooks, FAST, clock=clock)
    hooks.activity.busy_since = clock.now
    clock.run(monitor, 0.25)  # past execute_timeout_s (0.2)
    assert hooks.calls == ["hang"]
    assert monitor.hung and not monitor.live()
    clock.run(monitor, 0.6)  # past hang_reboot_s (0.5) and hang_fatal_s (0.8)
    assert hooks.calls == ["hang", "reboot", "fatal"]
    hooks.activity.busy_since = None
    clock.run(monitor, 0.05)
    assert not monitor.hung
    assert hooks.calls == ["hang", "reboot", "fatal"]  # each step once per hang


def test_the_monitor_thread_runs_the_same_ticks(hooks: FakeHooks) -> None:
    monitor = monitor_of(hooks).start()
    try:
        hooks.activity.busy_since = time.monotonic()
        assert until(lambda: hooks.calls[:1] == ["hang"], 5)
    finally:
        monitor.stop()


@pytest.fixture()
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "300000")  # 0.3 s
    yield sock
    sock.close()


def drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(100))
        except BlockingIOError:
            return out


def test_watchdog_pings_only_while_the_device_answers(hooks: FakeHooks, notify: socket.socket) -> None:
    clock = FakeClock()
    monitor = HealthMonitor(hooks, HealthConfig(period_s=0.02, execute_timeout_s=0.1, hang_reboot_s=None,
                                                hang_fatal_s=None), clock=clock)
    clock.run(monitor, 0.6)
    assert b"WATCHDOG=1" in drain(notify)
    hooks.activity.busy_since = clock.now  # a hung execute
    clock.run(monitor, 0.2)
    assert monitor.hung
    drain(notify)
    clock.run(monitor, 0.5)
    assert drain(notify) == []
    hooks.activity.busy_since = None
    clock.run(monitor, 0.05)
    assert not monitor.hung
    clock.run(monitor, 0.5)
    assert b"WATCHDOG=1" in drain(notify)
    hooks.is_alive = False  # the engine is lost (fatal) or its worker died
    clock.run(monitor, 0.2)
    drain(notify)
    clock.run(monitor, 0.5)
    assert drain(notify) == []


def test_host_figures_are_cheap_and_present() -> None:
    figures = host_figures()
    assert figures["rss_mb"] > 10 and figures["mem_available_mb"] > 0 and figures["load_1m"] is not None


# ---- engine.health() --------------------------------------------------------------------------------------


def chat(engine: Engine, model: str, n: int = 4) -> dict[str, Any]:
    return list(engine.chat({"model": model, "messages": [{"role": "user", "content": "hello"}],
                             "options": {"num_predict": n, "temperature": 0}}))[-1]


def test_onnx_backend_reports_host_only_health(tmp_path: Path, tiny_twin: Callable[..., Path]) -> None:
    with Engine(ModelStore(tmp_path), backend="onnx", auto_pull=False, health=FAST) as engine:
        assert engine.health().state == "idle" and engine.health().device == "cpu"
        chat(engine, str(tiny_twin("llama")))
        snap = engine.health().to_dict()
    assert snap["device"] == "cpu" and snap["online"] is True and snap["backend"] == "onnx"
    assert snap["temperature_c"] is None and snap["cmm_total_mb"] is None and snap["state"] == "ok"
    assert snap["host"]["rss_mb"] > 0 and json.dumps(snap)


def _health_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ax-llm-health" and t.is_alive()]


def test_the_cpu_twin_starts_no_monitor_and_no_signal_handler_unless_asked(
        tmp_path: Path, tiny_twin: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    before, sigterm = len(_health_threads()), signal.getsignal(signal.SIGTERM)
    with Engine(ModelStore(tmp_path), backend="onnx", auto_pull=False) as engine:
        chat(engine, str(tiny_twin("llama")))
        assert len(_health_threads()) == before and engine.health().state == "ok"
        assert signal.getsignal(signal.SIGTERM) is sigterm
    with Engine(ModelStore(tmp_path), backend="onnx", auto_pull=False, health=FAST):  # asked for
        assert len(_health_threads()) == before + 1
    assert len(_health_threads()) == before


def test_simulated_card_health_reads_temperature_cmm_and_load(tmp_path: Path, tiny_twin: Callable[..., Path]) -> None:
    card = SimCard()
    with Engine(ModelStore(tmp_path), backend="simulated", card=card, auto_pull=False, health=FAST) as engine:
        chat(engine, str(tiny_twin("llama")))
        assert until(lambda: engine.health().read_at is not None)
        snap = engine.health()
        assert snap.state == "ok" and snap.device == "simulated card 0" and snap.online is True
        assert snap.temperature_c == 41.0 and snap.cmm_total_mb == 7040.0 and 0 < snap.cmm_used_mb < 7040
        card.faults.temperature_mc = lambda counters: 90_000
        assert until(lambda: engine.health().state == "paused")
        assert engine.health().paused and "card at 90 °C" in engine.health().warnings[0]
        card.faults.temperature_mc = None
        assert until(lambda: engine.health().state == "ok")
    assert engine.health().state == "closed"
    assert card.counters.calls["axclrtGetDeviceProperties"] >= 3


def test_load_that_would_overflow_cmm_is_refused_with_the_numbers(tmp_path: Path,
                                                                  tiny_twin: Callable[..., Path]) -> None:
    card = SimCard()
    card.faults.limit_cmm(8 << 20)
    with Engine(ModelStore(tmp_path), backend="simulated", card=card, auto_pull=False,
                health=HealthConfig(cmm_floor_mb=64), recovery=RecoveryPolicy(cmm_retry_wait_s=0.01)) as engine:
        started = time.monotonic()
        with pytest.raises(DeviceMemoryError,
                           match=r"the model files need \d+ MB plus a 64 MB floor, 8 MB of CMM remain"):
            chat(engine, str(tiny_twin("llama")))
        assert time.monotonic() - started < 5
        assert card.memory.used == 0 and not card.models  # nothing left behind on the card
        assert card.counters.calls["axclrtRebootDevice"] == 0  # a budget refusal is not a device failure
        card.faults.limit_cmm(None)
        assert chat(engine, str(tiny_twin("llama")))["done"]


# ---- structured logs -------------------------------------------------------------------------------------


def test_json_formatter_carries_the_request_id_and_extras() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("ax_llm_provider.test_json")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        set_request_id("abc-1")
        logger.info("hello %s", "world", extra={"eval_count": 7})
        set_request_id(None)
        logger.warning("no request")
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["msg"] == "hello world" and first["request_id"] == "abc-1" and first["eval_count"] == 7
    assert first["level"] == "info" and first["ts"].endswith("Z")
    assert second["request_id"] == "-"


def test_every_request_logs_one_done_line_with_counts(tmp_path: Path, tiny_twin: Callable[..., Path],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ax_llm_provider.engine.ops")
    with Engine(ModelStore(tmp_path), backend="onnx", auto_pull=False, health=FAST) as engine:
        model = str(tiny_twin("llama"))
        chat(engine, model)
        chat(engine, model)
    done = [r for r in caplog.records if r.getMessage().startswith("request done")]
    assert len(done) == 2
    last = done[-1]
    assert last.endpoint == "chat" and last.eval_count == 4 and last.prompt_eval_count > 0  # type: ignore[attr-defined]
    assert last.reused_tokens > 0 and last.truncated is False and last.request_id != done[0].request_id  # type: ignore[attr-defined]


def test_request_fields_from_a_final_chunk() -> None:
    chunk = {"model": "m", "done": True, "done_reason": "stop", "prompt_eval_count": 10, "eval_count": 20,
             "eval_duration": 2_000_000_000, "total_duration": 3_000_000_000, "load_duration": 0,
             "prompt_eval_duration": 5_000_000,
             "ax": {"prompt_cache_reused_tokens": 4, "truncation": {"dropped_messages": 1}}}
    fields = request_fields(chunk, "generate", "r1", 12.5)
    assert fields["tok_s"] == 10.0 and fields["truncated"] is True and fields["total_ms"] == 3000.0
    assert fields["reused_tokens"] == 4 and fields["queued_ms"] == 12.5


def test_metrics_are_optional() -> None:
    m = metrics()
    m.recovery("reset")  # no-op or a counter, never an error
    if m.enabled:
        import prometheus_client

        assert prometheus_client.REGISTRY.get_sample_value("axllm_recoveries_total", {"rung": "reset"}) >= 1
