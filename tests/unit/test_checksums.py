"""model/checksums.py on a synthetic directory: what each check catches, the sidecar's format, the notes."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from ax_llm_provider.model import checksums
from ax_llm_provider.model.checksums import (
    CHECKSUMS_NAME,
    SAMPLE_BYTES,
    check_before_load,
    record_checksums,
    verify_files,
    verify_sample,
)
from ax_llm_provider.model.errors import ModelDamagedError, ModelDirectoryError


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def model(tmp_path: Path) -> Path:
    root = tmp_path / "m"
    (root / "tok").mkdir(parents=True)
    (root / "big.bin").write_bytes(bytes(range(256)) * (4 * SAMPLE_BYTES // 256))  # 4 samples long
    (root / "small.onnx").write_bytes(b"tiny graph")
    (root / "tok" / "tokenizer.json").write_text("{}")
    (root / "ax_model.json").write_text('{"format": "vendor"}')
    (root / ".cache").mkdir()
    (root / ".cache" / "resume").write_text("downloader bookkeeping")
    record_checksums(root)
    return root


def test_the_sidecar_records_every_model_file(model: Path) -> None:
    data = json.loads((model / CHECKSUMS_NAME).read_text())
    assert data["format"] == "ax-llm-checksums/1" and data["sample_bytes"] == SAMPLE_BYTES
    assert set(data["files"]) == {"big.bin", "small.onnx", "tok/tokenizer.json"}  # not the override, not .cache
    big = (model / "big.bin").read_bytes()
    assert data["files"]["big.bin"] == {
        "size": len(big), "sha256": hashlib.sha256(big).hexdigest(),
        "head": hashlib.sha256(big[:SAMPLE_BYTES]).hexdigest(), "tail": hashlib.sha256(big[-SAMPLE_BYTES:]).hexdigest()}
    assert verify_files(model).ok and verify_sample(model).ok and verify_files(model).checked == 3


def test_a_flipped_byte_in_the_middle_is_found_by_the_full_check_only(model: Path) -> None:
    flip(model / "big.bin", 2 * SAMPLE_BYTES)
    assert verify_sample(model).ok  # the load's sample reads only the first and last 64 KiB
    found = verify_files(model)
    assert list(found.problems) == ["big.bin"] and "sha256" in found.problems["big.bin"]


@pytest.mark.parametrize("offset", [0, -1])
def test_damage_at_either_end_is_found_at_load(model: Path, offset: int) -> None:
    flip(model / "big.bin", offset)
    with pytest.raises(ModelDamagedError, match=r"big\.bin differs from its recorded checksum") as caught:
        check_before_load(model, "qwen3:0.6b-axcl")
    assert "`ax-llm pull --force qwen3:0.6b-axcl`" in str(caught.value)
    assert list(caught.value.problems) == ["big.bin"]


def test_truncated_and_missing_files_are_named(model: Path) -> None:
    (model / "big.bin").write_bytes((model / "big.bin").read_bytes()[:1000])
    (model / "tok" / "tokenizer.json").unlink()
    found = verify_sample(model)
    assert found.problems == {"big.bin": f"is 1000 bytes, recorded {4 * SAMPLE_BYTES} (truncated or overwritten)",
                              "tok/tokenizer.json": "is missing"}
    assert verify_files(model).problems == found.problems
    with pytest.raises(ModelDamagedError, match=r"big\.bin is 1000 bytes.*tok/tokenizer\.json is missing"):
        check_before_load(model, "smollm2:135m")


def test_a_path_gets_the_generic_hint(model: Path) -> None:
    flip(model / "small.onnx", 0)
    with pytest.raises(ModelDamagedError, match=r"ax-llm pull --force NAME.*ax-llm convert --force SRC"):
        check_before_load(model, str(model))


def test_editing_the_override_or_the_cache_is_not_damage(model: Path) -> None:
    (model / "ax_model.json").write_text('{"format": "vendor", "tokenizer_dir": "tok"}')
    (model / ".cache" / "resume").write_text("changed")
    check_before_load(model, "x:y")
    assert verify_files(model).ok


def test_an_unrecorded_model_loads_with_one_note(model: Path, caplog: pytest.LogCaptureFixture) -> None:
    (model / CHECKSUMS_NAME).unlink()
    checksums._noted_unrecorded.discard(model)
    with caplog.at_level(logging.INFO, logger="ax_llm_provider.model.checksums"):
        check_before_load(model, "x:y")
        check_before_load(model, "x:y")
    notes = [r for r in caplog.records if CHECKSUMS_NAME in r.getMessage()]
    assert len(notes) == 1 and "pull --force" in notes[0].getMessage()
    assert not verify_files(model).recorded and verify_files(model).ok


def test_a_damaged_sidecar_is_a_clear_error(model: Path) -> None:
    (model / CHECKSUMS_NAME).write_text('{"format": "ax-llm-checksums/1", "files": {"a": {"size": -1}}}')
    with pytest.raises(ModelDirectoryError, match=r"ax_checksums\.json is damaged.*pull --force"):
        check_before_load(model, "x:y")


def test_full_check_reports_progress_in_mib(model: Path) -> None:
    (model / "huge.bin").write_bytes(b"\0" * (40 << 20))
    record_checksums(model)
    seen: list[tuple[str, int, int]] = []
    assert verify_files(model, lambda stage, done, total: seen.append((stage, done, total))).ok
    assert seen[-1][1] == seen[-1][2] == 40 and len(seen) >= 3 and seen[0][0] == "verifying checksums"


@pytest.mark.parametrize("path", ["../outside.bin", "/etc/passwd", "tok/../../x", "a\\..\\b", ""])
def test_a_record_naming_a_path_outside_the_directory_is_refused(model: Path, path: str) -> None:
    data = json.loads((model / CHECKSUMS_NAME).read_text())
    data["files"][path] = data["files"]["small.onnx"]
    (model / CHECKSUMS_NAME).write_text(json.dumps(data))
    with pytest.raises(ModelDirectoryError, match=r"ax_checksums\.json is damaged"):
        verify_files(model)
