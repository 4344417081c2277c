"""LangChain integration: drop-in replacements for langchain-ollama's classes (extra `langchain`).

    from ax_llm_provider.integrations.langchain import ChatAXOllama, AXOllamaLLM, AXOllamaEmbeddings

| langchain-ollama   | ax_llm_provider      | Ollama endpoint it mirrors |
|--------------------|----------------------|----------------------------|
| `ChatOllama`       | `ChatAXOllama`       | /api/chat                  |
| `OllamaLLM`        | `AXOllamaLLM`        | /api/generate              |
| `OllamaEmbeddings` | `AXOllamaEmbeddings` | /api/embed                 |

They run the model in this process through the shared engine (`ax_llm_provider.get_engine()`), or
the one passed as `engine=`; `base_url` and `*client_kwargs` are accepted and ignored.
"""

from __future__ import annotations

from .langchain_chat import ChatAXOllama
from .langchain_embeddings import AXOllamaEmbeddings
from .langchain_llm import AXOllamaLLM

__all__ = ["AXOllamaEmbeddings", "AXOllamaLLM", "ChatAXOllama"]
