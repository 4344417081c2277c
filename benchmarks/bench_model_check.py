"""Load-time cost of the cheap checksum check (sizes + first and last 64 KiB of each file) on the SmolLM2 twin.

    python benchmarks/bench_model_check.py [--repeat 7]

The stored twin is copied to a temporary directory and its checksums recorded there (the store is left as it
is). Then `load_model` (onnx backend) runs `--repeat` times with the check and as often with the check replaced
by a no-op, alternating so drift on a shared machine hits both alike; medians are printed with their ratio, and
beside them the check alone and the full verification that `ax-llm doctor` / `ax-llm pull` do. Files are in the
page cache after the copy: these are warm-cache figures (a cold first load reads the whole model anyway).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _common import model_dir

from ax_llm_provider.model import loader
from ax_llm_provider.model.checksums import check_before_load, record_checksums, verify_files


def timed(fn: object) -> float:
    started = time.perf_counter()
    fn()  # type: ignore[operator]
    return (time.perf_counter() - started) * 1000


def load(path: Path) -> None:
    loader.load_model(path, name="smollm2:135m", backend="onnx").close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-check-") as tmp:
        path = Path(tmp) / "135m"
        shutil.copytree(model_dir(), path)
        record = record_checksums(path)
        size_mb = sum(f.size for f in record.files.values()) / 1e6
        load(path)  # warm-up: imports, onnxruntime initialisation
        checked, unchecked = [], []
        original = loader.check_before_load
        for _ in range(args.repeat):
            checked.append(timed(lambda: load(path)))
            loader.check_before_load = lambda root, name=None: None  # the baseline: no check
            try:
                unchecked.append(timed(lambda: load(path)))
            finally:
                loader.check_before_load = original
        alone = [timed(lambda: check_before_load(path, "smollm2:135m")) for _ in range(args.repeat)]
        full = [timed(lambda: verify_files(path)) for _ in range(3)]
    with_ms, without_ms = statistics.median(checked), statistics.median(unchecked)
    print(f"SmolLM2-135M twin, {len(record.files)} files, {size_mb:.0f} MB; {platform.machine()}, "
          f"medians of {args.repeat} loads each (onnx backend, warm page cache)")
    print(f"  load without the check (baseline): {without_ms:8.1f} ms")
    print(f"  load with the cheap check:         {with_ms:8.1f} ms  (x{with_ms / without_ms:.3f}, "
          f"{with_ms - without_ms:+.1f} ms)")
    print(f"  the cheap check alone:             {statistics.median(alone):8.1f} ms")
    print(f"  full sha256 verification (doctor, pull; median of 3): {statistics.median(full):8.1f} ms")


if __name__ == "__main__":
    main()
