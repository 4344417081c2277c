"""Child process of test_sigterm.py: an engine on a simulated card whose load is slowed (sleeps per file).

    python sigterm_child.py MODEL_DIR STORE_DIR MODE MARKER      MODE: load | generate | idle

Prints "loading", "loaded", "generating" on stdout as it goes; logs (plain text, INFO) on stderr. At exit,
after the engine's finalizer, writes the card's state to MARKER as JSON (what the parent checks).
"""

from __future__ import annotations

import atexit
import json
import sys
import time
from typing import Any

from ax_llm_provider import process as lifecycle
from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.engine.ops.health import HealthConfig
from ax_llm_provider.model.store import ModelStore
from ax_llm_provider.observability import configure_logging
from ax_llm_provider.runtime.simcard import SimCard

LOAD_SECONDS_PER_FILE = 0.7


def main(model: str, store: str, mode: str, marker: str) -> None:
    card = SimCard(sleep=True)  # decode and prefill take their simulated time for real
    load = card.rt.engine_load_from_file

    def slow_load(path: str) -> Any:
        time.sleep(LOAD_SECONDS_PER_FILE)
        return load(path)

    card.rt.engine_load_from_file = slow_load  # type: ignore[method-assign]

    def write_marker() -> None:  # registered first, so it runs after the engine's finalizer
        state = {"memory_used": card.memory.used, "models": len(card.models), "inited": card.inited,
                 "finalize_calls": card.counters.calls["finalize"],
                 "loads": card.counters.calls["engine_load_from_file"],
                 "executes": card.counters.executes}
        with open(marker, "w", encoding="utf-8") as out:
            json.dump(state, out)

    atexit.register(write_marker)
    configure_logging("INFO", json_format=False)
    engine = Engine(ModelStore(store), backend="simulated", card=card, auto_pull=False,
                    health=HealthConfig(period_s=0.2))
    lifecycle.install(engine)
    print("loading", flush=True)
    engine.load(model)
    print("loaded", flush=True)
    while mode == "generate":  # one long generation after another (a random tiny model may stop early)
        print("generating", flush=True)
        for _chunk in engine.chat({"model": model, "messages": [{"role": "user", "content": "tell me everything"}],
                                   "options": {"num_predict": 100_000, "temperature": 0.9}, "stream": True}):
            pass
    time.sleep(120)  # idle until a signal arrives


if __name__ == "__main__":
    main(*sys.argv[1:5])
