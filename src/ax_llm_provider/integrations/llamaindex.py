"""LlamaIndex adapters: drop-in replacements for llama-index-llms-ollama and llama-index-embeddings-ollama.

    from ax_llm_provider.integrations.llamaindex import AXOllama, AXOllamaEmbedding

    llm = AXOllama(model="smollm2:135m", temperature=0)          # was: Ollama(model=..., base_url=...)
    embed_model = AXOllamaEmbedding(model_name="all-minilm:l6-v2")  # was: OllamaEmbedding(...)
    index = VectorStoreIndex.from_documents(docs, embed_model=embed_model)
    index.as_query_engine(llm=llm).query("...")

Both run in this process on the shared Engine (`engine=` to pass another); no Ollama server, no HTTP.
Needs the `llamaindex` extra (llama-index-core); llama-index-llms-ollama is not required.
See llamaindex_llm.py and llamaindex_embeddings.py for the differences from the reference classes.
"""

from __future__ import annotations

from .llamaindex_embeddings import AXOllamaEmbedding
from .llamaindex_llm import AXOllama, tool_choice_name

__all__ = ["AXOllama", "AXOllamaEmbedding", "tool_choice_name"]
