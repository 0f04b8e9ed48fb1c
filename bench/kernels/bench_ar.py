"""Benchmark the AR recurrence of AP poisons: torch reference vs the C++ extension.

Providers:
  torch   ueperf.kernels.ar.ar_generate_ref: vectorised over all (image, channel) planes, a Python
          loop over the (H+pad−2)(W+pad−2) target positions (~17 small tensor ops each)
  cpp     ueperf._C_ar.ar_generate (csrc/ar.cpp): one tight double loop per plane, planes spread
          over threads with at::parallel_for (skipped with a printed reason when not built:
          ``pip install --no-build-isolation -e .``)

Both run on the CPU: the op is CPU-only by design (see the ueperf.kernels.ar docstring: the
recurrence is a sequential scan per plane; AP generation is one-time and small). The table
reports the median time per call, images per second and the speed-up over torch; the two
outputs are also checked to be bit-equal. Timing: perf_counter, median over ``--reps`` after
``--warmup`` calls, as in bench_augment.py.

Usage::

    PYTHONPATH=. python bench/kernels/bench_ar.py                       # N=5000 CIFAR-size (36×36 start)
    PYTHONPATH=. python bench/kernels/bench_ar.py --n 50000 --threads 16 --providers cpp
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the shared harness

import torch  # noqa: E402
from harness import REPO, hardware_name, print_table, timeit_ms, versions, write_csv  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp64": torch.float64}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="images (each 3 planes)")
    ap.add_argument("--size", type=int, default=32, help="image side, pixels; the start signal is size+pad")
    ap.add_argument("--pad", type=int, default=4, help="start-signal padding cropped by AP [spec §2.7: 36×36 → 32×32]")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--providers", default="torch,cpp")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "bench" / "results"), help="CSV output folder")
    args = ap.parse_args(argv)

    from ueperf.kernels.ar import _load_extension, ar_generate_ref
    from ueperf.protections.ap import AutoregressivePerturbation, find_processes

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    dt = DTYPES[args.dtype]
    g = torch.Generator().manual_seed(args.seed)
    side = args.size + args.pad
    start = torch.randn((args.n, 3, side, side), generator=g).to(dt)
    # The real workload: 10 stable processes from AP's search, one per class, image i of class i mod 10
    # (raw random draws mostly diverge to inf/NaN, which would time special-value arithmetic instead).
    procs, _ = find_processes(10, args.size, args.size, AutoregressivePerturbation.Config(pad=args.pad), g)
    coeffs = procs[torch.arange(args.n) % 10].to(dt).contiguous()

    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    unknown = set(providers) - {"torch", "cpp"}
    if unknown:
        raise SystemExit(f"unknown providers {sorted(unknown)}; choose from torch, cpp")
    notes = []
    ext = _load_extension()
    if "cpp" in providers and ext is None:
        notes.append("cpp: skipped, ueperf._C_ar is not built (pip install --no-build-isolation -e .)")
        providers.remove("cpp")
    fns = {"torch": lambda: ar_generate_ref(start, coeffs)}
    if ext is not None:
        fns["cpp"] = lambda: ext.ar_generate(start, coeffs)

    print(f"# AR recurrence benchmark — {hardware_name(device)}, {torch.get_num_threads()} threads, {versions()}")
    print(f"# N={args.n} start=(N, 3, {side}, {side}) dtype={args.dtype} warmup={args.warmup} reps={args.reps} (median)")
    for note in notes:
        print(f"# {note}")
    if {"torch", "cpp"} <= set(providers):
        same = torch.equal(fns["torch"](), fns["cpp"]())
        print(f"# outputs bit-equal: {same}")

    times = {p: timeit_ms(fns[p], device, warmup=args.warmup, reps=args.reps) for p in providers}
    rows = []
    for p, ms in times.items():
        rows.append({
            "provider": p, "median_ms": f"{ms:.1f}", "images_per_s": f"{args.n / (ms / 1e3):.0f}",
            "speedup_vs_torch": f"{times['torch'] / ms:.1f}" if "torch" in times else "",
            "n": args.n, "side": side, "dtype": args.dtype, "threads": torch.get_num_threads(),
            "hardware": hardware_name(device),
        })
    cols = ["provider", "median_ms", "images_per_s", "speedup_vs_torch", "n", "side", "dtype", "threads", "hardware"]
    print_table(rows, cols[:4])
    path = write_csv(rows, cols, args.out, "ar", device)
    print(f"# wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
