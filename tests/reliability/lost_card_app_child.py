"""Child of test_installation_app.py: deploy/installation_app.py on a simulated card that is lost after the preload.

    python lost_card_app_child.py APP_ARGS...

Once the app's preload has finished, every execute on the card fails and so does every model load: the
recovery ladder can reset and reboot the card, but never load the model again. The app must then speak its
fallback line and exit with status 3 (what systemd restarts), not answer every prompt with the fallback.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import Any

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.runtime import simcard

APP = Path(__file__).resolve().parents[2] / "deploy" / "installation_app.py"
cards: list[simcard.SimCard] = []


class RecordedCard(simcard.SimCard):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cards.append(self)


preload = Engine.load


def load_then_lose_the_card(self: Engine, model: str, keep_alive: float | str | None = None) -> None:
    preload(self, model, keep_alive)
    for card in cards:
        card.faults.fail_execute(after=0, times=-1)
        card.faults.fail_load(after=0, times=-1)


simcard.SimCard = RecordedCard  # type: ignore[misc]  # the engine creates its card from this name
Engine.load = load_then_lose_the_card  # type: ignore[method-assign]
sys.argv = [str(APP), *sys.argv[1:]]
runpy.run_path(str(APP), run_name="__main__")
