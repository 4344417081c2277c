"""The tokenizer arrays `show(verbose=True)` adds to `model_info`, read from the model's tokenizer.json.

Ollama fills `tokenizer.ggml.tokens`, `tokenizer.ggml.token_type` and `tokenizer.ggml.merges` from the
GGUF file when /api/show is asked for `verbose` (and sends them empty otherwise). Here the same arrays
come from the Hugging Face tokenizer.json every model directory carries: tokens in id order, GGUF's
token types (1 normal, 3 control, 4 user-defined) and the BPE merges as "left right" strings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

NORMAL, CONTROL, USER_DEFINED = 1, 3, 4
_GGML_MODEL = {"BPE": "gpt2", "WordPiece": "bert", "Unigram": "llama", "WordLevel": "word-level"}


def _tokenizer_file(model_dir: Path) -> Path | None:
    direct = model_dir / "tokenizer.json"
    if direct.is_file():
        return direct
    return next(iter(sorted(model_dir.rglob("tokenizer.json"))), None)


def tokenizer_arrays(model_dir: str | Path) -> dict[str, Any]:
    """`tokenizer.ggml.*` keys for `model_info`; empty when the directory has no tokenizer.json."""
    path = _tokenizer_file(Path(model_dir))
    if path is None:
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    vocab = model.get("vocab") or {}
    pairs = {token: index for index, (token, _score) in enumerate(vocab)} if isinstance(vocab, list) else dict(vocab)
    kinds: dict[int, int] = {}
    for added in data.get("added_tokens") or []:
        pairs[added["content"]] = added["id"]
        kinds[added["id"]] = CONTROL if added.get("special") else USER_DEFINED
    size = max(pairs.values(), default=-1) + 1
    tokens = [""] * size
    for token, index in pairs.items():
        tokens[index] = token
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    kind = str(model.get("type") or "")
    return {"tokenizer.ggml.model": _GGML_MODEL.get(kind, kind),
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": [kinds.get(i, NORMAL) for i in range(size)],
            "tokenizer.ggml.merges": merges}


def verbose_show(store: Any, model: str, shown: dict[str, Any]) -> dict[str, Any]:
    """`shown` (an /api/show body) with the tokenizer arrays of `model` (a stored or derived name) added."""
    from .derived import base_name

    path = store.resolve(base_name(store, model)).path
    return {**shown, "model_info": {**shown.get("model_info", {}), **tokenizer_arrays(path)}}
