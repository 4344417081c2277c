"""The largest prompt text worth tokenizing, checked before the tokenizer sees it.

Tokenizing costs about 100x the text in memory (a 20 MB prompt peaked at 3 GB), and a prompt far
longer than the model's window is refused or truncated afterwards anyway. So text above
`window x BYTES_PER_TOKEN` is refused up front with a 400. 64 bytes a token is generous: real text
averages 3-5 bytes a token, so a truncating chat may still send ~15 windows of history.
`AX_LLM_MAX_PROMPT_BYTES` (the installation app's inbox cap too) sets one limit for every model.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from .errors import InvalidRequestError

MAX_PROMPT_ENV = "AX_LLM_MAX_PROMPT_BYTES"
BYTES_PER_TOKEN = 64


def prompt_byte_limit(window: int) -> int:
    """AX_LLM_MAX_PROMPT_BYTES when set, else the model's window x BYTES_PER_TOKEN."""
    value = os.environ.get(MAX_PROMPT_ENV, "").strip()
    if not value:
        return window * BYTES_PER_TOKEN
    try:
        limit = int(value)
    except ValueError:
        raise InvalidRequestError(f"{MAX_PROMPT_ENV}={value!r} is not a number of bytes; "
                                  "set a positive integer") from None
    if limit <= 0:
        raise InvalidRequestError(f"{MAX_PROMPT_ENV}={value!r} must be a positive number of bytes")
    return limit


def check_prompt_size(texts: Iterable[str | None], limit: int, window: int) -> None:
    """Raise a 400 when the texts together exceed `limit` UTF-8 bytes."""
    total = 0
    for text in texts:
        if not text:
            continue
        # ASCII needs no encoded copy; lone surrogates count as the 3 bytes they would take.
        total += len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        if total > limit:
            raise InvalidRequestError(
                f"the prompt is over {limit} bytes, far longer than the context length of {window} tokens can hold; "
                f"shorten it (or raise {MAX_PROMPT_ENV})")


__all__ = ["BYTES_PER_TOKEN", "MAX_PROMPT_ENV", "check_prompt_size", "prompt_byte_limit"]
