"""What every benchmark shares: the checkout on the import path, devices and their names, timing,
tables, CSV and report files named by hardware and date (Liger-Kernel's one bench harness).

Run the benchmarks as scripts from the repository (``python bench/bench_train.py``,
``python bench/kernels/bench_augment.py``); they import this module with ``from harness import ...``
(``bench/`` is put on the path by the script itself, the checkout by :data:`REPO` here).
"""
from __future__ import annotations

import csv
import datetime as _dt
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"
# the folder with the real-data archives (cifar-10-subset-python.tar.gz, tiny-imagenet-100.tar.gz):
# $UEPERF_SHARED_DATA, else ../shared/data beside the repository
SHARED_DATA = os.environ.get("UEPERF_SHARED_DATA", str(REPO.parent / "shared" / "data"))

import torch  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(name: str) -> torch.device:
    """``auto`` → cuda when there is one; a cuda request without CUDA exits with the reason."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine")
    return dev


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_name() -> str:
    """The CPU's model name (the one ueperf records in every run's config.json)."""
    from ueperf.engine.trainer import cpu_model
    return cpu_model()


def hardware_name(device: torch.device) -> str:
    """The GPU's name on CUDA, else the CPU's with its core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({os.cpu_count()} cores)"


def hardware_tag(device: torch.device = torch.device("cpu")) -> str:
    """A file-name-safe tag: ``nvidia-h100-80gb-hbm3``, ``cpu-2core``."""
    if device.type == "cuda":
        return re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(device)).strip("-").lower()
    return f"cpu-{os.cpu_count()}core"


def today() -> str:
    return _dt.date.today().isoformat()


def result_path(stem: str, device: torch.device = torch.device("cpu"), suffix: str = ".md") -> Path:
    """``bench/results/<stem>_<hardware>_<date><suffix>``."""
    return RESULTS / f"{stem}_{hardware_tag(device)}_{today()}{suffix}"


def versions() -> str:
    try:
        import triton
        tv = triton.__version__
    except Exception:  # noqa: BLE001 — report, never fail
        tv = "absent"
    return f"torch {torch.__version__}, triton {tv}, python {platform.python_version()}"


def timeit_ms(fn, device: torch.device, *, warmup: int, reps: int) -> float:
    """Median wall time of ``fn()`` in milliseconds (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        times = []
        for _ in range(reps):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def print_table(rows: Sequence[Dict], columns: Sequence[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))


def write_csv(rows: List[Dict], columns: Sequence[str], out_dir: str, kernel: str, device: torch.device) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{kernel}_{hardware_tag(device)}_{today()}.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def triton_skip_reason(device: torch.device):
    from ueperf.kernels._dispatch import triton_available
    if device.type != "cuda":
        return "triton: skipped, needs a CUDA device (the CPU interpreter is not a speed path)"
    if not triton_available():
        return "triton: skipped, triton is not importable"
    return None


def compile_skip_reason(device: torch.device):
    if device.type != "cuda":
        return "torch.compile: skipped, benchmarked on CUDA only (inductor on CPU needs a C++ toolchain)"
    return None


HAND_WRITTEN = "## Reading (written by hand"


def hand_written(report: str) -> str:
    """The hand-written section of a report's text: from its line starting with ``HAND_WRITTEN`` to
    the end ("" when it has none)."""
    if report.startswith(HAND_WRITTEN):
        return report
    at = report.find("\n" + HAND_WRITTEN)
    return report[at + 1:] if at >= 0 else ""


def write_report(path: Path, lines: Sequence[str]) -> None:
    """Write a Markdown report (lines joined, trailing newline), echo it, and say where it went.
    A report regenerated over one that has a hand-written section (from a line starting with
    ``HAND_WRITTEN`` to the end) keeps that section at its end, and says so: regenerating the
    tables never loses the reading of them."""
    path = Path(path)
    text = "\n".join(lines) + "\n"
    kept = hand_written(path.read_text()) if path.is_file() else ""
    if kept and HAND_WRITTEN not in text:
        text = text.rstrip("\n") + "\n\n" + kept.rstrip("\n") + "\n"
        print(f"kept the hand-written section of {path} (from its '{HAND_WRITTEN}...' heading on): "
              "check that it still reads true", file=sys.stderr)
    path.write_text(text)
    print(text, end="")
    print(f"wrote {path}", file=sys.stderr)
