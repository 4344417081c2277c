"""Errors about model directories and names. Each message names the file and what to do."""

from __future__ import annotations


class ModelError(ValueError):
    """Base class for model problems the user can fix."""

    status_code = 400  # the HTTP status Ollama answers


class ModelDirectoryError(ModelError):
    """A model directory is incomplete or damaged."""


class ModelNotFoundError(ModelError):
    """No model of that name in the store."""

    status_code = 404

class ModelTooLargeError(ModelError):
    """A model whose weights exceed the card's whole CMM pool: it cannot load even on an empty card."""

    status_code = 500  # Ollama answers "model requires more system memory" with 500


class ModelDamagedError(ModelDirectoryError):
    """Files of a model differ from the checksums recorded when it was written (model/checksums.py).

    `problems` maps each damaged or missing file (relative to the model directory) to what is wrong with it.
    """

    def __init__(self, message: str, problems: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.problems = dict(problems or {})
