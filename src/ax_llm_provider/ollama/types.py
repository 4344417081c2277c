"""The `ollama` package's response types, extended with the engine's extra metadata under `ax`.

They subclass ollama's own classes, so isinstance checks and attribute access written for `ollama`
keep working.
"""

from __future__ import annotations

from typing import Any

import ollama


class ChatResponse(ollama.ChatResponse):
    ax: dict[str, Any] | None = None
    "Prefix-cache reuse, truncation report, backend and option warnings (final response only)."


class GenerateResponse(ollama.GenerateResponse):
    ax: dict[str, Any] | None = None
