"""AXOllamaEmbedding: llama-index-embeddings-ollama's `OllamaEmbedding` on the engine's /api/embed.

    from ax_llm_provider.integrations.llamaindex import AXOllamaEmbedding
    embed_model = AXOllamaEmbedding(model_name="all-minilm:l6-v2")   # pulled on first use

Same fields and defaults as the reference (`model_name`, `base_url` (ignored), `embed_batch_size` 10,
`ollama_additional_kwargs` -> `options`, `query_instruction`/`text_instruction` prepended and stripped,
`keep_alive`, `client_kwargs` (ignored)), plus Ollama's `truncate` (default True: inputs longer than
the model's 256 tokens are cut; False: a 400 error) and `dimensions`. Vectors are L2-normalized, as
Ollama returns them. A batch is one engine call (LlamaIndex splits by `embed_batch_size`).
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.constants import DEFAULT_EMBED_BATCH_SIZE

from ..engine.engine import Engine
from ..ollama.errors import ollama_errors
from .llamaindex_common import call_engine, resolve_engine, shared_engine


class AXOllamaEmbedding(BaseEmbedding):
    """Drop-in replacement for `llama_index.embeddings.ollama.OllamaEmbedding` on the in-process engine."""

    base_url: str = Field(description="Accepted for compatibility and ignored: the model runs in this process.")
    model_name: str = Field(description="The embedding model to use (e.g. all-minilm:l6-v2).")
    embed_batch_size: int = Field(default=DEFAULT_EMBED_BATCH_SIZE, description="The batch size for embedding calls.",
                                  gt=0, le=2048)
    ollama_additional_kwargs: dict[str, Any] = Field(default_factory=dict,
                                                     description="Additional Ollama options (sent as `options`).")
    query_instruction: str | None = Field(default=None, description="Instruction to prepend to query text.")
    text_instruction: str | None = Field(default=None, description="Instruction to prepend to text.")
    keep_alive: float | str | None = Field(
        default="5m", description="How long the model stays loaded after a request (None: the engine default).")
    truncate: bool = Field(default=True, description="Cut inputs longer than the model's context (False: error).")
    dimensions: int | None = Field(default=None, gt=0, description="Keep the first n dimensions (re-normalized).")

    _engine: Engine | None = PrivateAttr(default=None)

    def __init__(self, model_name: str, base_url: str = "http://localhost:11434",
                 embed_batch_size: int = DEFAULT_EMBED_BATCH_SIZE,
                 ollama_additional_kwargs: dict[str, Any] | None = None, query_instruction: str | None = None,
                 text_instruction: str | None = None, callback_manager: CallbackManager | None = None,
                 client_kwargs: dict[str, Any] | None = None, keep_alive: float | str | None = None, *,
                 engine: Engine | None = None, client: Any = None, **kwargs: Any) -> None:
        fields: dict[str, Any] = {
            "model_name": model_name, "base_url": base_url, "embed_batch_size": embed_batch_size,
            "ollama_additional_kwargs": ollama_additional_kwargs or {}, "query_instruction": query_instruction,
            "text_instruction": text_instruction, "callback_manager": callback_manager, "keep_alive": keep_alive}
        super().__init__(**fields, **kwargs)
        # client_kwargs configured the removed HTTP client: accepted and ignored.
        self._engine = resolve_engine(engine, client, "AXOllamaEmbedding")

    @classmethod
    def class_name(cls) -> str:
        return "AXOllamaEmbedding"

    @property
    def engine(self) -> Engine:
        return shared_engine(self._engine)

    def _request(self, texts: str | list[str]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model_name, "input": texts, "truncate": self.truncate,
                                "options": self.ollama_additional_kwargs or None, "keep_alive": self.keep_alive,
                                "dimensions": self.dimensions}
        return {k: v for k, v in body.items() if v is not None}

    # ---- the reference's public helpers ---------------------------------------------------------

    def get_general_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        return call_engine(lambda: self.engine.embed(self._request(list(texts))))["embeddings"]

    async def aget_general_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        with ollama_errors():
            result = await self.engine.aembed(self._request(list(texts)))
        return result["embeddings"]

    def get_general_text_embedding(self, text: str) -> list[float]:
        return self.get_general_text_embeddings([text])[0]

    async def aget_general_text_embedding(self, prompt: str) -> list[float]:
        return (await self.aget_general_text_embeddings([prompt]))[0]

    # ---- BaseEmbedding ----------------------------------------------------------------------------

    def _format_query(self, query: str) -> str:
        if self.query_instruction:
            return f"{self.query_instruction.strip()} {query.strip()}".strip()
        return query.strip()

    def _format_text(self, text: str) -> str:
        if self.text_instruction:
            return f"{self.text_instruction.strip()} {text.strip()}".strip()
        return text.strip()

    def _get_query_embedding(self, query: str) -> list[float]:
        return self.get_general_text_embedding(self._format_query(query))

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await self.aget_general_text_embedding(self._format_query(query))

    def _get_text_embedding(self, text: str) -> list[float]:
        return self.get_general_text_embedding(self._format_text(text))

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await self.aget_general_text_embedding(self._format_text(text))

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self.get_general_text_embeddings([self._format_text(t) for t in texts])

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await self.aget_general_text_embeddings([self._format_text(t) for t in texts])
