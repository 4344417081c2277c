"""Model management through the server with the real `ollama` client (and langchain-ollama's ChatOllama):
create / copy / delete / list / show / pull agree with the in-process Client, a derived model answers with
its defaults, and what cannot be done in process has Ollama's status codes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.model.store import ModelStore
from ax_llm_provider.ollama import Client as InProcessClient
from ax_llm_provider.server import BackgroundServer
from tests.conftest import SMOLLM2

pytestmark = [pytest.mark.golden, pytest.mark.timeout(300)]

SYSTEM = "You are a pirate. Answer like a pirate."
QUESTION = [{"role": "user", "content": "Where is the treasure?"}]


@pytest.fixture(scope="module")
def engine(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    root = tmp_path_factory.mktemp("management-store")
    family, tag = SMOLLM2.split(":")
    (root / family).mkdir()
    (root / family / tag).symlink_to(smollm2_dir, target_is_directory=True)
    engine = Engine(ModelStore(root), backend="onnx", keep_alive=-1, auto_pull=False)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def url(engine: Engine) -> Iterator[str]:
    with BackgroundServer(engine=engine) as url:
        yield url


@pytest.fixture(scope="module")
def http(url: str) -> ollama.Client:
    return ollama.Client(host=url)


def _names(client: ollama.Client | InProcessClient) -> list[str]:
    return [m.model for m in client.list().models]  # type: ignore[misc]


def test_create_chat_copy_delete_through_the_server(http: ollama.Client, engine: Engine, url: str) -> None:
    local = InProcessClient(engine=engine)
    records = list(http.create("pirate", from_=SMOLLM2, system=SYSTEM,
                               parameters={"temperature": 0, "num_predict": 10}, stream=True))
    assert [r.status for r in records][-2:] == ["writing manifest", "success"]
    assert _names(http) == _names(local) == [SMOLLM2, "pirate:latest"]
    show = http.show("pirate")
    assert show.details.parent_model == SMOLLM2 and f'SYSTEM """{SYSTEM}"""' in show.modelfile  # type: ignore[union-attr,operator]
    assert "num_predict" in (show.parameters or "")
    remote = http.chat("pirate", QUESTION)
    here = local.chat(SMOLLM2, [{"role": "system", "content": SYSTEM}, *QUESTION],
                      options={"temperature": 0, "num_predict": 10})
    assert remote.model == "pirate:latest" and remote.message.content == here.message.content
    assert (remote.prompt_eval_count, remote.eval_count) == (here.prompt_eval_count, here.eval_count)
    streamed = "".join(p.message.content for p in http.chat("pirate", QUESTION, stream=True))
    assert streamed == remote.message.content
    from langchain_ollama import ChatOllama

    assert ChatOllama(model="pirate", base_url=url).invoke(QUESTION[0]["content"]).content == remote.message.content
    assert http.copy("pirate", "corsair").status == "success"
    assert local.chat("corsair", QUESTION).message.content == remote.message.content
    assert http.delete("pirate").status == "success"
    assert _names(http) == _names(local) == [SMOLLM2, "corsair:latest"]
    with pytest.raises(ollama.ResponseError) as in_use:
        http.delete(SMOLLM2)
    assert in_use.value.status_code == 400 and "corsair:latest" in in_use.value.error
    assert local.delete("corsair").status == "success" and _names(http) == [SMOLLM2]


@pytest.mark.parametrize(("call", "status", "text"), [
    (lambda c: c.delete("nosuch"), 404, "model 'nosuch' not found"),
    (lambda c: c.copy("nosuch", "x"), 404, 'model "nosuch" not found'),
    (lambda c: c.chat("nosuch:1b", QUESTION), 404, 'model "nosuch:1b" not found, try pulling it first'),
    (lambda c: c.pull("nosuch:1b"), 404, "file does not exist"),
    (lambda c: c.push(SMOLLM2), 501, "push is not supported"),
    (lambda c: c.create("x"), 400, "neither 'from' or 'files' was specified"),
    (lambda c: c.create("x", from_=SMOLLM2, template="{{ .Prompt }}"), 501, "TEMPLATE is not supported"),
    (lambda c: c.create("x", from_=SMOLLM2, adapters={"a": "sha256:00"}), 501, "ADAPTER"),
    (lambda c: c.create("x", from_=SMOLLM2, parameters={"temprature": 1}), 400, "unknown parameter"),
    (lambda c: c.generate(SMOLLM2, "draw a cat", width=256, height=256), 400, "does not support image generation"),
])
def test_errors_have_ollamas_status_codes(http: ollama.Client, call, status: int, text: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ollama.ResponseError) as error:
        call(http)
    assert error.value.status_code == status and text in error.value.error


def test_pull_blobs_show_verbose_and_generate_without_a_model(http: ollama.Client, url: str, tmp_path: Path) -> None:
    records = list(http.pull(SMOLLM2, stream=True))  # in the store already: nothing to fetch
    assert records[0].status == "pulling manifest" and records[-1].status == "success"
    assert http.pull(SMOLLM2).status == "success"
    blob = tmp_path / "weights.gguf"
    blob.write_bytes(b"GGUF")
    with pytest.raises(ollama.ResponseError) as upload:
        http.create_blob(blob)
    assert upload.value.status_code == 501
    assert httpx.head(f"{url}/api/blobs/sha256:{'0' * 64}").status_code == 404
    missing = httpx.post(f"{url}/api/generate", json={"prompt": "hi"})
    assert (missing.status_code, missing.json()) == (404, {"error": "model '' not found"})
    verbose = httpx.post(f"{url}/api/show", json={"model": SMOLLM2, "verbose": True}).json()["model_info"]
    assert len(verbose["tokenizer.ggml.tokens"]) == len(verbose["tokenizer.ggml.token_type"]) == 49152
    assert verbose["tokenizer.ggml.tokens"][:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert verbose["tokenizer.ggml.merges"]
    plain = httpx.post(f"{url}/api/show", json={"model": SMOLLM2}).json()["model_info"]
    assert "tokenizer.ggml.tokens" not in plain
