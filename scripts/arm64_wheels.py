"""The wheel matrix a Raspberry Pi 5 needs: every dependency of the project, resolved by the host's pip for
aarch64 Linux (manylinux up to glibc 2.39, Ubuntu 24.04's) and CPython 3.11 and 3.12, binary wheels only.

    python scripts/arm64_wheels.py [--extras cpu,structured,langchain,llamaindex,server,axengine]

Prints a Markdown table (package, version, the wheel's tags for cp312 and cp311). A package that has no
aarch64 wheel makes the resolution fail, and the script says which Python it failed for.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLATFORMS = [f"manylinux_2_{minor}_aarch64" for minor in range(39, 16, -1)] + ["manylinux2014_aarch64",
                                                                                "linux_aarch64"]


def resolve(python_version: str, extras: str) -> dict[str, tuple[str, str]]:
    """{package: (version, wheel tags)} for one CPython version; raises SystemExit when pip cannot resolve."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
                   "--disable-pip-version-check", "--only-binary", ":all:", "--implementation", "cp",
                   "--python-version", python_version, "--target", str(Path(tmp) / "target"),
                   "--report", str(report), *(arg for p in PLATFORMS for arg in ("--platform", p)),
                   f"{REPO}[{extras}]"]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SystemExit(f"no aarch64 binary resolution for CPython {python_version}:\n{result.stderr[-2000:]}")
        installs = json.loads(report.read_text())["install"]
    matrix = {}
    for item in installs:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        filename = item["download_info"]["url"].rsplit("/", 1)[-1]
        tags = "-".join(filename.removesuffix(".whl").split("-")[-3:]) if filename.endswith(".whl") else filename
        matrix[name.lower()] = (version, tags)
    return matrix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extras", default="cpu,structured,langchain,llamaindex,server,axengine")
    args = parser.parse_args()
    cp312, cp311 = resolve("3.12", args.extras), resolve("3.11", args.extras)
    print("| package | version (cp312) | cp312 aarch64 wheel | cp311 aarch64 wheel |")
    print("|---|---|---|---|")
    for name in sorted(set(cp312) | set(cp311)):
        if name == "ax-llm-provider":
            continue
        v312, t312 = cp312.get(name, ("-", "none"))
        v311, t311 = cp311.get(name, ("-", "none"))
        other = t311 if v311 == v312 else f"{v311}: {t311}"
        print(f"| {name} | {v312} | {t312} | {other} |")


if __name__ == "__main__":
    main()
