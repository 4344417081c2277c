"""ax-llm-provider: LLMs on the AXERA AX650N NPU, in process, with Ollama's schema."""

from __future__ import annotations

__version__ = "0.1.0"
