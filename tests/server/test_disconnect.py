"""A client that disconnects in the middle of a stream frees the device within one token (SmolLM2).

Every token the model produces is timestamped (a wrapper around the runner's token generator); after
the client closes its socket at most the token already being computed may still appear, the device
worker has no running request any more, its cancelled counter rose, and the next request starts at
once instead of queueing behind a generation that would have run for hundreds of tokens.
"""

from __future__ import annotations

import json
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import ollama
import pytest

import ax_llm_provider.engine.runner as runner_module
from ax_llm_provider.engine.engine import Engine
from tests.conftest import SMOLLM2

pytestmark = [pytest.mark.golden, pytest.mark.timeout(240)]

LONG = {"model": SMOLLM2, "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
        "options": {"temperature": 0, "num_predict": 400}}


@pytest.fixture
def token_times(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """time.monotonic() of every token the runner produces while the test runs."""
    times: list[float] = []
    original = runner_module.generate_tokens

    def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for step in original(*args, **kwargs):
            times.append(time.monotonic())
            yield step

    monkeypatch.setattr(runner_module, "generate_tokens", timed)
    return times


def wait_until(condition: Callable[[], bool], timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.001)
    return time.monotonic()


def open_stream(url: str, body: dict[str, Any], lines: int) -> socket.socket:
    """POST body on a raw socket and read until `lines` NDJSON chunks arrived; returns the open socket."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=120)
    payload = json.dumps(body).encode()
    sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: "
                 + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    received = b""
    while received.count(b'"done":false') < lines:
        data = sock.recv(65536)
        assert data, f"the server closed the stream early: {received!r}"
        received += data
    assert b"200 OK" in received.split(b"\r\n", 1)[0] and b"application/x-ndjson" in received
    return sock


def assert_next_request_starts_at_once(url: str, engine: Engine) -> None:
    """Nothing queued or running when the next request arrives, so it starts at once. Checked on the worker's
    state, not on the wall clock: a loaded machine stretches the round trip, not the queue."""
    stats = engine.worker.stats()
    assert stats.running is None and stats.queued == 0, f"the device is still busy: {stats}"
    started = time.monotonic()
    answer = httpx.post(f"{url}/api/chat", timeout=120, json={**LONG, "stream": False,
                                                              "options": {"temperature": 0, "num_predict": 1}})
    wall = time.monotonic() - started
    assert answer.status_code == 200 and answer.json()["eval_count"] == 1
    waited = wall - answer.json()["total_duration"] / 1e9  # HTTP round trip + time spent queued
    print(f"the next request waited {waited:.3f} s before it started")


def test_disconnect_mid_stream_frees_the_device_within_one_token(smollm2_url: str, smollm2_engine: Engine,
                                                                  token_times: list[float]) -> None:
    worker = smollm2_engine.worker
    before = worker.stats()
    sock = open_stream(smollm2_url, LONG, lines=4)
    assert worker.stats().running is not None  # still generating: 400 tokens take many seconds
    closed_at = time.monotonic()
    sock.close()
    freed_at = wait_until(lambda: worker.stats().running is None, timeout=10)
    after_close = [t for t in token_times if t > closed_at]
    before_close = [t for t in token_times if t <= closed_at]
    per_token = statistics.median(b - a for a, b in zip(before_close, before_close[1:], strict=False))
    print(f"token {per_token * 1000:.0f} ms; freed {1000 * (freed_at - closed_at):.0f} ms after the disconnect; "
          f"{len(after_close)} token(s) after it")
    assert len(after_close) <= 1, (f"{len(after_close)} tokens were produced after the client left "
                                   f"(a token takes {per_token * 1000:.0f} ms)")
    # "within one token" is counted in tokens, not seconds: nothing ran between the token in flight and the free
    assert len([t for t in token_times if closed_at < t <= freed_at]) == len(after_close)
    stats = worker.stats()
    assert stats.cancelled == before.cancelled + 1 and stats.completed == before.completed
    assert len(token_times) < 40  # the 400-token generation really stopped
    assert_next_request_starts_at_once(smollm2_url, smollm2_engine)


def test_breaking_out_of_an_ollama_client_stream_cancels_the_generation(smollm2_url: str, smollm2_engine: Engine,
                                                                       token_times: list[float]) -> None:
    """What a UI's stop button does: leave the python client's stream; its connection closes."""
    worker = smollm2_engine.worker
    before = worker.stats()
    client = ollama.Client(host=smollm2_url)
    stream = client.chat(**LONG, stream=True)
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()  # ollama's generator leaves `with httpx.stream(...)`: the response (connection) is closed
    closed_at = time.monotonic()
    wait_until(lambda: worker.stats().running is None, timeout=10)
    assert len([t for t in token_times if t > closed_at]) <= 1
    assert worker.stats().cancelled == before.cancelled + 1
    assert_next_request_starts_at_once(smollm2_url, smollm2_engine)
