"""Benchmark the fused PGD step (ℓ∞ and ℓ2) against plain torch and torch.compile.

Providers:
  triton         ueperf.kernels.pgd.pgd_step_triton (ℓ∞: one element-wise pass; ℓ2: one
                 program per sample, two sweeps)
  torch          pgd_step_ref (eager plain torch)
  torch.compile  torch.compile(pgd_step_ref)
  copy           the floor for one fused step: read δ, g and x once and write δ once
                 (``torch.addcmul(d, g, x, out=buf)``); the table reports time / copy time.

Triton and torch.compile are skipped with a printed reason when CUDA is absent; torch and
copy always run, with small CPU defaults. Timing and CSV output as in bench_augment.py.

Usage::

    PYTHONPATH=. python bench/kernels/bench_pgd.py                          # CPU smoke
    PYTHONPATH=. python bench/kernels/bench_pgd.py --device cuda --batch 512 --size 32
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the shared harness

import torch  # noqa: E402
from harness import (  # noqa: E402
    DTYPES,
    REPO,
    compile_skip_reason,
    hardware_name,
    pick_device,
    print_table,
    timeit_ms,
    triton_skip_reason,
    versions,
    write_csv,
)

# ε and α per norm: EM/REM ℓ∞ 8/255 with 0.8/255 steps [spec §2.1/§3.1]; ℓ2 budget 0.5 [ours].
SETTINGS = {"linf": dict(eps=8 / 255, alpha=0.8 / 255), "l2": dict(eps=0.5, alpha=0.1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--batch", type=int, default=None, help="samples (default 512 GPU, 64 CPU)")
    ap.add_argument("--size", type=int, default=32, help="image height = width, pixels (3 channels)")
    ap.add_argument("--norm", choices=["linf", "l2", "both"], default="both")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="dtype of δ, g, x")
    ap.add_argument("--providers", default="triton,torch,torch.compile,copy")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up calls (default 10 GPU, 2 CPU)")
    ap.add_argument("--reps", type=int, default=None, help="timed calls (default 50 GPU, 5 CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "bench" / "results"), help="CSV output folder")
    args = ap.parse_args(argv)

    from ueperf.kernels.pgd import pgd_step_ref, pgd_step_triton

    device = pick_device(args.device)
    gpu = device.type == "cuda"
    n = args.batch or (512 if gpu else 64)
    warmup = args.warmup if args.warmup is not None else (10 if gpu else 2)
    reps = args.reps if args.reps is not None else (50 if gpu else 5)
    dt = DTYPES[args.dtype]
    norms = ["linf", "l2"] if args.norm == "both" else [args.norm]

    gen = torch.Generator(device=device).manual_seed(args.seed)
    shape = (n, 3, args.size, args.size)
    x = torch.rand(shape, generator=gen, device=device).to(dt)
    d = ((torch.rand(shape, generator=gen, device=device) * 2 - 1) * 8 / 255).to(dt)
    g = torch.randn(shape, generator=gen, device=device).to(dt)
    buf = torch.empty_like(d)

    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    notes = []
    compiled = None
    if "triton" in providers and triton_skip_reason(device):
        notes.append(triton_skip_reason(device))
        providers.remove("triton")
    if "torch.compile" in providers:
        if compile_skip_reason(device):
            notes.append(compile_skip_reason(device))
            providers.remove("torch.compile")
        else:
            compiled = torch.compile(pgd_step_ref)
    unknown = set(providers) - {"triton", "torch", "torch.compile", "copy"}
    if unknown:
        raise SystemExit(f"unknown providers {sorted(unknown)}; choose from triton, torch, "
                         f"torch.compile, copy")

    print(f"# PGD step benchmark — {hardware_name(device)} ({device}), {versions()}")
    print(f"# N={n} shape={shape} dtype={args.dtype} warmup={warmup} reps={reps} (median)")
    for note in notes:
        print(f"# {note}")

    io_bytes = 4 * d.numel() * d.element_size()  # 3 reads + 1 write, the one-pass floor
    rows = []
    for norm in norms:
        kw = dict(norm=norm, sign=-1.0, **SETTINGS[norm])
        fns = {}
        for p in providers:
            if p == "triton":
                fns[p] = lambda kw=kw: pgd_step_triton(d, g, x, out=buf, **kw)
            elif p == "torch":
                fns[p] = lambda kw=kw: pgd_step_ref(d, g, x, **kw)
            elif p == "torch.compile":
                fns[p] = lambda kw=kw: compiled(d, g, x, **kw)
            elif p == "copy":
                fns[p] = lambda: torch.addcmul(d, g, x, out=buf)
        times = {p: timeit_ms(fn, device, warmup=warmup, reps=reps) for p, fn in fns.items()}
        for p, ms in times.items():
            rows.append({
                "norm": norm, "provider": p, "median_ms": f"{ms:.4f}",
                "GB_per_s": f"{io_bytes / (ms / 1e3) / 1e9:.4g}",
                "x_copy": f"{ms / times['copy']:.2f}" if "copy" in times else "",
                "batch": n, "size": args.size, "dtype": args.dtype, "device": str(device),
                "hardware": hardware_name(device),
            })
    cols = ["norm", "provider", "median_ms", "GB_per_s", "x_copy", "batch", "size", "dtype",
            "device", "hardware"]
    print_table(rows, cols[:5])
    path = write_csv(rows, cols, args.out, "pgd", device)
    print(f"# wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
