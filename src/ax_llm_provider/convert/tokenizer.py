"""The `<arch>_tokenizer/` directory: rebuilt from GGUF vocabulary, or copied from a HF checkpoint.

Both end up loadable with `transformers.AutoTokenizer.from_pretrained(dir)` (a fast tokenizer with the
chat template in tokenizer_config.json).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from .errors import ConversionError

log = logging.getLogger(__name__)

# GGUF token_type values (llama.cpp `llama_token_type`).
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4

# llama.cpp pre-tokenizer names grouped by the split they perform (llama-vocab.cpp).
_GPT2_PRE = {"gpt2", "mpt", "olmo", "jais", "trillion", "granite-docling"}
# "\p{N}" first, then the GPT-2 regex: digits always stand alone.
_DIGITS_PRE = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}
_LLAMA3_PRE = {"llama3", "llama-bpe", "smaug-bpe", "falcon3", "pixtral"}
_QWEN2_PRE = {"qwen2", "stablelm2", "deepseek-r1-qwen", "megrez"}

_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Files a HF tokenizer directory may need; tokenizer.json is the one that matters.
HF_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)


@dataclass(frozen=True)
class GGUFVocab:
    """The tokenizer fields of a GGUF file."""

    model: str
    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    add_eos: bool
    chat_template: str | None
    max_length: int


def _pre_tokenizer(pre: str) -> tuple[pre_tokenizers.PreTokenizer, bool]:
    """(pre-tokenizer, ignore_merges) for a llama.cpp pre-tokenizer name."""
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _GPT2_PRE:
        return byte_level, False
    if pre in _DIGITS_PRE:
        digits = pre_tokenizers.Digits(individual_digits=True)
        return pre_tokenizers.Sequence([digits, byte_level]), False
    raw_bytes = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre in _LLAMA3_PRE:
        split = pre_tokenizers.Split(Regex(_LLAMA3_REGEX), behavior="isolated", invert=False)
        return pre_tokenizers.Sequence([split, raw_bytes]), True
    if pre in _QWEN2_PRE:
        split = pre_tokenizers.Split(Regex(_QWEN2_REGEX), behavior="isolated", invert=False)
        return pre_tokenizers.Sequence([split, raw_bytes]), False
    known = sorted(_GPT2_PRE | _DIGITS_PRE | _LLAMA3_PRE | _QWEN2_PRE)
    raise ConversionError(
        f"GGUF pre-tokenizer {pre!r} is not supported (known: {', '.join(known)}); convert the original "
        "Hugging Face checkpoint instead, its tokenizer.json is copied as is"
    )


def build_gguf_tokenizer(vocab: GGUFVocab) -> Tokenizer:
    """A byte-level BPE `tokenizers.Tokenizer` equivalent to llama.cpp's for this vocabulary."""
    if vocab.model != "gpt2":
        raise ConversionError(
            f"GGUF tokenizer model {vocab.model!r} is not supported, only byte-level BPE ('gpt2'); "
            "convert the Hugging Face checkpoint instead"
        )
    if len(vocab.token_types) not in (0, len(vocab.tokens)):
        raise ConversionError("GGUF token_type and tokens arrays differ in length; the file is corrupt")
    ids: dict[str, int] = {}
    for i, token in enumerate(vocab.tokens):
        if token in ids:
            log.warning("duplicate GGUF token %r at ids %d and %d; keeping the first", token, ids[token], i)
            continue
        ids[token] = i
    merges: list[tuple[str, str]] = []
    for merge in vocab.merges:
        left, sep, right = merge.partition(" ")
        if not sep:
            raise ConversionError(f"GGUF merge {merge!r} is not 'left right'; the file is corrupt")
        merges.append((left, right))
    pre, ignore_merges = _pre_tokenizer(vocab.pre)
    tok = Tokenizer(models.BPE(vocab=ids, merges=merges, fuse_unk=False, ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    types = vocab.token_types or [1] * len(vocab.tokens)
    special = [AddedToken(t, special=True, normalized=False) for t, k in zip(vocab.tokens, types, strict=True)
               if k == TOKEN_CONTROL]
    user = [AddedToken(t, special=False, normalized=False) for t, k in zip(vocab.tokens, types, strict=True)
            if k == TOKEN_USER_DEFINED]
    tok.add_special_tokens(special)
    tok.add_tokens(user)
    tok.post_processor = _post_processor(vocab)
    return tok


def _post_processor(vocab: GGUFVocab) -> processors.PostProcessor:
    bos = _token(vocab, vocab.bos_id) if vocab.add_bos else None
    eos = _token(vocab, vocab.eos_id) if vocab.add_eos else None
    if bos is None and eos is None:
        return processors.ByteLevel(trim_offsets=False)
    single = " ".join(x for x in (f"{bos}:0" if bos else "", "$A:0", f"{eos}:0" if eos else "") if x)
    pair = single + " " + " ".join(x for x in (f"{bos}:1" if bos else "", "$B:1", f"{eos}:1" if eos else "") if x)
    specials = [(t, i) for t, i in ((bos, vocab.bos_id), (eos, vocab.eos_id)) if t is not None and i is not None]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)


def _token(vocab: GGUFVocab, token_id: int | None) -> str | None:
    if token_id is None or not 0 <= token_id < len(vocab.tokens):
        return None
    return vocab.tokens[token_id]


def write_gguf_tokenizer(vocab: GGUFVocab, dest: Path) -> None:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    build_gguf_tokenizer(vocab).save(str(dest / "tokenizer.json"))
    named = {
        "bos_token": _token(vocab, vocab.bos_id),
        "eos_token": _token(vocab, vocab.eos_id),
        "unk_token": _token(vocab, vocab.unk_id),
        "pad_token": _token(vocab, vocab.pad_id),
    }
    named = {k: v for k, v in named.items() if v is not None}
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **named,
        "add_bos_token": vocab.add_bos,
        "add_eos_token": vocab.add_eos,
        "clean_up_tokenization_spaces": False,
        "model_max_length": vocab.max_length,
    }
    if vocab.chat_template:
        config["chat_template"] = vocab.chat_template
    _write_json(dest / "tokenizer_config.json", config)
    _write_json(dest / "special_tokens_map.json", named)


