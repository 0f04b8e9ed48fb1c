"""Benchmark the fused augmentation kernel against plain torch and torch.compile.

Providers:
  triton         ueperf.kernels.augment.augment_triton (one kernel from uint8)
  torch          augment_ref (eager plain torch: the reference and the CPU path)
  torch.compile  torch.compile(augment_ref)
  copy           the floor: read the N·H·W·3 uint8 bytes and write the output bytes once
                 (``out.copy_(x_u8)``, a cast), i.e. the memory traffic any one-pass kernel
                 must do. The table reports every provider's time / copy time.
  sample_params  drawing the per-sample random parameters (torch, on the device)

Triton and torch.compile are skipped with a printed reason when CUDA is absent (the Triton
interpreter is for correctness, not speed; inductor on CPU needs a C++ toolchain); the torch
and copy timings always run, with small CPU defaults.

Timing: CUDA events around each call after warm-up, median over ``--reps`` (GPU); perf_counter
median on CPU. Inputs stay resident across repetitions (a training loop's batch was just
written by the loader, so L2-resident data is the realistic case for small images).

Usage::

    PYTHONPATH=. python bench/kernels/bench_augment.py                       # CPU smoke
    PYTHONPATH=. python bench/kernels/bench_augment.py --device cuda --batch 512 --size 32
    PYTHONPATH=. python bench/kernels/bench_augment.py --device cuda --batch 256 --size 224

Writes a CSV to ``--out`` (default bench/results/), named by kernel, hardware and date.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import platform
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


# ---------------------------------------------------------------------------------------------
# Shared helpers (bench_pgd.py imports these)
# ---------------------------------------------------------------------------------------------


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine")
    return dev


def hardware_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


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


def print_table(rows, columns) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))


def write_csv(rows, columns, out_dir: str, kernel: str, device: torch.device) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hw = re.sub(r"[^A-Za-z0-9]+", "-", hardware_name(device)).strip("-").lower() or device.type
    path = out / f"{kernel}_{hw}_{_dt.date.today().isoformat()}.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def versions() -> str:
    try:
        import triton

        tv = triton.__version__
    except Exception:  # noqa: BLE001 — report, never fail
        tv = "absent"
    return f"torch {torch.__version__}, triton {tv}, python {platform.python_version()}"


# ---------------------------------------------------------------------------------------------
# Augmentation benchmark
# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--batch", type=int, default=None, help="images per batch (default 512 GPU, 64 CPU)")
    ap.add_argument("--size", type=int, default=32, help="image height = width, pixels")
    ap.add_argument("--padding", type=int, default=4, help="crop padding, pixels")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="output dtype")
    ap.add_argument("--no-cg", action="store_true", help="crop + flip only (no colour jitter / gray)")
    ap.add_argument("--normalize", action="store_true", help="also normalise with CIFAR mean/std")
    ap.add_argument("--providers", default="triton,torch,torch.compile,copy,sample_params")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up calls (default 10 GPU, 2 CPU)")
    ap.add_argument("--reps", type=int, default=None, help="timed calls (default 50 GPU, 5 CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "bench" / "results"), help="CSV output folder")
    args = ap.parse_args(argv)

    from ueperf.kernels.augment import augment_ref, augment_triton, sample_params

    device = pick_device(args.device)
    gpu = device.type == "cuda"
    n = args.batch or (512 if gpu else 64)
    warmup = args.warmup if args.warmup is not None else (10 if gpu else 2)
    reps = args.reps if args.reps is not None else (50 if gpu else 5)
    out_dtype = DTYPES[args.dtype]
    cg = not args.no_cg
    norm = dict(mean=CIFAR_MEAN, std=CIFAR_STD) if args.normalize else {}

    gen = torch.Generator(device=device).manual_seed(args.seed)
    x = torch.randint(0, 256, (n, args.size, args.size, 3), dtype=torch.uint8, device=device,
                      generator=gen)
    draw = dict(padding=args.padding, flip=True, jitter=(0.4, 0.4, 0.4, 0.1) if cg else None,
                jitter_p=0.8, gray_p=0.2 if cg else 0.0, generator=gen, device=device)
    params = sample_params(n, args.size, args.size, **draw)
    sink = torch.empty((n, args.size, args.size, 3), dtype=out_dtype, device=device)

    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    fns, notes = {}, []
    for p in providers:
        if p == "triton":
            why = triton_skip_reason(device)
            if why:
                notes.append(why)
                continue
            fns[p] = lambda: augment_triton(x, params, out_dtype=out_dtype, **norm)
        elif p == "torch":
            fns[p] = lambda: augment_ref(x, params, out_dtype=out_dtype, **norm)
        elif p == "torch.compile":
            why = compile_skip_reason(device)
            if why:
                notes.append(why)
                continue
            compiled = torch.compile(augment_ref)
            fns[p] = lambda: compiled(x, params, out_dtype=out_dtype, **norm)
        elif p == "copy":
            fns[p] = lambda: sink.copy_(x)  # read uint8 NHWC, write out_dtype NHWC
        elif p == "sample_params":
            fns[p] = lambda: sample_params(n, args.size, args.size, **draw)
        else:
            raise SystemExit(f"unknown provider {p!r}; choose from triton, torch, torch.compile, "
                             f"copy, sample_params")

    print(f"# augment benchmark — {hardware_name(device)} ({device}), {versions()}")
    print(f"# N={n} H=W={args.size} padding={args.padding} out={args.dtype} cg={cg} "
          f"normalize={args.normalize} warmup={warmup} reps={reps} (median)")
    for note in notes:
        print(f"# {note}")

    times = {p: timeit_ms(fn, device, warmup=warmup, reps=reps) for p, fn in fns.items()}
    io_bytes = n * args.size * args.size * 3 * (1 + sink.element_size())
    rows = []
    for p, ms in times.items():
        rows.append({
            "provider": p, "device": str(device), "hardware": hardware_name(device),
            "batch": n, "size": args.size, "out_dtype": args.dtype, "cg": cg,
            "normalize": args.normalize, "median_ms": f"{ms:.4f}",
            "img_per_s": f"{n / (ms / 1e3):.4g}",
            "GB_per_s": "" if p == "sample_params" else f"{io_bytes / (ms / 1e3) / 1e9:.4g}",
            "x_copy": f"{ms / times['copy']:.2f}" if "copy" in times else "",
        })
    cols = ["provider", "median_ms", "img_per_s", "GB_per_s", "x_copy", "batch", "size",
            "out_dtype", "cg", "normalize", "device", "hardware"]
    print_table(rows, cols[:5])
    path = write_csv(rows, cols, args.out, "augment", device)
    print(f"# wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
