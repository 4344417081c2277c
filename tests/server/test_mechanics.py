"""Ollama's REST mechanics on random-weight twins: probes, status codes and error bodies, NDJSON vs one
object, load/unload and keep_alive, the bounded queue (503), cancellation of a queued request by a
disconnect, mid-stream error lines, an event loop that stays responsive while the device is busy."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import httpx
import ollama
import pytest

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.engine.errors import EngineError
from ax_llm_provider.engine.worker.scheduler import CancelToken
from ax_llm_provider.server import OLLAMA_VERSION, BackgroundServer, create_app
from tests.server.conftest import TINY_LLAMA, TINY_QWEN2

pytestmark = pytest.mark.timeout(120)

HI = [{"role": "user", "content": "hi"}]
TIMEOUT = 60  # the first request that reaches the device loads the model
post = partial(httpx.post, timeout=TIMEOUT)
get = partial(httpx.get, timeout=TIMEOUT)
head = partial(httpx.head, timeout=TIMEOUT)
FIXED = {"temperature": 0, "num_predict": 6}


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


@contextmanager
def device_held(engine: Engine) -> Iterator[None]:
    """Keep the device worker busy with a job of our own until the block ends."""
    release, started = threading.Event(), threading.Event()

    def job(token: CancelToken) -> Iterator[None]:
        started.set()
        while not release.wait(0.005) and not token.cancelled:
            pass
        yield None

    stream = engine.worker.submit(job, stall_timeout=None)
    assert started.wait(10)
    try:
        yield
    finally:
        release.set()
        list(stream)


# ---- probes and listings --------------------------------------------------------------------------

def test_probes(tiny_url: str) -> None:
    root = get(tiny_url)
    assert root.status_code == 200 and root.text == "Ollama is running"
    assert root.headers["content-type"].startswith("text/plain")
    probe = head(tiny_url)
    assert probe.status_code == 200 and probe.content == b""
    assert get(f"{tiny_url}/api/version").json() == {"version": OLLAMA_VERSION}
    assert get(f"{tiny_url}/api/nope").status_code == 404


def test_tags_show_ps(tiny_url: str) -> None:
    client = ollama.Client(host=tiny_url)
    names = {m.model for m in client.list().models}
    assert {TINY_LLAMA, TINY_QWEN2} <= names
    shown = client.show(TINY_LLAMA)
    assert shown.modelinfo and shown.details.family and "completion" in (shown.capabilities or [])
    legacy = post(f"{tiny_url}/api/show", json={"name": TINY_LLAMA})  # the older field name
    assert legacy.status_code == 200 and legacy.json()["model_info"] == shown.modelinfo
    with pytest.raises(ollama.ResponseError) as missing:
        client.show("nosuch:1b")
    assert missing.value.status_code == 404 and "not found" in missing.value.error
    assert isinstance(client.ps().models, list)


# ---- request errors: Ollama's status codes and {"error": ...} bodies ---------------------------------

@pytest.mark.parametrize("path", ["/api/chat", "/api/generate", "/api/embed", "/api/show"])
def test_body_errors(tiny_url: str, path: str) -> None:
    empty = post(tiny_url + path, content=b"")
    assert (empty.status_code, empty.json()) == (400, {"error": "missing request body"})
    broken = post(tiny_url + path, content=b"{not json")
    assert broken.status_code == 400 and broken.json()["error"].startswith("invalid JSON")
    no_model = post(tiny_url + path, json={"messages": [], "prompt": "x", "input": "x"})
    expected = (404, {"error": "model '' not found"}) if path == "/api/generate" else (  # Ollama's GenerateHandler
        400, {"error": "model is required"})
    assert (no_model.status_code, no_model.json()) == expected
    assert post(tiny_url + path, content=b"[1]").status_code == 400


@pytest.mark.parametrize(("body", "status", "fragment"), [
    ({"model": "nosuch:1b"}, 404, "not found"),
    ({"options": {"top_k": "many"}}, 400, 'option "top_k" must be of type integer'),
    ({"format": "yaml"}, 400, "invalid format"),
    ({"format": "{not a schema"}, 400, "invalid JSON schema in format"),
    ({"keep_alive": "soon"}, 400, "keep_alive"),
    ({"top_logprobs": 21}, 400, "top_logprobs"),
    ({"think": True}, 400, "does not support thinking"),  # raised on the device: still before any content
])
@pytest.mark.parametrize("stream", [True, False])
def test_request_errors(tiny_url: str, body: dict[str, Any], status: int, fragment: str, stream: bool) -> None:
    for path, base in (("/api/chat", {"messages": HI}), ("/api/generate", {"prompt": "hi"})):
        answer = post(tiny_url + path, json={"model": TINY_LLAMA, **base, "stream": stream, **body})
        assert answer.status_code == status, answer.text
        assert answer.headers["content-type"].startswith("application/json")
        error = answer.json()
        assert list(error) == ["error"] and fragment in error["error"]


TOOLS = [{"type": "function", "function": {"name": "f", "description": "does f",
                                           "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}}]


def test_tools(tiny_url: str) -> None:
    client = ollama.Client(host=tiny_url)
    plain = client.chat(model=TINY_LLAMA, messages=HI, tools=TOOLS, options=FIXED)  # ChatML: the generic prompt
    assert plain.done and plain.message.role == "assistant"
    answer = client.chat(model=TINY_QWEN2, messages=HI, tools=TOOLS, options=FIXED)  # a template with tools
    assert answer.done and answer.message.role == "assistant"
    forced = post(f"{tiny_url}/api/chat", json={"model": TINY_QWEN2, "messages": HI, "tools": TOOLS, "stream": False,
                                               "tool_choice": "f", "options": {"temperature": 0, "num_predict": 32}})
    assert forced.status_code == 200, forced.text
    calls = forced.json()["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["f"] and isinstance(calls[0]["function"]["arguments"], dict)


# ---- NDJSON, one object, merging ---------------------------------------------------------------------

@pytest.mark.parametrize(("path", "body", "field"), [
    ("/api/chat", {"messages": HI}, "message"), ("/api/generate", {"prompt": "hi"}, "response")])
def test_stream_and_single_object(tiny_url: str, path: str, body: dict[str, Any], field: str) -> None:
    request = {"model": TINY_LLAMA, **body, "options": {**FIXED, "seed": 1}}
    with httpx.stream("POST", tiny_url + path, json=request, timeout=TIMEOUT) as streamed:  # NDJSON by default
        assert streamed.status_code == 200 and streamed.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in streamed.iter_lines() if line]
    assert [c["done"] for c in lines] == [False] * (len(lines) - 1) + [True]
    final = lines[-1]
    assert final["done_reason"] in ("stop", "length") and final["eval_count"] >= 1 and "ax" in final
    single = post(tiny_url + path, json={**request, "stream": False})
    assert single.status_code == 200 and single.headers["content-type"].startswith("application/json")
    merged = single.json()
    assert merged["done"] is True and merged["eval_count"] == final["eval_count"]

    def text(chunk: dict[str, Any]) -> str:
        return chunk["message"]["content"] if field == "message" else chunk["response"]

    assert text(merged) == "".join(text(c) for c in lines)  # temperature 0: the same answer, merged
    if field == "response":
        assert merged["context"] == final["context"]


# ---- load, unload, keep_alive ---------------------------------------------------------------------------

def test_load_unload_and_keep_alive(tiny_url: str) -> None:
    client = ollama.Client(host=tiny_url)

    def loaded() -> dict[str, Any]:
        return {m.model: m for m in client.ps().models}

    for path, body in (("/api/chat", {}), ("/api/chat", {"messages": []}), ("/api/generate", {"prompt": ""})):
        answer = post(tiny_url + path, json={"model": TINY_LLAMA, **body})  # stream omitted
        assert answer.headers["content-type"].startswith("application/json")  # one object, as Ollama
        assert answer.json()["done_reason"] == "load" and answer.json()["done"] is True
        assert TINY_LLAMA in loaded()
        unload = post(tiny_url + path, json={"model": TINY_LLAMA, **body, "keep_alive": 0})
        assert unload.json()["done_reason"] == "unload" and TINY_LLAMA not in loaded()

    assert client.generate(model=TINY_LLAMA, prompt="hi", options=FIXED, keep_alive="10m").done
    expires = loaded()[TINY_LLAMA].expires_at
    assert expires is not None
    left = (expires - datetime.now(UTC)).total_seconds()
    assert 540 < left <= 600
    assert client.chat(model=TINY_LLAMA, messages=HI, options=FIXED, keep_alive=0).done
    assert TINY_LLAMA not in loaded()  # keep_alive 0: unloaded right after the answer
    assert client.chat(model=TINY_LLAMA, messages=[], keep_alive=-1).done_reason == "load"
    assert loaded()[TINY_LLAMA].expires_at.year >= 2100  # negative: kept loaded forever


# ---- queueing, cancellation, a responsive loop ------------------------------------------------------------

def _post_in_thread(url: str, body: dict[str, Any], out: list[httpx.Response]) -> threading.Thread:
    def run() -> None:
        response = post(url, json=body)
        out.append(response)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_full_queue_answers_503(tiny_url: str, tiny_engine: Engine) -> None:
    """max_queue=1: with the device busy and one request waiting, the next one is refused with 503."""
    waiting: list[httpx.Response] = []
    with device_held(tiny_engine):
        thread = _post_in_thread(f"{tiny_url}/api/chat", {"model": TINY_LLAMA, "messages": HI, "options": FIXED,
                                                          "stream": False}, waiting)
        wait_until(lambda: tiny_engine.worker.queue_length == 1)
        started = time.monotonic()
        version = get(f"{tiny_url}/api/version")  # the event loop is free while requests wait
        assert version.status_code == 200 and time.monotonic() - started < 2
        busy = post(f"{tiny_url}/api/generate", json={"model": TINY_LLAMA, "prompt": "hi"})
        assert busy.status_code == 503
        assert busy.json()["error"].startswith("server busy, please try again. maximum pending requests exceeded")
        with pytest.raises(ollama.ResponseError) as info:
            ollama.Client(host=tiny_url).chat(model=TINY_LLAMA, messages=HI)
        assert info.value.status_code == 503
    thread.join(30)
    assert waiting[0].status_code == 200 and waiting[0].json()["done"] is True  # the queued one still ran


def _raw_request(url: str, path: str, body: dict[str, Any]) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    payload = json.dumps(body).encode()
    sock.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    return sock


def test_disconnect_cancels_a_queued_request(tiny_url: str, tiny_engine: Engine) -> None:
    """A client that gives up while its request waits in the queue takes the request out of the queue."""
    before = tiny_engine.worker.stats()
    with device_held(tiny_engine):
        sock = _raw_request(tiny_url, "/api/chat", {"model": TINY_LLAMA, "messages": HI, "options": FIXED})
        wait_until(lambda: tiny_engine.worker.queue_length == 1)
        sock.close()
        wait_until(lambda: tiny_engine.worker.queue_length == 0, timeout=5)
        after = tiny_engine.worker.stats()
        assert after.cancelled == before.cancelled + 1 and after.completed == before.completed
    # the device job above completed; the cancelled request never ran
    assert tiny_engine.worker.stats().completed == before.completed + 1


# ---- errors after the stream started: Ollama's last {"error"} line -------------------------------------------

class FailingEngine:
    """Streams one chunk, then fails: what a device fault in the middle of a generation looks like."""

    def _chunks(self, key: str, text: str) -> AsyncIterator[dict[str, Any]]:
        async def chunks() -> AsyncIterator[dict[str, Any]]:
            yield {"model": "m", "created_at": "2024-01-01T00:00:00Z", key: text, "done": False}
            raise EngineError("the device stopped answering")

        return chunks()

    def achat(self, request: Any) -> AsyncIterator[dict[str, Any]]:
        return self._chunks("message", {"role": "assistant", "content": "Hel"})  # type: ignore[arg-type]

    def agenerate(self, request: Any) -> AsyncIterator[dict[str, Any]]:
        return self._chunks("response", "Hel")


@pytest.fixture(scope="module")
def failing_url() -> Iterator[str]:
    with BackgroundServer(create_app(FailingEngine())) as url:  # type: ignore[arg-type]
        yield url


def test_mid_stream_error_line(failing_url: str) -> None:
    with httpx.stream("POST", f"{failing_url}/api/chat", json={"model": "m", "messages": HI}) as answer:
        assert answer.status_code == 200  # the stream had started: the status stays 200
        lines = [json.loads(line) for line in answer.iter_lines() if line]
    assert lines[0]["message"]["content"] == "Hel"
    assert lines[-1] == {"error": "the device stopped answering"}
    client = ollama.Client(host=failing_url)
    parts = []
    with pytest.raises(ollama.ResponseError) as info:
        for part in client.generate(model="m", prompt="hi", stream=True):
            parts.append(part.response)
    assert parts == ["Hel"] and info.value.error == "the device stopped answering"
    assert info.value.status_code == -1  # the python client's marker for an error inside a stream
    single = post(f"{failing_url}/api/chat", json={"model": "m", "messages": HI, "stream": False})
    assert (single.status_code, single.json()) == (500, {"error": "the device stopped answering"})


# ---- serve(): what `ax-llm serve` runs ------------------------------------------------------------------

def test_serve_in_a_process(tiny_twin: Callable[..., Any], tmp_path: Any) -> None:
    """serve() on the process's shared engine (configured from AX_LLM_*), until SIGINT ends it cleanly."""
    store = tmp_path / "store"
    (store / "tiny-llama").mkdir(parents=True)
    (store / "tiny-llama" / "0").symlink_to(tiny_twin("llama"), target_is_directory=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "AX_LLM_MODELS": str(store), "AX_LLM_BACKEND": "onnx"}
    code = f"from ax_llm_provider.server import serve; serve(port={port}, log_level='warning')"
    process = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if get(url).text == "Ollama is running":
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.poll() is None, process.stderr.read()  # type: ignore[union-attr]
                time.sleep(0.1)
        answer = ollama.Client(host=url).chat(model=TINY_LLAMA, messages=HI, options=FIXED)
        assert answer.done and answer.eval_count
    finally:
        process.send_signal(signal.SIGINT)
        try:
            assert process.wait(timeout=20) == 0
        finally:
            process.kill()


