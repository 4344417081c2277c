"""Child process of test_serve_service.py: `serve()` over an engine on a simulated card whose executes take their
simulated time (sleep=True), so a generation is still streaming when the parent sends SIGTERM.

    python serve_child.py STORE_DIR MODEL PORT GRACE_S

Logs (plain text, INFO) on stderr; exits with serve()'s status.
"""

from __future__ import annotations

import sys

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.engine.ops.health import HealthConfig
from ax_llm_provider.model.store import ModelStore
from ax_llm_provider.observability import configure_logging
from ax_llm_provider.runtime.simcard import SimCard
from ax_llm_provider.server import serve


def main(store: str, model: str, port: str, grace: str) -> int:
    configure_logging("INFO", json_format=False)
    engine = Engine(ModelStore(store), backend="simulated", card=SimCard("qwen2.5-0.5b-w4a16", sleep=True),
                    auto_pull=False, health=HealthConfig(period_s=0.2))
    engine.load(model)
    return serve(port=int(port), engine=engine, grace_s=float(grace), log_level="info")


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
