"""Child of test_status_channel.py: runs one `ax-llm` command and counts every way it could open a card.

    python card_probe_child.py COUNTS_JSON ax-llm-args...

Counts simulated cards created, `set_device` calls on any of them, AXCL runtimes set up, pyaxcl imports
and device-property reads (each of which opens the device on hardware), then writes them with the exit
code to COUNTS_JSON. Whether or not the simulated card refuses a second process, a command that reads the
owner's status channel must leave every count at zero.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

from ax_llm_provider.runtime import axcl_device, axcl_props
from ax_llm_provider.runtime.simcard import api_device, card

opened: Counter[str] = Counter()


def counting(owner: Any, name: str, key: str) -> None:
    original: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        opened[key] += 1
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


counting(card.SimCard, "__init__", "simcards")
counting(api_device.DeviceApi, "set_device", "set_device")
counting(axcl_device.AxclRuntime, "__init__", "runtimes")
counting(axcl_device, "import_axcl", "import_axcl")
counting(axcl_props, "get_device_properties", "device_properties")


def main(counts: str, argv: list[str]) -> int:
    from ax_llm_provider.cli import main as cli

    code = cli(argv)
    with open(counts, "w", encoding="utf-8") as out:
        json.dump({"exit": code, "opened": dict(opened)}, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
