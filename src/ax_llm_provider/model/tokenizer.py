"""Tokenizer and chat template in process (no tokenizer server), through transformers' fast tokenizer."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import ModelDirectoryError

log = logging.getLogger(__name__)


def _load_fast_tokenizer(directory: Path) -> Any:
    # transformers prints an advisory about missing PyTorch on import; we never need torch.
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as exc:
        broken = _first_unreadable_json(directory)
        if broken is not None:
            raise ModelDirectoryError(f"cannot load the tokenizer in {directory}: {broken}; fix or replace that "
                                      "file (`ax-llm pull --force NAME` fetches a known model again)") from exc
        raise ModelDirectoryError(f"cannot load the tokenizer in {directory}: {exc}") from exc


TOKENIZER_JSON_FILES = ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "config.json",
                        "generation_config.json")


def _first_unreadable_json(directory: Path) -> str | None:
    """Which of the tokenizer's JSON files is broken, and how (transformers' own error names no file)."""
    for name in TOKENIZER_JSON_FILES:
        path = directory / name
        if not path.is_file():
            continue
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            return f"{path} is not readable JSON ({exc})"
    return None


class ChatTokenizer:
    """Encode, decode and render chat prompts for one model."""

    def __init__(self, directory: str | Path, extra_eos_ids: Iterable[int] = ()) -> None:
        self.directory = Path(directory)
        self._tok = _load_fast_tokenizer(self.directory)
        # The engine fits prompts to the compiled context itself; silence transformers' length warning.
        self._tok.model_max_length = 1 << 30
        self.chat_template: str | None = self._tok.chat_template
        self.bos_id: int | None = self._tok.bos_token_id
        eos = {i for i in [self._tok.eos_token_id, *extra_eos_ids] if i is not None}
        eos |= self._generation_config_eos()
        self.eos_ids: frozenset[int] = frozenset(eos)

    def _generation_config_eos(self) -> set[int]:
        """Chat models often end turns with a token other than the tokenizer's eos (e.g. <|im_end|>)."""
        ids: set[int] = set()
        for name in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
            token_id = self._tok.convert_tokens_to_ids(name)
            if isinstance(token_id, int) and token_id != self._tok.unk_token_id and token_id >= 0:
                ids.add(token_id)
        path = self.directory / "generation_config.json"
        if path.is_file():
            try:
                value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
            except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
                raise ModelDirectoryError(f"{path} is not readable JSON ({exc}); fix or replace that file") from exc
            ids |= set(value if isinstance(value, list) else [value] if value is not None else [])
        return ids

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    @property
    def hf(self) -> Any:
        """The underlying transformers tokenizer (for constrained decoding libraries)."""
        return self._tok

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **template_kwargs: Any,
    ) -> str:
        """The prompt text the chat template makes of these messages."""
        if not self.chat_template:
            raise ModelDirectoryError(
                f"the tokenizer in {self.directory} has no chat template; use generate with raw=True "
                "or add chat_template to tokenizer_config.json"
            )
        return str(
            self._tok.apply_chat_template(
                [dict(m) for m in messages],
                tools=[dict(t) for t in tools] if tools else None,
                add_generation_prompt=add_generation_prompt,
                tokenize=False,
                **template_kwargs,
            )
        )
