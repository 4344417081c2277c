"""The one error type of the converter; its message always says what to do next."""

from __future__ import annotations


class ConversionError(ValueError):
    """A checkpoint cannot be converted to a CPU twin (unknown architecture, missing tensor, ...)."""
