"""Derived models and model management without loading a model: stores of placeholder model directories.

Covers model/derived.py (manifests, the engine hook's request rewriting), model/manage.py (create, copy,
delete, pull checks and their errors) and the Client / AsyncClient management methods over them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import ollama
import pytest

from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.engine.requests import ChatRequest, EmbedRequest, GenerateRequest
from ax_llm_provider.model.derived import DerivedStore, apply_derived, list_entries, renamed, show_fields
from ax_llm_provider.model.errors import ModelError, ModelNotFoundError
from ax_llm_provider.model.manage import (
    UnsupportedError,
    copy_model,
    create_progress,
    delete_model,
    plan_create,
)
from ax_llm_provider.model.store import ModelStore
from ax_llm_provider.ollama.client import AsyncClient, Client

BASE = "base:1b"
TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def _base_dir(store: ModelStore, name: str) -> Path:
    path = store.path_for(name)
    path.mkdir(parents=True)
    (path / "ax_model.json").write_text(json.dumps({"format": "ax-llm-twin/1", "architecture": "llama"}))
    (path / "tok").mkdir()
    (path / "tok" / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE}))
    return path


@pytest.fixture()
def store(tmp_path: Path) -> ModelStore:
    store = ModelStore(tmp_path / "store")
    _base_dir(store, BASE)
    return store


@pytest.fixture()
def client(store: ModelStore) -> Iterator[Client]:
    engine = Engine(store, backend="onnx", auto_pull=False)
    yield Client(engine=engine)
    engine.close()


def create(store: ModelStore, name: str, **kwargs: object) -> list[dict[str, object]]:
    derived, needs_pull = plan_create(store, name, **kwargs)  # type: ignore[arg-type]
    return list(create_progress(store, derived, needs_pull))


# ---- create / copy / delete in the store ------------------------------------------------------------------

def test_create_writes_one_manifest_over_the_base(store: ModelStore) -> None:
    records = create(store, "Coyote", from_=BASE, system="You are Wile E. Coyote.",
                     parameters={"temperature": 0, "stop": "<end>"}, license="MIT",
                     messages=[{"role": "user", "content": "Who?"}, ollama.Message(role="assistant", content="Me.")])
    assert records[-1] == {"status": "success"} and records[0] == {"status": f"using base model {BASE}"}
    derived = DerivedStore(store).get("coyote")
    assert derived is not None and derived.name == "coyote:latest" and derived.base == BASE
    assert derived.parameters == {"temperature": 0, "stop": ["<end>"]} and derived.license == ["MIT"]
    assert derived.messages == [{"role": "user", "content": "Who?"}, {"role": "assistant", "content": "Me."}]
    assert [p.name for p in store.root.rglob("*.json") if "_derived" in p.parts] == ["latest.json"]
    assert [m.name for m in store.list()] == [BASE]  # the base listing never sees derived manifests


def test_create_from_a_derived_model_flattens_to_the_base(store: ModelStore) -> None:
    create(store, "a", from_=BASE, system="S", parameters={"temperature": 0, "top_k": 5},
           messages=[{"role": "user", "content": "u"}], license="L1")
    create(store, "b", from_="a", parameters={"top_k": 9}, license="L2")
    b = DerivedStore(store).get("b")
    assert b is not None and b.base == BASE and b.system == "S"
    assert b.parameters == {"temperature": 0, "top_k": 9}  # merged, the new value wins
    assert b.messages == [{"role": "user", "content": "u"}] and b.license == ["L1", "L2"]


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({}, ModelError, "neither 'from' or 'files' was specified"),
    ({"from_": "nosuch:1b"}, ModelNotFoundError, 'model "nosuch:1b" not found'),
    ({"from_": BASE, "adapters": {"a": "sha256:x"}}, UnsupportedError, "ADAPTER"),
    ({"from_": BASE, "quantize": "q4_K_M"}, UnsupportedError, "quantize"),
    ({"from_": BASE, "files": {"m.gguf": "sha256:x"}}, UnsupportedError, "ax-llm convert"),
    ({"from_": BASE, "template": "{{ .Prompt }}"}, UnsupportedError, "TEMPLATE is not supported"),
    ({"from_": BASE, "parameters": {"temprature": 1}}, ModelError, "unknown parameter 'temprature'"),
    ({"from_": BASE, "parameters": {"seed": "abc"}}, ValueError, 'option "seed" must be of type integer'),
    ({"from_": BASE, "messages": [{"role": "tool", "content": "x"}]}, ModelError, "role must be one of"),
])
def test_create_refuses_before_writing(store: ModelStore, kwargs: dict[str, object], error: type[Exception],
                                       message: str) -> None:
    with pytest.raises(error, match=message):
        plan_create(store, "x", **kwargs)  # type: ignore[arg-type]
    assert DerivedStore(store).list() == []


def test_create_refuses_a_base_model_name_and_a_file(store: ModelStore, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="is a model directory in the store"):
        plan_create(store, BASE, from_=BASE)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(UnsupportedError, match="convert it first"):
        plan_create(store, "x", from_=str(gguf))


def test_a_template_equal_to_the_base_template_is_honoured(store: ModelStore) -> None:
    derived, _ = plan_create(store, "x", from_=BASE, template=TEMPLATE + "\n")
    assert derived.base == BASE


def test_create_from_a_model_directory(store: ModelStore) -> None:
    derived, _ = plan_create(store, "x", from_=str(store.path_for(BASE)))
    assert derived.base == str(store.path_for(BASE))


def test_copy_is_an_alias_and_keeps_defaults(store: ModelStore) -> None:
    alias = copy_model(store, BASE, "alias")
    assert alias.base == BASE and alias.system is None and alias.parameters == {}
    create(store, "a", from_=BASE, system="S")
    copied = copy_model(store, "a", "b:v2")
    assert copied.name == "b:v2" and copied.system == "S" and copied.base == BASE
    with pytest.raises(ModelNotFoundError, match='model "nosuch" not found'):
        copy_model(store, "nosuch", "c")
    with pytest.raises(ModelError, match="model directory in the store"):
        copy_model(store, "a", BASE)
    with pytest.raises(ModelError, match="invalid destination name"):
        copy_model(store, "a", "Bad Name!")


def test_delete_keeps_a_base_that_derived_models_use(store: ModelStore) -> None:
    create(store, "a", from_=BASE)
    with pytest.raises(ModelError, match="is the base of a:latest"):
        delete_model(store, BASE)
    assert delete_model(store, "a") is None  # a derived model: its manifest only
    assert store.path_for(BASE).is_dir()
    assert delete_model(store, BASE) == BASE
    assert not store.path_for(BASE).exists()
    with pytest.raises(ModelNotFoundError, match="model 'a' not found"):
        delete_model(store, "a")


# ---- the engine hook: requests for a derived model ---------------------------------------------------------

def test_chat_requests_get_ollamas_defaults(store: ModelStore) -> None:
    create(store, "c", from_=BASE, system="SYS", parameters={"temperature": 0, "top_k": 3},
           messages=[{"role": "user", "content": "m1"}, {"role": "assistant", "content": "m2"}])
    req, shown = apply_derived(store, ChatRequest(model="c", messages=[{"role": "user", "content": "hi"}],
                                                  options={"top_k": 7}))
    assert shown == "c:latest" and req.model == BASE
    assert [(m.role, m.content) for m in req.messages] == [
        ("system", "SYS"), ("user", "m1"), ("assistant", "m2"), ("user", "hi")]
    assert req.options == {"temperature": 0, "top_k": 7}  # the request's options win
    own, _ = apply_derived(store, ChatRequest(model="c", messages=[{"role": "system", "content": "mine"},
                                                                   {"role": "user", "content": "hi"}]))
    # Ollama: MESSAGEs go before the request's messages; no SYSTEM when the request starts with its own
    assert [m.content for m in own.messages] == ["m1", "m2", "mine", "hi"]
    load, _ = apply_derived(store, ChatRequest(model="c", messages=[]))
    assert load.messages == []  # a load request stays one


def test_generate_and_embed_requests(store: ModelStore) -> None:
    create(store, "c", from_=BASE, system="SYS", parameters={"temperature": 0})
    req, _ = apply_derived(store, GenerateRequest(model="c", prompt="p"))
    assert req.system == "SYS" and req.options == {"temperature": 0}
    own, _ = apply_derived(store, GenerateRequest(model="c", prompt="p", system="mine"))
    assert own.system == "mine"
    raw, _ = apply_derived(store, GenerateRequest(model="c", prompt="p", raw=True))
    assert raw.system is None  # raw mode never gets a system prompt (Ollama)
    embed, shown = apply_derived(store, EmbedRequest(model="c", input="x"))
    assert embed.model == BASE and shown == "c:latest"
    plain, shown = apply_derived(store, ChatRequest(model=BASE, messages=[]))
    assert plain.model == BASE and shown is None


def test_renamed_jobs_answer_with_the_derived_name() -> None:
    def job(cancel: object) -> Iterator[dict[str, object]]:
        yield {"model": "base", "done": True}

    assert list(renamed(job, "c:latest")(None)) == [{"model": "c:latest", "done": True}]
    assert renamed(job, None) is job


def test_listing_and_show_entries(store: ModelStore) -> None:
    create(store, "c", from_=BASE, system="SYS", parameters={"stop": ["a", "b"], "temperature": 0.5},
           messages=[{"role": "user", "content": "m1"}], license="MIT")
    base = {"name": BASE, "model": BASE, "size": 7, "digest": "d", "modified_at": "t", "details": {"format": "onnx"}}
    [entry] = list_entries(store, [base])
    assert entry["name"] == "c:latest" and entry["size"] == 7 and entry["details"]["parent_model"] == BASE
    shown = show_fields(DerivedStore(store).get("c"), {**base, "model_info": {}})  # type: ignore[arg-type]
    assert shown["system"] == "SYS" and shown["license"] == "MIT"
    assert shown["parameters"].splitlines() == [f"{'stop':<30} \"a\"", f"{'stop':<30} \"b\"",
                                                f"{'temperature':<30} 0.5"]
    assert shown["modelfile"].splitlines()[1:] == [
        f"FROM {BASE}", 'SYSTEM """SYS"""', 'PARAMETER stop "a"', 'PARAMETER stop "b"', "PARAMETER temperature 0.5",
        'MESSAGE user """m1"""', 'LICENSE """MIT"""']


# ---- the Client ------------------------------------------------------------------------------------------

def test_client_create_copy_delete_and_list_agree(client: Client) -> None:
    def names() -> list[str]:
        return [m.model for m in client.list().models]

    records = list(client.create("coyote", from_=BASE, system="S", parameters=ollama.Options(temperature=0),
                                 stream=True))
    assert all(isinstance(r, ollama.ProgressResponse) for r in records) and records[-1].status == "success"
    assert names() == [BASE, "coyote:latest"]
    assert client.show("coyote").details.parent_model == BASE  # type: ignore[union-attr]
    assert client.show("coyote").parameters == f"{'temperature':<30} 0.0"
    assert client.copy("coyote", "wile").status == "success"
    assert names() == [BASE, "coyote:latest", "wile:latest"]
    assert client.delete("coyote").status == "success"
    assert names() == [BASE, "wile:latest"]
    with pytest.raises(ollama.ResponseError) as missing:
        client.delete("coyote")
    assert missing.value.status_code == 404 and missing.value.error == "model 'coyote' not found"
    with pytest.raises(ollama.ResponseError) as in_use:
        client.delete(BASE)
    assert in_use.value.status_code == 400


def test_client_create_errors_and_unsupported_operations(client: Client, tmp_path: Path) -> None:
    assert client.create("x", from_=BASE).status == "success"  # stream=False: the last record
    with pytest.raises(ollama.ResponseError) as template:
        client.create("y", from_=BASE, template="{{ .System }}")
    assert template.value.status_code == 501
    with pytest.raises(ollama.ResponseError) as push:
        client.push("x")
    assert push.value.status_code == 501 and "not supported" in push.value.error
    blob = tmp_path / "m.gguf"
    blob.write_bytes(b"GGUF")
    with pytest.raises(ollama.ResponseError) as upload:
        client.create_blob(blob)
    assert upload.value.status_code == 501
    with pytest.raises(FileNotFoundError):
        client.create_blob(tmp_path / "missing.gguf")
    with pytest.raises(ollama.ResponseError) as image:
        client.generate(BASE, "a cat", width=64, height=64, steps=4)
    assert (image.value.status_code, image.value.error) == (400, f'"{BASE}" does not support image generation')
    with pytest.raises(ollama.ResponseError) as missing:
        client.generate("nosuch:1b", "a cat", steps=4)
    assert missing.value.status_code == 404  # an unknown model is reported first, as Ollama does


def test_client_pull(client: Client, store: ModelStore) -> None:
    with pytest.raises(ollama.ResponseError) as unknown:
        client.pull("nosuch:1b")
    assert unknown.value.status_code == 404 and "file does not exist" in unknown.value.error
    _base_dir(store, "smollm2:135m")  # already in the store: the pull has nothing to fetch
    records = list(client.pull("smollm2:135m", stream=True))
    assert records[0].status == "pulling manifest" and records[-1].status == "success"
    assert client.pull("smollm2").status == "success"


def test_client_lifecycle(store: ModelStore) -> None:
    _base_dir(store, "smollm2:135m")  # in the store: a pull has nothing to fetch
    engine = Engine(store, backend="onnx", auto_pull=False)
    try:
        with Client(engine=engine) as client:
            assert [m.model for m in client.list().models] == [BASE, "smollm2:135m"]
        with pytest.raises(RuntimeError, match="client has been closed"):
            client.list()
        assert engine.list()["models"]  # closing a client leaves the shared engine running

        async def main() -> list[str]:
            async with AsyncClient(engine=engine) as aclient:
                await aclient.create("a", from_=BASE, system="S")
                records = [r.status async for r in await aclient.create("b", from_="a", stream=True)]
                assert records[-1] == "success"
                await aclient.copy("b", "c")
                await aclient.delete("a")
                names = [m.model for m in (await aclient.list()).models]
                pulled = [r.status async for r in await aclient.pull("smollm2:135m", stream=True)]
                assert pulled[0] == "pulling manifest" and pulled[-1] == "success"
                with pytest.raises(ollama.ResponseError) as push:
                    await aclient.push("c")
                assert push.value.status_code == 501
            with pytest.raises(RuntimeError):
                await aclient.list()
            return names

        assert asyncio.run(main()) == [BASE, "smollm2:135m", "b:latest", "c:latest"]
    finally:
        engine.close()


def test_a_damaged_manifest_is_named_and_hides_nothing_else(store: ModelStore) -> None:
    create(store, "good", from_=BASE)
    bad = DerivedStore(store).path_for("bad")
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json", encoding="utf-8")
    assert [m.name for m in DerivedStore(store).list()] == ["good:latest"]
    with pytest.raises(ModelError, match="not a valid derived-model manifest"):
        apply_derived(store, ChatRequest(model="bad", messages=[]))
