#!/usr/bin/env python3
"""Example installation app: what deploy/ax-llm.service runs. Copy it and put your own logic in `respond`.

In the order an unattended installation needs (docs/deployment.md):
1. structured logs (JSON lines for journald) and, optionally, Prometheus metrics;
2. one Engine that owns the card (single-owner lock; SIGTERM/SIGINT/atexit finalize it, never mid-load);
3. preload the model (keep_alive forever), then READY=1 to systemd (TimeoutStartSec covers the load);
   the engine's health thread sends WATCHDOG=1 while the card answers;
4. serve prompts from a source (installation_io.py, next to this file): stdin lines, or text files dropped
   into a directory (`dir:PATH`: each
   `*.txt` is answered in `PATH/replies/` and moved to `PATH/done/`; an entry that is not a regular
   UTF-8 text file of at most --max-prompt-bytes is moved to `PATH/rejected/` with a logged reason, so
   no inbox entry can stop the app; an optional `PATH/partial.txt`, rewritten by speech recognition while
   the visitor speaks, is evaluated ahead with num_predict 0 so the prompt that follows prefills only the
   rest), through a LangChain chain
   (ChatAXOllama, the installation's options, the conversation resent whole every turn) when
   langchain-core is installed, else the in-process Client;
   with `--sentences`, each sentence of a reply is handed out as soon as it is complete (stdout: one line
   each, an empty line ends the reply; dir: appended to `replies/<name>.sentences`), for a speech engine;
5. idle prefill on (AX_LLM_IDLE_PREFILL=0 turns it off): after each reply the engine evaluates the next
   prompt's known start (end of turn, user header) while the visitor listens;
6. any error becomes the spoken fallback line (a clear, fast error beats a hang); DeviceFatalError (the
   card could not be recovered: an execute or a load that reset, reboot and reload did not heal) exits
   with status 3 so systemd restarts the service.

    python deploy/installation_app.py --model qwen2.5:0.5b --source stdin
    AX_LLM_BACKEND=simulated python deploy/installation_app.py --model /path/to/twin   # no card needed
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling module, also when loaded by path

from installation_io import (  # noqa: E402 -- after the path above
    MAX_PROMPT_BYTES,
    PARTIAL_NAME,
    History,
    PartialInbox,
    Prefill,
    SentenceSink,
    directory_sentence_sink,
    directory_sink,
    directory_source,
    stdin_source,
    stdout_reply_end,
    stdout_sentence_sink,
    stdout_sink,
)

from ax_llm_provider import process as lifecycle
from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.engine.ops.health import HealthConfig
from ax_llm_provider.engine.ops.recovery import DeviceFatalError
from ax_llm_provider.model.durable import clean_stale_partials
from ax_llm_provider.model.store import ModelStore
from ax_llm_provider.observability import configure_logging, start_metrics_server
from ax_llm_provider.sentences import SentenceSplitter, chunk_text

log = logging.getLogger("installation")
EXIT_OK, EXIT_PRELOAD_FAILED, EXIT_FATAL = 0, 1, 3
# The installation's request pattern (docs/sdk-notes.md, "Field lessons used by the deployment files").
OPTIONS: dict[str, Any] = {"num_predict": 100, "temperature": 0.99, "top_k": 85, "top_p": 0.9,
                           "repeat_penalty": 1.5, "repeat_last_n": 64, "stop": ["#", "["]}
SYSTEM = "You are the voice of an art installation. Answer the visitor in one or two short sentences."
FALLBACK = "Hmm, my thoughts drifted away for a moment. Ask me again?"
Respond = Callable[..., str]  # (history, text, on_sentence=None) -> the whole reply


def speak_as_formed(chunks: Iterator[Any], on_sentence: Callable[[str], None] | None) -> str:
    """Join a reply stream, handing each sentence to on_sentence the moment it is complete."""
    splitter, parts = SentenceSplitter(), []
    for chunk in chunks:
        text = chunk_text(chunk)
        parts.append(text)
        for sentence in splitter.feed(text) if on_sentence else ():
            on_sentence(sentence)
    for sentence in splitter.flush() if on_sentence else ():
        on_sentence(sentence)
    return "".join(parts)


# ---- responding -----------------------------------------------------------------------------------------


def langchain_responder(engine: Engine, model: str, system: str, options: dict[str, Any]) -> Respond:
    """prompt | ChatAXOllama | StrOutputParser, with the history as a messages placeholder."""
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder

    from ax_llm_provider.integrations.langchain import ChatAXOllama

    llm = ChatAXOllama(model=model, engine=engine, keep_alive=-1, reasoning=False, **options)
    prompt = ChatPromptTemplate.from_messages([("system", system.replace("{", "{{").replace("}", "}}")),
                                               MessagesPlaceholder("history"), ("human", "{input}")])
    chain = prompt | llm | StrOutputParser()
    return lambda history, text, on_sentence=None: speak_as_formed(
        chain.stream({"history": history, "input": text}), on_sentence)


def client_responder(engine: Engine, model: str, system: str, options: dict[str, Any]) -> Respond:
    """The same with the in-process ollama-style Client (when langchain-core is not installed)."""
    from ax_llm_provider import Client

    client = Client(engine=engine)

    def respond(history: History, text: str, on_sentence: Callable[[str], None] | None = None) -> str:
        stream = client.chat(model=model, messages=chat_messages(system, history, text), options=options,
                             keep_alive=-1, think=False, stream=True)
        return speak_as_formed(stream, on_sentence)

    return respond


def chat_messages(system: str, history: History, text: str) -> list[dict[str, str]]:
    """The messages both responders send (the LangChain prompt renders the same roles and contents)."""
    messages = [{"role": "system", "content": system}]
    messages += [{"role": "user" if role == "human" else "assistant", "content": said} for role, said in history]
    return [*messages, {"role": "user", "content": text}]


def client_prefiller(engine: Engine, model: str, system: str, options: dict[str, Any]) -> Prefill:
    """Evaluate the conversation and the words heard so far into the prefix cache (num_predict 0)."""
    from ax_llm_provider import Client

    client = Client(engine=engine)

    def prefill(history: History, text: str) -> None:
        client.chat(model=model, messages=chat_messages(system, history, text),
                    options={**options, "num_predict": 0}, keep_alive=-1, think=False)

    return prefill


def make_responder(engine: Engine, model: str, system: str, options: dict[str, Any]) -> Respond:
    try:
        return langchain_responder(engine, model, system, options)
    except ImportError:
        log.info("langchain-core is not installed: using the in-process Client")
        return client_responder(engine, model, system, options)


def is_fatal(exc: BaseException | None, engine: Engine) -> bool:
    seen = 0
    while exc is not None and seen < 10:  # the chain wraps engine errors in ollama.ResponseError
        if isinstance(exc, DeviceFatalError):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return engine.health().state == "failed"


# ---- the loop ----------------------------------------------------------------------------------------------


def serve(engine: Engine, respond: Respond, source: Iterator[tuple[str, str]], sink: Callable[[str, str], None],
          fallback: str = FALLBACK, history_turns: int = 10, sentence_sink: SentenceSink | None = None,
          history: History | None = None) -> int:
    """Answer every prompt; errors become `fallback`; returns the exit status (EXIT_FATAL when the card is lost).

    sentence_sink: gets each sentence of a reply as soon as it is complete (--sentences). history: the
    conversation list to keep (shared with a PartialInbox); the model's own words are kept unstripped, so the
    next prompt starts with the tokens the engine already evaluated."""
    history = [] if history is None else history
    served = failed = 0
    for name, text in source:
        started = time.monotonic()
        try:
            if sentence_sink is None:  # a responder need not know about sentences unless they are asked for
                said = respond(history, text)
            else:
                said = respond(history, text, on_sentence=lambda s, name=name: sentence_sink(name, s))
            reply = said.strip() or fallback
            history += [("human", text), ("ai", said if said.strip() else reply)]
            del history[:-2 * history_turns]
            served += 1
        except Exception as exc:  # noqa: BLE001 -- every failure is spoken as the fallback line
            failed += 1
            log.error("prompt %s failed after %.1f s: %s: %s", name, time.monotonic() - started,
                      type(exc).__name__, exc)
            sink(name, fallback)
            if is_fatal(exc, engine):
                log.critical("the NPU card is lost: exiting so systemd restarts the service")
                return EXIT_FATAL
            continue
        sink(name, reply)
        log.info("prompt %s answered in %.2f s", name, time.monotonic() - started)
        lifecycle.sd_notify(f"STATUS=served {served} prompts, {failed} fallbacks")
    return EXIT_OK


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=env("AX_LLM_MODEL", "smollm2:135m"))
    parser.add_argument("--backend", default=env("AX_LLM_BACKEND", "auto"))
    parser.add_argument("--store", default=env("AX_LLM_MODELS"))
    parser.add_argument("--source", default=env("AX_LLM_SOURCE", "stdin"), help="stdin or dir:PATH")
    parser.add_argument("--system", default=env("AX_LLM_SYSTEM", SYSTEM))
    parser.add_argument("--fallback", default=env("AX_LLM_FALLBACK", FALLBACK))
    parser.add_argument("--max-prompt-bytes", type=int,
                        default=int(env("AX_LLM_MAX_PROMPT_BYTES", str(MAX_PROMPT_BYTES))),
                        help="longer prompts (files or stdin lines) are refused")
    parser.add_argument("--history", type=int, default=int(env("AX_LLM_HISTORY", "10")), help="turns kept")
    parser.add_argument("--options", default=env("AX_LLM_OPTIONS", ""), help="JSON merged over the defaults")
    parser.add_argument("--request-timeout", type=float, default=float(env("AX_LLM_REQUEST_TIMEOUT", "20")))
    parser.add_argument("--sentences", action="store_true", default=env("AX_LLM_SENTENCES", "0") == "1",
                        help="hand out each sentence as soon as it is complete (for a speech engine)")
    parser.add_argument("--metrics-port", type=int, default=int(env("AX_LLM_METRICS_PORT", "0")))
    parser.add_argument("--text-logs", action="store_true", default=env("AX_LLM_LOG_JSON", "1") == "0")
    parser.add_argument("--log-level", default=env("AX_LLM_LOG_LEVEL", "INFO"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level, json_format=not args.text_logs)
    if args.metrics_port:
        start_metrics_server(args.metrics_port)
    options = {**OPTIONS, **(json.loads(args.options) if args.options else {})}
    clean_stale_partials(ModelStore(args.store).root)  # what a crash or power cut left in the store
    engine = Engine(args.store, backend=args.backend, keep_alive=-1, request_timeout=args.request_timeout,
                    health=HealthConfig.from_env(), idle_prefill=os.environ.get("AX_LLM_IDLE_PREFILL", "1") != "0")
    lifecycle.install(engine)  # SIGTERM/SIGINT: finish a load, cancel the generation, finalize, exit 0
    lifecycle.sd_notify(f"STATUS=loading {args.model}")
    try:
        engine.load(args.model, keep_alive=-1)
    except Exception as exc:  # noqa: BLE001 -- any preload failure: exit, systemd retries after RestartSec
        log.critical("preloading %s failed: %s: %s", args.model, type(exc).__name__, exc)
        return EXIT_FATAL if is_fatal(exc, engine) else EXIT_PRELOAD_FAILED
    respond = make_responder(engine, args.model, args.system, options)
    history: History = []
    if args.source.startswith("dir:"):
        root = Path(args.source[4:])
        partial = PartialInbox(root / PARTIAL_NAME, client_prefiller(engine, args.model, args.system, options),
                               history, args.max_prompt_bytes)
        source = directory_source(root, max_bytes=args.max_prompt_bytes, partial=partial)
        sink = directory_sink(root)
        sentence_sink = directory_sentence_sink(root) if args.sentences else None
    else:
        source, sink = stdin_source(args.max_prompt_bytes), stdout_reply_end if args.sentences else stdout_sink
        sentence_sink = stdout_sentence_sink if args.sentences else None
    lifecycle.notify_ready(f"serving {args.model}")
    log.info("ready: serving %s from %s (health: %s)", args.model, args.source, engine.health().state)
    return serve(engine, respond, source, sink, args.fallback, args.history, sentence_sink, history=history)


if __name__ == "__main__":
    sys.exit(main())
