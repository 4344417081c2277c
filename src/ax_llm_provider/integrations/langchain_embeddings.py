"""AXOllamaEmbeddings: langchain-ollama's OllamaEmbeddings (Ollama /api/embed) run in process.

    from ax_llm_provider.integrations.langchain import AXOllamaEmbeddings
    emb = AXOllamaEmbeddings(model="all-minilm:l6-v2")
    emb.embed_query("hello")        # L2-normalized, as Ollama returns them

One engine `embed` call per `embed_documents` (the whole list), like OllamaEmbeddings.
"""

from __future__ import annotations

from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from ..engine.engine import Engine
from ..ollama.errors import ollama_errors
from .langchain_common import EngineHolder

_OPTION_FIELDS = ("mirostat", "mirostat_eta", "mirostat_tau", "num_ctx", "num_gpu", "num_thread", "repeat_last_n",
                  "repeat_penalty", "temperature", "stop", "tfs_z", "top_k", "top_p")


class AXOllamaEmbeddings(EngineHolder, BaseModel, Embeddings):
    """Drop-in replacement for `langchain_ollama.OllamaEmbeddings` on the in-process AX engine."""

    model: str
    """Embedding model name (e.g. `all-minilm:l6-v2`)."""
    dimensions: int | None = None
    """Truncate vectors to this many dimensions (re-normalized), as Ollama's `dimensions`."""
    truncate: bool = True
    """Cut inputs longer than the model's context (False: error instead). Not in OllamaEmbeddings."""
    validate_model_on_init: bool = False
    """Check at construction that the model is in the store or pullable (no load, no network)."""
    keep_alive: int | str | None = None
    """How long the model stays loaded after a request."""
    base_url: str | None = None
    """Accepted for OllamaEmbeddings compatibility and ignored: the model runs in this process."""
    client_kwargs: dict | None = Field(default_factory=dict)
    """Accepted and ignored."""
    async_client_kwargs: dict | None = Field(default_factory=dict)
    """Accepted and ignored."""
    sync_client_kwargs: dict | None = Field(default_factory=dict)
    """Accepted and ignored."""
    # Generation options OllamaEmbeddings declares; embedding models ignore most of them.
    mirostat: int | None = None
    mirostat_eta: float | None = None
    mirostat_tau: float | None = None
    num_ctx: int | None = None
    num_gpu: int | None = None
    num_thread: int | None = None
    repeat_last_n: int | None = None
    repeat_penalty: float | None = None
    temperature: float | None = None
    stop: list[str] | None = None
    tfs_z: float | None = None
    top_k: int | None = None
    top_p: float | None = None

    model_config = ConfigDict(extra="forbid")

    _engine: Engine | None = PrivateAttr(default=None)

    def __init__(self, *args: Any, engine: Engine | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._attach_engine(engine)

    @field_validator("dimensions")
    @classmethod
    def _positive_dimensions(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("`dimensions` must be a positive integer.")
        return value

    def _embed_request(self, texts: list[str]) -> dict[str, Any]:
        options = {k: getattr(self, k) for k in _OPTION_FIELDS if getattr(self, k) is not None}
        request: dict[str, Any] = {"model": self.model, "input": list(texts), "truncate": self.truncate}
        optional = {"dimensions": self.dimensions, "keep_alive": self.keep_alive, "options": options or None}
        request.update({k: v for k, v in optional.items() if v is not None})
        return request

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order."""
        if not texts:
            return []
        with ollama_errors():
            result = self.engine.embed(self._embed_request(texts))
        return [list(map(float, vector)) for vector in result["embeddings"]]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        with ollama_errors():
            result = await self.engine.aembed(self._embed_request(texts))
        return [list(map(float, vector)) for vector in result["embeddings"]]

    async def aembed_query(self, text: str) -> list[float]:
        return (await self.aembed_documents([text]))[0]
