"""An `ollama`-compatible Client and AsyncClient over the in-process engine."""

from .client import AsyncClient, Client

__all__ = ["AsyncClient", "Client"]
