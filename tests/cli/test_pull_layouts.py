"""`ax-llm pull` of every registry bundle, as published at its pinned commit, then `ax-llm run` on it.

A fake Hugging Face serves the file lists recorded for each bundle (tests/fixtures/hub_listings.py): the
per-directory layout (`*-ax650/` + `*_tokenizer/`) and the 2026 flat layout (everything at the root, named
by ax-llm's `config.json`, with only ax-llm's own `qwen3_tokenizer.txt`), plus the base models' tokenizer
repositories. `ax-llm run` then goes through the real loader and the axcl backend onto a simulated card that
stands in for the model files with null-compute models of a small geometry, multi-decode-group included.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from ax_llm_provider.cli import hub as hub_module
from ax_llm_provider.model.errors import ModelDirectoryError
from ax_llm_provider.model.layout import scan_model_dir
from ax_llm_provider.model.store import ModelStore
from ax_llm_provider.model.tokenizer import ChatTokenizer
from ax_llm_provider.runtime.simcard import SimCard
from ax_llm_provider.runtime.simcard.models import null_layer, null_post
from ax_llm_provider.runtime.simcard.timing import Geometry
from tests.cli.fake_hub import FakeHub, install
from tests.fixtures.hub_listings import (
    BASE_TOKENIZERS,
    EMBED,
    RECORDED,
    axllm_config,
    bundle_files,
    tokenizer_repo_files,
)

Cli = Callable[..., tuple[int, str, str]]
LEFT_BEHIND = ("main_", ".sh", ".py", "ax630c", "README.md", ".gitattributes", "qwen3_tokenizer.txt")


def tokenizer_dir(store: Path) -> Path:
    return store / "tiny" / "llama" / "llama_tokenizer"


def fake_hub(store: Path, name: str, monkeypatch: pytest.MonkeyPatch, **geometry: int) -> FakeHub:
    rec = RECORDED[name]
    fake = FakeHub(bundle_files(name, tokenizer_dir(store), **geometry), rec.repo_id, rec.revision)
    for repo_id, revision in BASE_TOKENIZERS.values():
        fake.add_repo(repo_id, tokenizer_repo_files(tokenizer_dir(store)), revision)
    return install(monkeypatch, fake)


def test_registry_pins_the_recorded_commits() -> None:
    assert set(hub_module.HUB_BUNDLES) == set(RECORDED)
    for name, bundle in hub_module.HUB_BUNDLES.items():
        assert (bundle.repo_id, bundle.revision) == (RECORDED[name].repo_id, RECORDED[name].revision)
        if name in BASE_TOKENIZERS:
            assert bundle.tokenizer is not None
            assert (bundle.tokenizer.repo_id, bundle.tokenizer.revision) == BASE_TOKENIZERS[name]
    with pytest.raises(ValueError, match="full commit"):
        dataclasses.replace(hub_module.HUB_BUNDLES["qwen3:0.6b-axcl"], revision="main")


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_pull_every_registry_bundle(name: str, store: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = RECORDED[name]
    fake = fake_hub(store, name, monkeypatch)
    code, out, err = cli("pull", name)
    assert code == 0, err
    dest = ModelStore(store).path_for(name)
    assert out.strip() == f"{name}: ready in {dest}"
    assert {d["revision"] for d in fake.downloads if d["repo_id"] == rec.repo_id} == {rec.revision}
    fetched = fake.fetched(rec.repo_id)
    assert not [f for f in fetched if any(mark in f for mark in LEFT_BEHIND)], "runners, scripts, other chips"
    files = scan_model_dir(dest)
    assert [p.relative_to(dest).as_posix() for p in files.layers] == [rec.layer_template % i for i in range(rec.layers)]
    assert files.post == dest / rec.post and files.embedding == dest / rec.embedding
    manifest = json.loads((dest / "ax_model.json").read_text())
    assert manifest["source"].startswith(f"hf:{rec.repo_id}@{rec.revision}")
    if rec.layout == "flat":
        config = json.loads((dest / "config.json").read_text())
        named = {config["template_filename_axmodel"] % i for i in range(config["axmodel_num"])}
        named |= {config["filename_post_axmodel"], config["filename_tokens_embed"], "post_config.json", "config.json"}
        assert fetched == named  # exactly what ax-llm's config names: nothing guessed from file names
        assert files.bundle_config is not None and files.bundle_config.axmodel_num == rec.layers
        base, revision = BASE_TOKENIZERS[name]
        assert [(d["repo_id"], d["revision"]) for d in fake.downloads if d["repo_id"] == base] == [(base, revision)]
        assert "model.safetensors" not in fake.fetched(base)  # the tokenizer only, never the weights
        assert manifest["tokenizer_dir"] == "hf_tokenizer" and files.tokenizer_dir == dest / "hf_tokenizer"
        assert f"tokenizer hf:{base}@{revision}" in manifest["source"]
        assert ChatTokenizer(files.tokenizer_dir).chat_template
    else:
        assert files.bundle_config is None and "tokenizer_dir" not in manifest
        assert files.tokenizer_dir.name == rec.tokenizer_dirs[0]  # qwen3_tokenizer, not the qwen2.5 one
        assert not any(d["repo_id"] != rec.repo_id for d in fake.downloads)


def null_card(dest: Path, name: str, geometry: Geometry) -> SimCard:
    """A simulated card on which the pulled bundle's own file paths load as null-compute models."""
    card = SimCard()
    files = scan_model_dir(dest)
    for path in files.layers:
        card.register_model(str(path), lambda: null_layer(geometry))
    card.register_model(str(files.post), lambda: null_post(geometry))
    return card