def copy_hf_tokenizer(src: Path, dest: Path) -> None:
    """Copy the tokenizer files of a HF checkpoint; a fast tokenizer (tokenizer.json) is required.

    The chat template ends up in tokenizer_config.json even when the checkpoint keeps it in
    chat_template.jinja (newer transformers) so that every loader finds it in one place.
    """
    if not (src / "tokenizer.json").is_file():
        raise ConversionError(
            f"{src} has no tokenizer.json; save a fast tokenizer there first "
            "(AutoTokenizer.from_pretrained(...).save_pretrained(dir))"
        )
    dest.mkdir(parents=True, exist_ok=True)
    for name in HF_TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)
    config = _read_json(dest / "tokenizer_config.json") or {"tokenizer_class": "PreTrainedTokenizerFast"}
    if not config.get("chat_template") and (src / "chat_template.jinja").is_file():
        config["chat_template"] = (src / "chat_template.jinja").read_text(encoding="utf-8")
    if not config.get("chat_template"):
        log.warning("%s has no chat template; chat requests will need one", src)
    _write_json(dest / "tokenizer_config.json", config)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path} is not valid JSON: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _as_ids(value: Any) -> list[int]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [int(v) for v in value if isinstance(v, int)]
    return []


def hf_eos_ids(src: Path, config: Mapping[str, Any]) -> list[int]:
    """End-of-sequence ids from config.json, generation_config.json and the tokenizer's eos_token."""
    ids = _as_ids(config.get("eos_token_id")) + _as_ids(_read_json(src / "generation_config.json").get("eos_token_id"))
    eos = _read_json(src / "tokenizer_config.json").get("eos_token")
    if isinstance(eos, dict):  # AddedToken serialised as a dict
        eos = eos.get("content")
    if isinstance(eos, str):
        token_id = Tokenizer.from_file(str(src / "tokenizer.json")).token_to_id(eos)
        if token_id is not None:
            ids.append(token_id)
    return list(dict.fromkeys(ids))


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
