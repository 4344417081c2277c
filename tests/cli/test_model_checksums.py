"""A damaged model is found and repaired: checksums recorded at conversion and pull, checked by doctor, load, pull.

Stores are temporary (AX_LLM_MODELS); the default model's repair converts a tiny random checkpoint in place of
SmolLM2's GGUF, so the test exercises pull's verify-then-convert path without the real download.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from ax_llm_provider.cli import hub as hub_module
from ax_llm_provider.model.checksums import CHECKSUMS_NAME, verify_files
from ax_llm_provider.model.errors import ModelDamagedError
from ax_llm_provider.model.layout import scan_model_dir
from ax_llm_provider.model.loader import load_model
from ax_llm_provider.model.store import ModelStore
from tests.cli.test_pull_layouts import fake_hub

Cli = Callable[..., tuple[int, str, str]]


def flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def layer(root: Path, index: int = 1) -> Path:
    return scan_model_dir(root).layers[index]


def test_conversion_records_every_file(store: Path) -> None:
    root = store / "tiny" / "llama"
    recorded = json.loads((root / CHECKSUMS_NAME).read_text())["files"]
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert set(recorded) == on_disk - {CHECKSUMS_NAME, "ax_model.json"}
    files = scan_model_dir(root)
    for path in (*files.layers, files.post, files.embedding):
        rel = path.relative_to(root).as_posix()
        assert recorded[rel]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_doctor_names_a_layer_with_a_flipped_byte(store: Path, cli: Cli) -> None:
    code, out, _ = cli("doctor", "tiny:llama", "--backend", "onnx", "--tokens", "2")
    assert code == 0 and "[ ok ] checksums:" in out, out
    damaged = layer(store / "tiny" / "llama")
    flip_middle(damaged)
    code, out, _ = cli("doctor", "tiny:llama", "--backend", "onnx", "--tokens", "2")
    assert code == 1
    assert f"[FAIL] checksums: {damaged} differs from its recorded sha256" in out
    assert "1 of" in out and "`ax-llm pull --force tiny:llama`" in out


def test_doctor_says_how_to_record_missing_checksums(store: Path, cli: Cli) -> None:
    (store / "tiny" / "llama" / CHECKSUMS_NAME).unlink()
    code, out, _ = cli("doctor", "tiny:llama", "--backend", "onnx", "--tokens", "2")
    assert code == 0 and "[warn] checksums: no ax_checksums.json" in out and "ax-llm pull --force tiny:llama" in out


def test_a_truncated_layer_is_refused_at_load_with_the_pull_hint(store: Path, cli: Cli) -> None:
    root = store / "tiny" / "llama"
    damaged = layer(root)
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    with pytest.raises(ModelDamagedError) as caught:
        load_model(root, name="tiny:llama", backend="onnx")
    assert damaged.name in str(caught.value) and "truncated" in str(caught.value)
    assert "run `ax-llm pull --force tiny:llama`" in str(caught.value)
    code, _, err = cli("run", "tiny:llama", "hi", "--backend", "onnx", "-o", "num_predict=2")
    assert code != 0 and damaged.name in err and "ax-llm pull --force tiny:llama" in err


def test_pull_repairs_a_damaged_default_model(store: Path, tiny_twin: Callable[..., Path], cli: Cli,
                                              monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """smollm2:135m in a temporary store, as a tiny twin; its 'GGUF' is a tiny checkpoint (converted again)."""
    from tests.fixtures.tiny_models import make_tiny_hf_model

    dest = ModelStore(store).path_for("smollm2:135m")
    shutil.copytree(tiny_twin("llama"), dest)
    source = make_tiny_hf_model(tmp_path / "checkpoint", "llama")
    fetched: list[object] = []
    monkeypatch.setattr("ax_llm_provider.model.pull.fetch_gguf", lambda *a: fetched.append(a) or source)

    assert cli("pull", "smollm2:135m")[0] == 0 and fetched == []  # intact: nothing fetched, nothing converted
    damaged = layer(dest, 0)
    flip_middle(damaged)
    code, _, err = cli("pull", "smollm2:135m")
    assert code == 0, err
    assert len(fetched) == 1 and verify_files(dest).ok and verify_files(dest).recorded
    with load_model(dest, name="smollm2:135m", backend="onnx") as model:
        assert model.stack.spec.layers == len(scan_model_dir(dest).layers)
    code, out, err = cli("run", "smollm2:135m", "hi", "--backend", "onnx", "-o", "num_predict=2")
    assert code == 0, err


def test_a_pulled_bundle_records_what_was_fetched_and_refetches_a_damaged_file(
        store: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    name = "qwen3:0.6b-axcl"  # the flat layout, with a base model's tokenizer from a second repository
    fake = fake_hub(store, name, monkeypatch)
    assert cli("pull", name)[0] == 0
    dest = ModelStore(store).path_for(name)
    recorded = json.loads((dest / CHECKSUMS_NAME).read_text())["files"]
    assert set(fake.fetched(fake.repo_id)) <= set(recorded)
    for rel in fake.fetched(fake.repo_id):
        assert recorded[rel]["sha256"] == hashlib.sha256(fake.files[rel]).hexdigest()
    assert any(rel.startswith("hf_tokenizer/") for rel in recorded)

    layer_file = layer(dest, 3)
    layer_file.write_bytes(layer_file.read_bytes()[:-1] + b"\x00")
    (dest / "hf_tokenizer" / "tokenizer_config.json").unlink()
    before = len(fake.downloads)
    code, _, err = cli("pull", name)
    assert code == 0, err
    again = fake.downloads[before:]
    assert [(d["repo_id"], d["written"]) for d in again] == [
        (fake.repo_id, [layer_file.name]), (hub_module.HUB_BUNDLES[name].tokenizer.repo_id,  # type: ignore[union-attr]
                                            ["tokenizer_config.json"])]
    assert verify_files(dest).ok and not (dest / ".cache").exists()


def test_a_refetch_that_still_differs_is_an_error(store: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    name = "qwen2.5:0.5b-axcl"  # the per-directory layout
    fake = fake_hub(store, name, monkeypatch)
    assert cli("pull", name)[0] == 0
    dest = ModelStore(store).path_for(name)
    damaged = layer(dest, 0)
    flip_middle(damaged)
    rel = damaged.relative_to(dest).as_posix()
    fake.corrupt[rel] = b"the hub now serves something else"
    code, _, err = cli("pull", name)
    assert code == 1 and rel in err and f"ax-llm pull --force {name}" in err


def test_a_download_that_differs_from_the_published_digest_is_refused_and_fetched_again(
        store: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    name = "qwen2.5:0.5b-axcl"
    fake = fake_hub(store, name, monkeypatch)
    dest = ModelStore(store).path_for(name)
    layer_rel = next(p for p in fake.files if p.endswith("_l2_together.axmodel"))
    config_rel = next(p for p in fake.files if p.endswith("config.json") and "tokenizer" not in p)
    fake.corrupt[layer_rel] = bytes(len(fake.files[layer_rel]))  # the right size, the wrong bytes
    fake.corrupt[config_rel] = fake.files[config_rel].replace(b"{", b"[", 1)
    code, _, err = cli("pull", name)
    assert code == 1 and "2 downloaded file(s) differ from the digest the hub publishes" in err, err
    assert layer_rel in err and config_rel in err and "run the same pull again" in err
    partial = dest.parent / f".{dest.name}.partial"
    assert not dest.exists() and not (partial / layer_rel).exists() and not (partial / config_rel).exists()
    fake.corrupt.clear()
    assert cli("pull", name)[0] == 0
    assert (dest / layer_rel).read_bytes() == fake.files[layer_rel] and verify_files(dest).ok
