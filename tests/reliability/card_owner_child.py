"""Child of test_status_channel.py: holds the simulated card (card lock taken) and serves requests.

    python card_owner_child.py MODEL_DIR STORE_DIR

Prints "ready" once the model is loaded, then answers a chat request after another (as a service would)
until its stdin closes; then closes the engine and exits 0. AX_LLM_LOCK_DIR / AX_LLM_STATUS_PERIOD /
AX_LLM_HEALTH_PERIOD come from the parent.
"""

from __future__ import annotations

import sys
import threading

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.model.store import ModelStore

REQUEST = {"messages": [{"role": "user", "content": "hello"}], "options": {"num_predict": 2, "temperature": 0}}


def main(model: str, store: str) -> None:
    engine = Engine(ModelStore(store), backend="simulated", device_lock=True, auto_pull=False)
    list(engine.chat({"model": model, **REQUEST}))
    print("ready", flush=True)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            list(engine.chat({"model": model, **REQUEST}))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    sys.stdin.read()  # the parent closes stdin to stop us
    stop.set()
    server.join(timeout=60)
    engine.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