@pytest.mark.parametrize(("name", "extra_decode"), [(n, ()) for n in sorted(RECORDED)] + [("qwen3:4b-axcl", (48, 96))])
def test_run_reaches_the_card_on_every_pulled_bundle(name: str, extra_decode: tuple[int, ...], store: Path, cli: Cli,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    rec = RECORDED[name]
    vocab, hidden = ChatTokenizer(tokenizer_dir(store)).vocab_size, 32
    geometry = Geometry(layers=rec.layers, hidden=hidden, kv_dim=8, vocab=vocab, capacity=256, chunk=16,
                        prefill_histories=(0, 16, 32), extra_decode_capacities=extra_decode)
    fake_hub(store, name, monkeypatch, hidden=hidden, vocab=vocab, embedding_bytes=vocab * hidden * 2)
    assert cli("pull", name)[0] == 0
    card = null_card(ModelStore(store).path_for(name), name, geometry)
    for where in ("axcl_device", "axcl_backend"):  # `import axcl` gives the simulated card
        monkeypatch.setattr(f"ax_llm_provider.runtime.{where}.import_axcl", lambda: card)
    code, out, err = cli("run", name, "Hello", "--backend", "axcl", "-o", "num_predict=3", "-o", "seed=1", "--verbose")
    assert code == 0, err
    assert len(card.models) == rec.layers + 1  # every layer file and the post model are loaded on the card
    assert "backend:              axcl" in err and "eval count:" in err


def test_flat_bundle_with_only_axllm_tokenizer_is_refused_with_what_to_download(store: Path, tmp_path: Path) -> None:
    root = tmp_path / "Qwen3-4B"
    for rel, data in bundle_files("qwen3:4b-axcl", tokenizer_dir(store)).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    with pytest.raises(ModelDirectoryError) as caught:
        scan_model_dir(root)
    message = str(caught.value)
    for needed in ("qwen3_tokenizer.txt", "ax-llm's own tokenizer format", "tokenizer.json", "tokenizer_config.json",
                   "AXERA-TECH/Qwen3-4B", "ax_model.json", '"tokenizer_dir"'):
        assert needed in message
    (root / "hf_tokenizer").mkdir()
    for f in tokenizer_dir(store).iterdir():
        (root / "hf_tokenizer" / f.name).write_bytes(f.read_bytes())
    (root / "ax_model.json").write_text('{"format": "vendor", "tokenizer_dir": "hf_tokenizer"}')
    assert scan_model_dir(root).tokenizer_dir == root / "hf_tokenizer"  # done as the message says: it loads


def test_pull_refuses_a_flat_bundle_with_no_recorded_tokenizer(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hub(store, "qwen3:0.6b-axcl", monkeypatch)
    bundle = dataclasses.replace(hub_module.HUB_BUNDLES["qwen3:0.6b-axcl"], tokenizer=None)
    with pytest.raises(hub_module.HubPullError, match=r"qwen3_tokenizer.txt .*hf download AXERA-TECH/Qwen3-0.6B "
                                                       r"--revision 9bd240869b5ec6f28964a635cd421a80fcad9dc8"):
        hub_module.pull_bundle(bundle, ModelStore(store))
    assert not ModelStore(store).path_for("qwen3:0.6b-axcl").exists()


def test_config_naming_files_the_repository_lacks(store: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_hub(store, "qwen3:0.6b-axcl", monkeypatch)
    del fake.files["qwen3_p128_l27_together.axmodel"]
    fake.listed_sizes = {k: len(v) for k, v in fake.files.items()}
    code, _, err = cli("pull", "qwen3:0.6b-axcl")
    assert code == 1 and "config.json names 1 file(s)" in err and "qwen3_p128_l27_together.axmodel" in err


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("axmodel_num", 0, "axmodel_num"),
    ("template_filename_axmodel", "qwen3_p128_l_together.axmodel", "exactly one %d"),
    ("filename_post_axmodel", "../qwen3_post.axmodel", "inside the model directory"),
])
def test_invalid_axllm_config_is_a_clear_error(field: str, value: object, expected: str, tmp_path: Path) -> None:
    config = axllm_config(RECORDED["qwen3:0.6b-axcl"])
    config[field] = value
    tmp_path.joinpath("config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirectoryError, match=expected):
        scan_model_dir(tmp_path)


def test_config_naming_a_hugging_face_tokenizer_is_used_as_is(store: Path, tmp_path: Path) -> None:
    config = axllm_config(RECORDED["qwen3:0.6b-axcl"]) | {"url_tokenizer_model": "tok/tokenizer.json"}
    for rel in [config["template_filename_axmodel"] % i for i in range(28)] + ["qwen3_post.axmodel", EMBED]:
        tmp_path.joinpath(rel).write_bytes(b"stand-in model file")
    (tmp_path / "tok").mkdir()
    for f in tokenizer_dir(store).iterdir():
        (tmp_path / "tok" / f.name).write_bytes(f.read_bytes())
    tmp_path.joinpath("config.json").write_text(json.dumps(config))
    assert scan_model_dir(tmp_path).tokenizer_dir == tmp_path / "tok"
    selection = hub_module.configured_selection(scan_model_dir(tmp_path).bundle_config)  # type: ignore[arg-type]
    assert selection.selects("tok/tokenizer.json") and selection.selects("qwen3_p128_l27_together.axmodel")
    assert not selection.selects("qwen3_tokenizer.txt") and not selection.selects("README.md")
