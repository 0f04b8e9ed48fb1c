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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the shared harness

import torch  # noqa: E402
from harness import (DTYPES, REPO, compile_skip_reason, hardware_name, pick_device, print_table,  # noqa: E402
                     timeit_ms, triton_skip_reason, versions, write_csv)

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


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