def test_cors_and_unknown_paths(tiny_url: str) -> None:
    """As Ollama: browser pages on this machine may call the API, other origins get no CORS grant."""
    local = get(f"{tiny_url}/api/version", headers={"Origin": "http://localhost:3000"})
    assert local.headers["access-control-allow-origin"] == "http://localhost:3000"
    preflight = httpx.options(f"{tiny_url}/api/chat", headers={
        "Origin": "http://127.0.0.1:8080", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert preflight.status_code == 200 and "POST" in preflight.headers["access-control-allow-methods"]
    foreign = get(f"{tiny_url}/api/version", headers={"Origin": "https://example.com"})
    assert "access-control-allow-origin" not in foreign.headers
    missing = get(f"{tiny_url}/api/nothing")
    assert (missing.status_code, missing.text) == (404, "404 page not found")


def test_closing_a_response_that_never_started_cancels_its_request(tiny_engine: Engine) -> None:
    """The client can be gone before the first chunk was ever asked for: closing still frees the queue."""
    from ax_llm_provider.ollama.merge import merge_chat
    from ax_llm_provider.server.streaming import EngineStreamResponse

    before = tiny_engine.worker.stats()
    with device_held(tiny_engine):
        response = EngineStreamResponse(tiny_engine.achat({"model": TINY_LLAMA, "messages": HI}), stream=True,
                                        merge=merge_chat)
        assert tiny_engine.worker.queue_length == 1
        asyncio.run(response._close())
        assert tiny_engine.worker.queue_length == 0
    assert tiny_engine.worker.stats().cancelled == before.cancelled + 1
