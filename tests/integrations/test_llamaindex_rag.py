"""RAG with LlamaIndex on the engine alone: all-minilm embeddings, a VectorStoreIndex, SmolLM2-135M answers.

The documents hold invented facts (names and numbers no model can know), plus distractors on the same
themes. Designed for a 135M model:
- one short passage per document, chunked by sentences (chunk_size 64) so a node is one or two facts;
- similarity_top_k=1: with two retrieved passages the model mixed them up (3/5 measured), with one it
  copies the fact (5/5 measured);
- a terse text_qa_template that puts the context first and ends with "Answer:".
Measured on the CPU twin at temperature 0: 5/5 answers contain the fact (retrieval 5/5); without the
documents the model produces none of the facts (0/5).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.prompts import PromptTemplate

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.integrations.llamaindex import AXOllama, AXOllamaEmbedding
from ax_llm_provider.model.pull import pull
from ax_llm_provider.model.store import ModelStore
from tests.conftest import SMOLLM2

pytestmark = [pytest.mark.golden, pytest.mark.slow, pytest.mark.timeout(240)]

EMBED_MODEL = "all-minilm:l6-v2"
FACTS = [
    "The Quillfeather Observatory stands on Mount Ovrasse. Its head astronomer is Dr. Maribel Tenkwa.",
    "The town of Brindlemoor has exactly 7341 residents. Its mayor is Osric Pellawin.",
    "The Zantivar river is 862 kilometers long. It flows into the Gulf of Merrow.",
    "Captain Ilsa Korvander commands the airship Starling Vane. The airship's home port is Cadrelle.",
    "The secret ingredient of Grandma Yevette's soup is smoked juniper. The soup recipe dates from 1911.",
]
DISTRACTORS = [
    "The Harrowgate Observatory closed in 1987. It once housed a brass telescope named Old Wim.",
    "The village of Tollerby has a famous cheese market every Thursday. Its bakery is run by Fenna Drulle.",
    "The Ostrava canal connects two lakes. Barges on it carry timber and salt.",
    "The submarine Grey Heron was launched in 1952. Its first commander was Anton Vessel.",
    "Uncle Barto's bread uses rye flour and caraway seeds. He bakes it every Sunday morning.",
]
QUESTIONS = [
    ("Who is the head astronomer of the Quillfeather Observatory?", "Tenkwa", 0),
    ("How many residents does Brindlemoor have?", "7341", 1),
    ("How long is the Zantivar river?", "862", 2),
    ("Who commands the airship Starling Vane?", "Korvander", 3),
    ("What is the secret ingredient of Grandma Yevette's soup?", "juniper", 4),
]
QA_TEMPLATE = PromptTemplate(
    "Context: {context_str}\nAnswer the question using the context.\nQuestion: {query_str}\nAnswer:")


@pytest.fixture(scope="module")
def minilm_dir(model_store: ModelStore) -> Path:
    return pull(EMBED_MODEL, model_store)  # once per machine, shared with the other tests


@pytest.fixture(scope="module")
def index(smollm2_engine: Engine, minilm_dir: Path) -> Iterator[VectorStoreIndex]:
    embed_model = AXOllamaEmbedding(model_name=EMBED_MODEL, engine=smollm2_engine)
    documents = [Document(text=t, doc_id=f"doc-{i}") for i, t in enumerate(FACTS + DISTRACTORS)]
    yield VectorStoreIndex.from_documents(
        documents, embed_model=embed_model, transformations=[SentenceSplitter(chunk_size=64, chunk_overlap=0)])


@pytest.fixture(scope="module")
def llm(smollm2_engine: Engine) -> AXOllama:
    return AXOllama(model=SMOLLM2, temperature=0, additional_kwargs={"num_predict": 40}, engine=smollm2_engine)


def test_query_engine_answers_from_the_documents(index: VectorStoreIndex, llm: AXOllama,
                                                 record_property: pytest.RecordProperty) -> None:
    engine = index.as_query_engine(llm=llm, similarity_top_k=1, text_qa_template=QA_TEMPLATE)
    answers, retrieved = [], 0
    for question, fact, doc in QUESTIONS:
        response = engine.query(question)
        answers.append((question, fact, str(response)))
        retrieved += response.source_nodes[0].node.ref_doc_id == f"doc-{doc}"
    correct = [a for a in answers if a[1].lower() in a[2].lower()]
    record_property("rag_correct", f"{len(correct)}/5")
    record_property("rag_retrieved", f"{retrieved}/5")
    print(f"\nRAG: {len(correct)}/5 answers contain the fact, retrieval {retrieved}/5")
    for question, fact, answer in answers:
        print(f"  [{'ok' if fact.lower() in answer.lower() else '--'}] {question} -> {answer!r}")
    assert retrieved >= 4
    assert len(correct) >= 4, answers


def test_the_facts_are_not_known_without_the_documents(llm: AXOllama) -> None:
    known = [fact for question, fact, _ in QUESTIONS
             if fact.lower() in llm.complete(question, num_predict=24).text.lower()]
    assert len(known) <= 1, known  # measured 0/5: the answers above come from retrieval
