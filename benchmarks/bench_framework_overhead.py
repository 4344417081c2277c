"""Issue 6 benchmark: what LangChain costs per call, ChatAXOllama (in process) against ChatOllama (HTTP).

Zero-latency models on both sides, so only framework, client and transport are measured:
- ChatAXOllama.invoke over (a) a fake engine object whose `chat` yields the content chunk(s) and the
  final chunk instantly, and (b) a real `Engine` whose model runner is replaced by one that "generates"
  its chunk(s) instantly (request validation, chat template, context fit, scheduler thread hop and response
  parsing are real; SmolLM2's tokenizer is used, pulled on first use). Baseline: the raw engine call.
- langchain_ollama.ChatOllama.invoke talking to an Ollama-protocol stub server on 127.0.0.1
  (stdlib http.server in a thread) that answers /api/chat at once with the same chunks.
  Baseline: the raw `ollama.Client.chat` call over the same HTTP stub.
Same messages (an installation-like 10-message history), same options, same run; the variants are
called in turn so that load bursts on a shared machine hit all of them alike. Prints medians.

    python benchmarks/bench_framework_overhead.py [--calls 300] [--tokens 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import ollama
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_ollama import ChatOllama

from ax_llm_provider.integrations.langchain import ChatAXOllama
from ax_llm_provider.integrations.langchain_convert import messages_to_ollama

MODEL = "smollm2:135m"
OPTIONS = {"num_predict": 100, "temperature": 0.99, "top_k": 85, "top_p": 0.9, "repeat_penalty": 1.5,
           "repeat_last_n": 64, "stop": ["#", "["]}
TURNS = ["Hello lantern!", "Hi, I glow for you.", "What do you see?", "Stars and visitors.", "Tell me a secret.",
         "The night is kind.", "Are you alive?", "As alive as a flame.", "Goodbye!"]
MESSAGES: list[BaseMessage] = [SystemMessage("You are a talking lantern. Answer in one short sentence.")] + [
    (HumanMessage if i % 2 == 0 else AIMessage)(text) for i, text in enumerate(TURNS)]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


TOKENS = 1  # content chunks per answer (--tokens)


def answer_chunks(model: str) -> list[dict[str, Any]]:
    """TOKENS content chunks and the final chunk, as an instant model would stream them."""
    created = _now()
    return [
        *({"model": model, "created_at": created, "message": {"role": "assistant", "content": " Hello"},
           "done": False} for _ in range(TOKENS)),
        {"model": model, "created_at": _now(), "message": {"role": "assistant", "content": ""}, "done": True,
         "done_reason": "stop", "total_duration": 1000, "load_duration": 10, "prompt_eval_count": 60,
         "prompt_eval_duration": 500, "eval_count": TOKENS, "eval_duration": 400},
    ]


# ---- zero-latency engines ------------------------------------------------------------------------------

class InstantEngine:
    """An object with the Engine's `chat`: yields the answer chunks at once (no validation, no thread)."""

    def chat(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        return iter(answer_chunks(request["model"]))


def stub_runner_engine() -> tuple[Any, Callable[[], None]]:
    """A real Engine whose loaded model never touches a device: its runner yields its chunks instantly."""
    from _common import model_dir

    from ax_llm_provider.engine.engine import Engine
    from ax_llm_provider.engine.runner import ModelRunner, RunStats, RunStep
    from ax_llm_provider.engine.state import LoadedEntry
    from ax_llm_provider.model.tokenizer import ChatTokenizer

    directory = model_dir(MODEL)
    manifest = json.loads((directory / "ax_model.json").read_text())
    tokenizer = ChatTokenizer(directory / manifest.get("tokenizer_dir", "."), manifest.get("eos_token_ids", ()))
    spec = SimpleNamespace(decode_capacity=2048, vocab=manifest["vocab"], layers=manifest["layers"],
                           hidden=manifest["hidden"], prefill_chunk=128)
    stack = SimpleNamespace(spec=spec, close=lambda: None)
    model = SimpleNamespace(name=MODEL, tokenizer=tokenizer, stack=stack, backend="instant", close=lambda: None,
                            embeddings=None, context_length=2048)

    class InstantRunner(ModelRunner):
        def run(self, prompt: Any, opts: Any, cancel: Any, **kwargs: Any) -> Iterator[Any]:
            for _ in range(TOKENS):
                yield RunStep(" Hello")
            yield RunStep("", None, RunStats("stop", len(prompt), 0, 0, TOKENS, 0, list(prompt)))

    entry = LoadedEntry(runner=InstantRunner(model), path=directory)  # type: ignore[arg-type]

    class StubEngine(Engine):
        def _resolve(self, model: str) -> str:
            return MODEL

    engine = StubEngine(directory.parent.parent, backend="onnx", keep_alive=-1, auto_pull=False)
    engine.slots.ensure_loaded = lambda name: (entry, 0)  # type: ignore[method-assign]
    return engine, lambda: engine.close(timeout=5)


# ---- the Ollama-protocol stub server -------------------------------------------------------------------

class _OllamaStub(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx uses it
    disable_nagle_algorithm = True  # answer at once (no 40 ms delayed-ACK stall between header and body writes)

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        chunks = answer_chunks(body.get("model", MODEL))
        if body.get("stream", True):
            payload = "".join(json.dumps(c) + "\n" for c in chunks).encode()
            kind = "application/x-ndjson"
        else:
            payload, kind = json.dumps(chunks[-1] | {"message": chunks[0]["message"]}).encode(), "application/json"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


def start_stub() -> tuple[str, Callable[[], None]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OllamaStub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return f"http://127.0.0.1:{server.server_address[1]}", stop


# ---- measuring -----------------------------------------------------------------------------------------

def interleaved_medians_us(variants: dict[str, Callable[[], object]], calls: int, warmup: int = 20) -> dict[str, float]:
    """Median per-call time of each variant, calling them in turn so load bursts hit every variant alike."""
    times: dict[str, list[int]] = {name: [] for name in variants}
    for i in range(warmup + calls):
        for name, fn in variants.items():
            start = time.perf_counter_ns()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter_ns() - start)
    return {name: statistics.median(t) / 1000 for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300, help="timed calls per variant (after 20 warm-up calls)")
    parser.add_argument("--tokens", type=int, default=1, help="content chunks per answer (1: per-call cost; "
                        "100: the installation's reply length, adds the per-token cost)")
    args = parser.parse_args()
    global TOKENS
    TOKENS = max(args.tokens, 1)

    request = {"model": MODEL, "messages": messages_to_ollama(MESSAGES), "options": OPTIONS, "keep_alive": -1,
               "think": False}
    variants: dict[str, Callable[[], object]] = {}
    cleanups: list[Callable[[], None]] = []
    try:
        instant = InstantEngine()
        ax_fake = ChatAXOllama(model=MODEL, keep_alive=-1, reasoning=False, engine=instant, **OPTIONS)  # type: ignore[arg-type]
        variants["raw fake engine.chat"] = lambda: list(instant.chat(request))
        variants["ChatAXOllama.invoke (fake engine)"] = lambda: ax_fake.invoke(MESSAGES)
        try:
            stub_engine, close_engine = stub_runner_engine()
        except Exception as exc:  # noqa: BLE001 - the engine's internals moved: report, keep the other figures
            print(f"(stub-runner Engine variant skipped: {type(exc).__name__}: {exc})")
        else:
            cleanups.append(close_engine)
            ax_real = ChatAXOllama(model=MODEL, keep_alive=-1, reasoning=False, engine=stub_engine, **OPTIONS)  # type: ignore[arg-type]
            variants["raw Engine.chat (stub runner)"] = lambda: list(stub_engine.chat(request))
            variants["ChatAXOllama.invoke (stub runner)"] = lambda: ax_real.invoke(MESSAGES)
        url, stop_stub = start_stub()
        cleanups.append(stop_stub)
        client = ollama.Client(host=url)
        raw_messages = messages_to_ollama(MESSAGES)
        lc_ollama = ChatOllama(model=MODEL, base_url=url, keep_alive=-1, reasoning=False, **OPTIONS)  # type: ignore[arg-type]
        variants["raw ollama.Client.chat over HTTP stub"] = lambda: list(client.chat(
            model=MODEL, messages=raw_messages, options=OPTIONS, keep_alive=-1, think=False, stream=True))
        variants["ChatOllama.invoke over HTTP stub"] = lambda: lc_ollama.invoke(MESSAGES)
        results = interleaved_medians_us(variants, args.calls)
    finally:
        for cleanup in reversed(cleanups):
            cleanup()

    print(f"\nper-call medians over {args.calls} calls, {len(MESSAGES)} messages, {TOKENS} content chunk(s) per "
          "answer, zero-latency model")
    for name, value in results.items():
        print(f"  {name:<42} {value:9.1f} us")
    ax_over = results["ChatAXOllama.invoke (fake engine)"] - results["raw fake engine.chat"]
    lc_over = results["ChatOllama.invoke over HTTP stub"] - results["raw ollama.Client.chat over HTTP stub"]
    print(f"\n  ChatAXOllama overhead over the raw engine call   {ax_over:9.1f} us")
    if "ChatAXOllama.invoke (stub runner)" in results:
        real_over = results["ChatAXOllama.invoke (stub runner)"] - results["raw Engine.chat (stub runner)"]
        print(f"  ... over a real Engine (stub runner)            {real_over:9.1f} us")
    print(f"  ChatOllama overhead over the raw ollama client   {lc_over:9.1f} us")
    ax_call = results.get("ChatAXOllama.invoke (stub runner)", results["ChatAXOllama.invoke (fake engine)"])
    print("  per-call ratio ChatOllama(HTTP) / ChatAXOllama   "
          f"{results['ChatOllama.invoke over HTTP stub'] / ax_call:9.2f} x")


if __name__ == "__main__":
    main()
