"""Read an Ollama Modelfile into the arguments of `create` (model/manage.py `plan_create`).

The syntax follows Ollama's parser (parser/parser.go in github.com/ollama/ollama): one instruction
per line, case-insensitive (`FROM`, `SYSTEM`, `PARAMETER`, `MESSAGE`, `LICENSE`, `TEMPLATE`,
`ADAPTER`), `#` comments, values either bare (the rest of the line), in double quotes, or in triple
quotes spanning lines. `PARAMETER stop` may repeat; the other PARAMETERs take the last value.
ADAPTER and TEMPLATE are read here and judged by `plan_create`, which refuses what the engine cannot
honour with a message saying what to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ModelError

COMMANDS = ("from", "adapter", "license", "template", "system", "parameter", "message")
ROLES = ("system", "user", "assistant")


class ModelfileError(ModelError):
    """The Modelfile cannot be read; the message names the line."""


@dataclass
class Modelfile:
    from_: str | None = None
    system: str | None = None
    template: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)
    license: list[str] = field(default_factory=list)
    adapters: list[str] = field(default_factory=list)

    def create_arguments(self) -> dict[str, Any]:
        """Keyword arguments of `plan_create` (and of `Client.create`, with `from_`)."""
        return {"from_": self.from_, "system": self.system, "template": self.template,
                "parameters": self.parameters or None, "messages": self.messages or None,
                "license": self.license or None,
                "adapters": {f"adapter{i}": a for i, a in enumerate(self.adapters)} or None}


def _value(text: str, lines: list[str], index: int) -> tuple[str, int]:
    """The value starting at `text` (rest of line `index`); returns it and the index of its last line."""
    stripped = text.strip()
    if stripped.startswith('"""'):
        body = stripped[3:]
        if '"""' in body:
            end = body.index('"""')
            if body[end + 3:].strip():
                raise ModelfileError(f"line {index + 1}: unexpected text after the closing \"\"\"")
            return body[:end], index
        parts = [body]
        for j in range(index + 1, len(lines)):
            if '"""' in lines[j]:
                end = lines[j].index('"""')
                if lines[j][end + 3:].strip():
                    raise ModelfileError(f"line {j + 1}: unexpected text after the closing \"\"\"")
                parts.append(lines[j][:end])
                return "\n".join(parts), j
            parts.append(lines[j])
        raise ModelfileError(f'line {index + 1}: a """ value is never closed')
    if len(stripped) >= 2 and stripped[0] == stripped[-1] == '"':
        return stripped[1:-1], index
    return stripped, index


def _typed(raw: str) -> Any:
    """A PARAMETER value as the number or bool it spells; anything else stays a string (checked later)."""
    for convert in (int, float):
        try:
            return convert(raw)
        except ValueError:
            pass
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    return raw


def parse_modelfile(text: str) -> Modelfile:
    """The Modelfile's instructions; raises ModelfileError naming the line for anything unreadable."""
    result = Modelfile()
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        number = i + 1
        if not line or line.startswith("#"):
            i += 1
            continue
        command, _, rest = line.partition(" ")
        command = command.lower()
        if command not in COMMANDS:
            raise ModelfileError(f"line {number}: command must be one of "
                                 f"{', '.join(repr(c) for c in COMMANDS)}, got {command!r}")
        if command in ("parameter", "message"):
            key, _, after = rest.strip().partition(" ")
            if not key or not after.strip():
                raise ModelfileError(f"line {number}: {command.upper()} needs a name and a value")
            value, i = _value(after, lines, i)
            if command == "parameter":
                _add_parameter(result, key.lower(), value)
            else:
                if key.lower() not in ROLES:
                    raise ModelfileError(f'line {number}: message role must be one of "system", "user", or '
                                         f'"assistant", got {key!r}')
                result.messages.append({"role": key.lower(), "content": value})
        else:
            if not rest.strip():
                raise ModelfileError(f"line {number}: {command.upper()} needs a value")
            value, i = _value(rest, lines, i)
            if command == "from":
                result.from_ = value
            elif command == "system":
                result.system = value
            elif command == "template":
                result.template = value
            elif command == "license":
                result.license.append(value)
            else:
                result.adapters.append(value)
        i += 1
    if result.from_ is None:
        raise ModelfileError("no FROM line: a Modelfile names its base model, e.g. `FROM smollm2:135m`")
    return result


def _add_parameter(result: Modelfile, key: str, value: str) -> None:
    if key == "stop":
        result.parameters.setdefault("stop", []).append(value)
    else:
        result.parameters[key] = _typed(value)
