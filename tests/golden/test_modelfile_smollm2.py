"""A Modelfile round trip on the real SmolLM2 twin: `ax-llm create coyote -f Modelfile`, then
`ChatAXOllama(model="coyote")` answers with the Modelfile's system prompt, messages and parameters.

Each derived answer is compared with the base model asked explicitly (system message, the MESSAGEs,
the options), at temperature 0: same text, same prompt and eval counts. The rendered prompt is
checked to contain the system prompt. The store is a temporary one holding a link to the twin.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ax_llm_provider import ChatAXOllama
from ax_llm_provider.cli import main
from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.model.layout import scan_model_dir
from ax_llm_provider.model.store import ModelStore
from ax_llm_provider.model.tokenizer import ChatTokenizer
from ax_llm_provider.ollama import Client
from tests.conftest import SMOLLM2

pytestmark = [pytest.mark.golden, pytest.mark.timeout(300)]

SYSTEM = "You are Wile E. Coyote, super genius. You always talk about catching the Road Runner."
MESSAGES = [{"role": "user", "content": "Who are you?"},
            {"role": "assistant", "content": "Wile E. Coyote, super genius."}]
PARAMETERS = {"temperature": 0, "num_predict": 12, "top_k": 20}
MODELFILE = f'''# a character, kept out of the code
FROM {SMOLLM2}
SYSTEM """{SYSTEM}"""
PARAMETER temperature 0
PARAMETER num_predict 12
PARAMETER top_k 20
MESSAGE user {MESSAGES[0]["content"]}
MESSAGE assistant """{MESSAGES[1]["content"]}"""
LICENSE "Apache-2.0"
'''
QUESTION = "What do you want for dinner?"


@pytest.fixture(scope="module")
def store(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    root = tmp_path_factory.mktemp("modelfile-store")
    family, tag = SMOLLM2.split(":")
    (root / family).mkdir()
    (root / family / tag).symlink_to(smollm2_dir, target_is_directory=True)
    modelfile = root.parent / "Modelfile"
    modelfile.write_text(MODELFILE, encoding="utf-8")
    assert main(["--store", str(root), "create", "coyote", "-f", str(modelfile)]) == 0
    return ModelStore(root)


@pytest.fixture(scope="module")
def engine(store: ModelStore) -> Iterator[Engine]:
    engine = Engine(store, backend="onnx", keep_alive=-1, auto_pull=False)
    yield engine
    engine.close()


def _explicit(engine: Engine, question: str, **options: Any) -> dict[str, Any]:
    """The base model asked with everything the Modelfile says, spelled out in the request."""
    messages = [{"role": "system", "content": SYSTEM}, *MESSAGES, {"role": "user", "content": question}]
    return Client(engine=engine).chat(SMOLLM2, messages, options={**PARAMETERS, **options}).model_dump()


def test_chat_model_answers_with_the_modelfile_defaults(engine: Engine, smollm2_dir: Path) -> None:
    reply = ChatAXOllama(model="coyote", engine=engine).invoke(QUESTION)
    expected = _explicit(engine, QUESTION)
    assert reply.content == expected["message"]["content"] and reply.content
    meta = reply.response_metadata
    assert meta["model_name"] == "coyote:latest"
    assert (meta["prompt_eval_count"], meta["eval_count"]) == (expected["prompt_eval_count"], expected["eval_count"])
    assert meta["eval_count"] <= PARAMETERS["num_predict"]
    # The prompt the engine evaluated is the chat template around SYSTEM, the MESSAGEs and the question.
    tokenizer = ChatTokenizer(scan_model_dir(smollm2_dir).tokenizer_dir)
    rendered = tokenizer.render_chat([{"role": "system", "content": SYSTEM}, *MESSAGES,
                                      {"role": "user", "content": QUESTION}], add_generation_prompt=True)
    assert SYSTEM in rendered and MESSAGES[1]["content"] in rendered
    assert len(tokenizer.encode(rendered)) == meta["prompt_eval_count"]


def test_request_options_override_the_parameters(engine: Engine) -> None:
    reply = ChatAXOllama(model="coyote", engine=engine, num_predict=4).invoke(QUESTION)
    expected = _explicit(engine, QUESTION, num_predict=4)
    assert reply.content == expected["message"]["content"]
    assert reply.response_metadata["eval_count"] == expected["eval_count"] <= 4


def test_client_create_copy_delete_and_list_agree(engine: Engine) -> None:
    client = Client(engine=engine)
    assert client.create("roadrunner", from_="coyote", parameters={"num_predict": 5}).status == "success"
    assert client.copy("roadrunner", "beep").status == "success"
    names = [m.model for m in client.list().models]
    assert names == [SMOLLM2, "beep:latest", "coyote:latest", "roadrunner:latest"]
    reply = client.chat("beep", [{"role": "user", "content": QUESTION}])
    expected = _explicit(engine, QUESTION, num_predict=5)  # coyote's defaults, num_predict from roadrunner
    assert reply.model == "beep:latest" and reply.message.content == expected["message"]["content"]
    assert reply.prompt_eval_count == expected["prompt_eval_count"]
    show = client.show("beep")
    assert show.details.parent_model == SMOLLM2 and show.license == "Apache-2.0"  # type: ignore[union-attr]
    assert client.delete("roadrunner").status == "success" and client.delete("beep").status == "success"
    assert [m.model for m in client.list().models] == [SMOLLM2, "coyote:latest"]
    assert [m.model for m in client.ps().models] == [SMOLLM2]  # one copy of the weights for all of them


def test_generate_uses_the_system_prompt(engine: Engine) -> None:
    client = Client(engine=engine)
    derived = client.generate("coyote", "Describe your plan in one sentence.")
    base = client.generate(SMOLLM2, "Describe your plan in one sentence.", system=SYSTEM, options=PARAMETERS)
    assert derived.response == base.response and derived.prompt_eval_count == base.prompt_eval_count
    assert derived.model == "coyote:latest"
