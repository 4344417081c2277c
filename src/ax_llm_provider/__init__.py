"""ax-llm-provider: LLMs on the AXERA AX650N NPU, in process, with Ollama's schema.

    from ax_llm_provider import chat             # instead of: from ollama import chat
    chat(model="smollm2:135m", messages=[{"role": "user", "content": "Hi"}])

    from ax_llm_provider import Client          # instead of: from ollama import Client
    from ax_llm_provider import ChatAXOllama    # instead of: from langchain_ollama import ChatOllama

Everything is imported on first use: `import ax_llm_provider` stays cheap and works without the
optional frameworks (extras `langchain`, `llamaindex`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# ollama's module-level functions, bound to one process-wide Client (ollama/__init__.py default_client).
MODULE_FUNCTIONS = ("chat", "generate", "embed", "embeddings", "list", "show", "ps", "pull", "push", "create",
                    "delete", "copy")
# ollama's public types, re-exported so `from ollama import X` becomes `from ax_llm_provider import X`.
OLLAMA_TYPES = ("EmbedResponse", "EmbeddingsResponse", "Image", "ListResponse", "Message", "Options",
                "ProcessResponse", "ProgressResponse", "RequestError", "ResponseError", "ShowResponse",
                "StatusResponse", "Tool")
# The framework drop-ins: (module under integrations, the extra that installs the framework).
FRAMEWORK_CLASSES = {
    "ChatAXOllama": ("langchain", "langchain"), "AXOllamaLLM": ("langchain", "langchain"),
    "AXOllamaEmbeddings": ("langchain", "langchain"),
    "AXOllama": ("llamaindex", "llamaindex"), "AXOllamaEmbedding": ("llamaindex", "llamaindex"),
}
_FRAMEWORK_PACKAGES = {"langchain": ("langchain_core", "LangChain"), "llamaindex": ("llama_index", "LlamaIndex")}

__all__ = ["AsyncClient", "ChatResponse", "Client", "Engine", "GenerateResponse", "get_engine", "__version__",
           *MODULE_FUNCTIONS, *OLLAMA_TYPES, *FRAMEWORK_CLASSES]

if TYPE_CHECKING:
    from .engine.default import get_engine
    from .engine.engine import Engine
    from .ollama import AsyncClient, Client
    from .ollama.types import ChatResponse, GenerateResponse


def _framework_class(name: str) -> Any:
    import importlib

    module, extra = FRAMEWORK_CLASSES[name]
    package, framework = _FRAMEWORK_PACKAGES[module]
    try:
        adapters = importlib.import_module(f"{__name__}.integrations.{module}")
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != package:
            raise
        raise ImportError(f"{name} needs {framework}, which is not installed: "
                          f'pip install "ax-llm-provider[{extra}]"') from exc
    return getattr(adapters, name)


def __getattr__(name: str) -> Any:
    # Lazy: `import ax_llm_provider` stays cheap and works without optional dependencies.
    if name in ("Client", "AsyncClient"):
        from . import ollama as _ollama

        return getattr(_ollama, name)
    if name in MODULE_FUNCTIONS:
        from .ollama import default_client

        return getattr(default_client(), name)
    if name in ("ChatResponse", "GenerateResponse"):
        from .ollama import types

        return getattr(types, name)
    if name in OLLAMA_TYPES:
        import ollama

        return getattr(ollama, name)
    if name in FRAMEWORK_CLASSES:
        return _framework_class(name)
    if name == "Engine":
        from .engine.engine import Engine

        return Engine
    if name == "get_engine":
        from .engine.default import get_engine

        return get_engine
    raise AttributeError(f"module 'ax_llm_provider' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
