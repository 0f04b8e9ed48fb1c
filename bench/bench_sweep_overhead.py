"""What running a sweep's cells costs besides training: launch, store open, trainer set-up, per cell
and per launcher, and what a 1,440-cell ImageNet-mini sweep would cost on 8 × H100.

    python bench/bench_sweep_overhead.py                         # CPU: 6 tiny cells per launcher
    python bench/bench_sweep_overhead.py --cells 8 --store-n 40000 --out bench/results/...md

1. **Tiny cells, every launcher.** ``--cells`` cells (clean synthetic data, ``--n`` images, 1 epoch of
   a 1/8-width ResNet-18, so training is a small part) run by ``python -m ueperf.sweep`` in a
   subprocess with each launcher: ``inline``; ``local`` with 1 and with ``--workers`` workers;
   ``inline --gpus-per-cell 2`` (torchrun, 2 gloo processes); submitit's local executor. From the
   cells' event logs (``OUT/events``): **launch** (a cell handed to the launcher → its process
   starts the cell: process start, imports, unpickling; for a pool worker after its first cell
   only the hand-over), **store** (opening the training store in that process), **set-up**
   (the trainer's own time outside the epoch loop: run folder, loaders, model, summary, plots),
   **train** (the epoch loop, ``summary.total_time_s``), and the sweep's wall time per cell.
2. **Store open at size.** A clean uint8 store of ``--store-n`` images of ``--size`` px and its
   ``random`` protection: seconds to open each with its sha256 checks and the protected store's
   checks against its clean source, and how many bytes one cell hashes (clean row, protected row;
   the grid now hands the open store to the trainer, the engine's own path reopens it).
3. **The estimate** for 10 rows × 8 countermeasures × 6 paradigms × 3 seeds on ImageNet-mini, from
   these numbers and stated assumptions (written into the report).

Writes ``bench/results/sweep_overhead_<hardware>_<date>.{md,json}``.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

from harness import REPO, cpu_name, hardware_tag, result_path, today, versions  # noqa: E402  (run as a script)


def _run_sweep(work: Path, name: str, args: List[str], extra: List[str], threads: int) -> Dict[str, Any]:
    out = work / name
    cmd = [sys.executable, "-m", "ueperf.sweep", *args, "--set", f"data.cache_dir={work / 'cache'}", "--out", str(out),
           "--quiet", *extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    t0 = time.time()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if r.returncode != 0:
        raise SystemExit(f"{name}: the sweep failed:\n{r.stderr[-3000:]}")
    from ueperf.launch import read_events
    return {"name": name, "extra": extra, "wall_s": wall, "t0": t0, "events": read_events(out)}


def _per_cell(res: Dict[str, Any]) -> Dict[str, Any]:
    """Launch / store / set-up / train per cell from the event logs."""
    rows = []
    for cell, evs in res["events"].items():
        start = next(e for e in evs if e["event"] == "start")
        done = next(e for e in evs if e["event"] == "done")
        rows.append({"cell": cell, "pid": start["pid"], "queued": start.get("queued"), "started": start["started"],
                     "end": done["t"], "store_s": done["store_s"], "run_s": done["run_s"],
                     "train_s": done.get("train_s") or 0.0})
    rows.sort(key=lambda r: r["started"])
    launch, first = [], []
    last_end: Dict[int, float] = {}
    for r in rows:  # a pool worker's later cells start when it is free, not when they were queued
        ready = max(r["queued"], last_end.get(r["pid"], r["queued"]))
        (first if r["pid"] not in last_end else launch).append(r["started"] - ready)
        last_end[r["pid"]] = r["end"]
    mean = lambda xs: statistics.fmean(xs) if xs else float("nan")  # noqa: E731
    n = len(rows)
    return {"cells": n, "wall_s": res["wall_s"], "wall_per_cell_s": res["wall_s"] / n,
            "launch_first_s": mean(first), "launch_next_s": mean(launch),
            "store_s": mean([r["store_s"] for r in rows]),
            "setup_s": mean([r["run_s"] - r["train_s"] for r in rows]),
            "train_s": mean([r["train_s"] for r in rows]),
            "overhead_per_cell_s": mean([r["end"] - r["started"] - r["train_s"] for r in rows]) + mean(first + launch),
            "processes": len({r["pid"] for r in rows})}


def store_open(work: Path, n: int, size: int) -> Dict[str, Any]:
    """Open times of a clean store and its ``random`` protection at ``n`` × ``size`` px, and the
    bytes one cell hashes on each row (counted by wrapping the store's sha256)."""
    import numpy as np

    import ueperf.data.store as store_mod
    from ueperf.data.protected import open_protected
    from ueperf.data.store import open_store, write_store
    from ueperf.grid import Cell, Grid, GridRunner, Row
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    y = (np.arange(n) % 10).astype(np.int64)
    clean_path = work / f"clean-{n}x{size}"
    write_store(clean_path, train=(x, y), test=(x[:1000], y[:1000]), classes=[str(i) for i in range(10)],
                name="bench")
    del x
    gb = (n + 1000) * size * size * 3 / 1e9
    g = Grid(dataset=str(clean_path), rows=[Row("clean"), Row("random", "random")], countermeasures=["nt"],
             out=work / "open", recipe="synthetic_smoke", progress=False,
             overrides=["train.epochs=1", "model.width=0.125", f"data.cache_dir={work / 'cache-open'}",
                        "train.batch_size=256", "train.eval_batch_size=1024"])
    runner = GridRunner(g)
    t = time.perf_counter()
    prot = runner.store("random", 0)
    make_s = time.perf_counter() - t
    times = {}
    t = time.perf_counter()
    clean = open_store(clean_path, verify=True)
    times["clean_verify_s"] = time.perf_counter() - t
    t = time.perf_counter()
    open_store(clean_path, verify=False)
    times["clean_noverify_s"] = time.perf_counter() - t
    t = time.perf_counter()
    open_protected(prot.path, clean)
    times["protected_verify_s"] = time.perf_counter() - t
    # bytes hashed by one cell, on each row, in-process (a fresh runner: what a worker or a job does)
    hashed = {"n": 0}
    real = store_mod.sha256_file

    def counting(path, *a, **k):
        hashed["n"] += os.path.getsize(path)
        return real(path, *a, **k)

    store_mod.sha256_file = counting
    try:
        per_cell = {}
        for row in ("clean", "random"):
            hashed["n"] = 0
            r = GridRunner(g)
            t = time.perf_counter()
            r.run_cell(Cell(row, "nt"))
            per_cell[row] = {"hashed_gb": hashed["n"] / 1e9, "wall_s": time.perf_counter() - t,
                             "train_s": r.summary(Cell(row, "nt"))["total_time_s"]}
        # the engine's own path (no open store handed over): what the grid did before
        from ueperf.countermeasures import build_hooks
        from ueperf.engine.trainer import train
        hashed["n"] = 0
        r = GridRunner(dataclasses_replace(g, out=work / "open-old"))
        store = r.store("random", 0)
        cfg = r.cell_config(Cell("random", "nt"), str(store.path))
        train(cfg, hooks=build_hooks(cfg))
        per_cell["random_engine_reopens"] = {"hashed_gb": hashed["n"] / 1e9}
    finally:
        store_mod.sha256_file = real
    return {"n": n, "size": size, "store_gb": gb, "protect_s": make_s, **times,
            "hash_gb_per_s": gb / times["clean_verify_s"], "per_cell": per_cell}


def dataclasses_replace(obj, **kw):
    import dataclasses
    return dataclasses.replace(obj, **kw)


def estimate(rows: Dict[str, Dict[str, Any]], so: Dict[str, Any], a: argparse.Namespace) -> Dict[str, Any]:
    """1,440 ImageNet-mini cells on 8 × H100 from the measured overheads and the stated assumptions."""
    n_img, epochs, ips = a.imagenet_n, a.imagenet_epochs, a.gpu_images_per_s
    base_min = n_img * epochs / ips / 60                      # an nt cell's epoch loop at the target rate
    mult = {"nt": 1.0, "nt_cg": 1.0, "st": 1.1, "st_cg": 1.1, "st_full": 1.1 * 1.2, "at": 11.0, "ueraser": 5.0,
            "iss_jpeg": 1.0}
    mean_mult = statistics.fmean(mult.values())
    cells = 10 * 8 * 6 * 3
    store_gb = (n_img + 5000) * a.imagenet_size ** 2 * 3 / 1e9
    # per-cell overhead on a GPU node: launch (process + imports, as measured here, + CUDA context)
    # + store opens (bytes hashed per protected cell at the measured hash rate) + trainer set-up
    launch_s = rows["local-1"]["launch_first_s"] + a.cuda_init_s
    # a protected cell opens the clean store (hashes) and the protected one (hashes + checks against
    # the clean source): both scale with the bytes
    store_s = (so["clean_verify_s"] + so["protected_verify_s"]) * store_gb / so["store_gb"]
    overhead_s = launch_s + store_s + rows["inline"]["setup_s"]
    gpu_h = cells * (base_min * mean_mult) / 60
    over_h = cells * overhead_s / 3600
    prot_h = 27 * a.protect_min / 60
    return {"cells": cells, "base_cell_min": base_min, "countermeasure_multipliers": mult, "mean_multiplier": mean_mult,
            "train_gpu_h": gpu_h, "store_gb": store_gb, "launch_s": launch_s, "store_open_s": store_s,
            "setup_s": rows["inline"]["setup_s"], "overhead_per_cell_s": overhead_s, "overhead_gpu_h": over_h,
            "protections_gpu_h": prot_h, "total_gpu_h": gpu_h + over_h + prot_h,
            "wall_h_8gpu": (gpu_h + over_h + prot_h) / 8, "overhead_share": over_h / (gpu_h + over_h + prot_h)}


def report(a, rows, so, est, command) -> str:
    f = lambda v, d=2: "–" if v != v else f"{v:.{d}f}"  # noqa: E731  (nan → –)
    L = [f"# Sweep overhead per cell, {cpu_name()} ({os.cpu_count()} cores), {today()}", "",
         f"Command: `{command}`", "", f"Versions: {versions()}; OMP_NUM_THREADS={a.threads}. The machine's 2 cores "
         f"were shared with other work while this ran: single timings vary by ±50 %; the orders of magnitude hold.", "",
         "## 1. Tiny cells, every launcher", "",
         f"{a.cells} cells per launcher: clean synthetic data ({a.n} training images, 32 px), 1 epoch of ResNet-18 "
         f"width 0.125 (`synthetic_smoke`), each launcher in its own output folder (clean store cached once "
         f"before). Means over the cells, seconds. *launch (1st)*: cell handed to the launcher → its process starts it, "
         f"for the first cell of each process (process start + imports); *launch (next)*: a pool worker's later "
         f"cells; *store*: opening the training store in that process; *set-up*: the trainer outside its epoch "
         f"loop; *train*: the epoch loop; *overhead/cell*: a cell's time in its process minus train, plus launch.", "",
         "| launcher | processes | sweep wall (s) | wall / cell | launch (1st) | launch (next) | store | set-up | train | overhead / cell |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in rows.items():
        L.append(f"| {name} | {r['processes']} | {f(r['wall_s'], 1)} | {f(r['wall_per_cell_s'])} | "
                 f"{f(r['launch_first_s'])} | {f(r['launch_next_s'])} | {f(r['store_s'])} | {f(r['setup_s'])} | "
                 f"{f(r['train_s'])} | {f(r['overhead_per_cell_s'])} |")
    L += ["", "The sweep wall time also holds the CLI's start (imports, validating every cell's config) and "
          "rewriting the table after each cell; parallel launchers on 2 cores share them with the training. Inline "
          "cells share the sweep's open store (store 0). A torchrun cell's launch is in its set-up (torchrun, 2 "
          "processes that import torch, the gloo group). submitit's local executor starts every job at once (no "
          "array throttling), so with 6 cells on 2 cores its store and set-up times are mostly waiting for a core; "
          "the 1-cell row is a job's own cost.", "",
          "## 2. Store open at size", "",
          f"A clean store of {so['n']:,} + 1,000 images of {so['size']} px ({so['store_gb']:.2f} GB) and its `random` "
          f"protection ({so['protect_s']:.1f} s to make).", "",
          "| what | seconds |", "| --- | --- |",
          f"| open the clean store, sha256 of every array | {f(so['clean_verify_s'])} ({so['hash_gb_per_s']:.2f} GB/s) |",
          f"| open the clean store, no hashes | {f(so['clean_noverify_s'], 3)} |",
          f"| open the protected store: hashes + checks against the clean source (ε bound, shapes) | {f(so['protected_verify_s'])} |",
          "", "Bytes hashed by one cell in a fresh process (a worker or a job):", "",
          "| cell | GB hashed | × store size |", "| --- | --- | --- |"]
    for k, v in so["per_cell"].items():
        label = {"clean": "clean row", "random": "protected row (store handed to the trainer)",
                 "random_engine_reopens": "protected row, the trainer reopening the store (the grid before this change)"}[k]
        L.append(f"| {label} | {v['hashed_gb']:.2f} | {v['hashed_gb'] / so['store_gb']:.1f} |")
    e = est
    L += ["", "## 3. A 1,440-cell ImageNet-mini sweep on 8 × H100 (estimate)", "",
          "No GPU was available to this measurement; the estimate combines the overheads above with these "
          "assumptions (all stated, none measured on a GPU):", "",
          f"- cells: 10 rows × 8 countermeasures (nt, nt_cg, st, st_cg, st_full, at, ueraser, iss_jpeg) × 6 paradigms "
          f"× 3 seeds = {e['cells']:,}, one cell per GPU (`--launcher local --workers 8` or SLURM, 1 GPU per cell);",
          f"- ImageNet-mini as the recipes have it (`tinyimagenet100_resnet18`, ImageNet stem): {a.imagenet_n:,} training "
          f"images at {a.imagenet_size} px, {a.imagenet_epochs} epochs; a {e['store_gb']:.1f} GB uint8 store, resident "
          f"on the GPU;",
          f"- training throughput {a.gpu_images_per_s:,.0f} images/s per H100 (issue 17's target for ResNet-18 at 32 px, "
          f"CIFAR stem; ResNet-18 with the ImageNet stem at 64 px has about 1/4 of its FLOPs per image, so the "
          f"target is a conservative stand-in) → an `nt` cell's epoch loop takes {e['base_cell_min']:.1f} min;",
          "- countermeasure cost relative to nt (compute per step): "
          + ", ".join(f"{k} ×{v:g}" for k, v in e["countermeasure_multipliers"].items())
          + f" (AT: 10 PGD steps + the update; UEraser-max: R = 5 copies; ST-Full: 20 fine-tuning epochs); mean "
          f"×{e['mean_multiplier']:.2f}; frozen paradigms (lp, pf1-3) counted as fs (an upper bound);",
          f"- 27 protected stores (9 protections × 3 seeds), {a.protect_min:g} GPU-minutes each on average (assumed; "
          f"EM/REM on 130k images dominate, `python bench/bench_protect.py --device cuda` measures them);",
          f"- per-cell overhead on the GPU node: launch {e['launch_s']:.1f} s (measured here for a fresh process, + "
          f"{a.cuda_init_s:g} s assumed for the CUDA context), store open {e['store_open_s']:.1f} s (a protected "
          f"cell opens the clean and the protected store: their open times above, scaled to {e['store_gb']:.1f} GB), "
          f"trainer set-up {e['setup_s']:.1f} s (measured here for a tiny model).", "",
          "| item | GPU-hours |", "| --- | --- |",
          f"| training, 1,440 cells × {e['base_cell_min']:.1f} min × {e['mean_multiplier']:.2f} | {e['train_gpu_h']:.0f} |",
          f"| per-cell overhead, 1,440 × {e['overhead_per_cell_s']:.0f} s | {e['overhead_gpu_h']:.1f} |",
          f"| protections, 27 × {a.protect_min:g} min | {e['protections_gpu_h']:.1f} |",
          f"| **total** | **{e['total_gpu_h']:.0f}** → **{e['wall_h_8gpu']:.0f} h on 8 × H100** (≈ {e['wall_h_8gpu'] / 24:.1f} days) |",
          "", f"The launch and store overhead is {100 * e['overhead_share']:.1f} % of the total: the sweep's cost is "
          f"the training itself, and within it AT and UEraser-max (2 of 8 countermeasures) are "
          f"{100 * (11 + 5) / sum(e['countermeasure_multipliers'].values()):.0f} % of the training time. At "
          f"224 px (the paper's crops) the store is {(a.imagenet_n + 5000) * 224 ** 2 * 3 / 1e9:.0f} GB (no longer "
          f"resident on one GPU next to a model: `data.loader=ffcv`) and each image costs ~12× the FLOPs of 64 px.",
          ""]
    return "\n".join(L)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=6, help="tiny cells per launcher (default 6)")
    p.add_argument("--n", type=int, default=256, help="training images of the tiny cells (default 256)")
    p.add_argument("--workers", type=int, default=2, help="workers of the parallel local launcher (default 2)")
    p.add_argument("--threads", type=int, default=1, help="OMP threads (default 1)")
    p.add_argument("--store-n", type=int, default=20000, help="images of the store-open measurement (default 20000)")
    p.add_argument("--size", type=int, default=64, help="image size of the store-open measurement (default 64)")
    p.add_argument("--skip-submitit", action="store_true")
    p.add_argument("--imagenet-n", type=int, default=130000)
    p.add_argument("--imagenet-size", type=int, default=64)
    p.add_argument("--imagenet-epochs", type=int, default=100)
    p.add_argument("--gpu-images-per-s", type=float, default=40000.0)
    p.add_argument("--protect-min", type=float, default=60.0, help="assumed GPU-minutes per protected store")
    p.add_argument("--cuda-init-s", type=float, default=3.0, help="assumed CUDA context start per process")
    p.add_argument("--out", default="", help="report path (default bench/results/sweep_overhead_<hw>_<date>.md)")
    a = p.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    import torch
    torch.set_num_threads(a.threads)
    command = "python bench/bench_sweep_overhead.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    seeds = ",".join(str(s) for s in range(a.cells))
    grid = ["--dataset", "synthetic", "--data", f"synthetic_train={a.n}", "--data", "synthetic_test=64",
            "--recipe", "synthetic_smoke", "--set", "train.epochs=1", "--set", f"train.threads={a.threads}",
            "--protections", "clean", "--countermeasures", "nt", "--seeds", seeds]
    launchers = [("inline", []), ("local-1", ["--launcher", "local", "--workers", "1"]),
                 (f"local-{a.workers}", ["--launcher", "local", "--workers", str(a.workers)]),
                 ("inline, torchrun × 2", ["--gpus-per-cell", "2"])]
    if not a.skip_submitit:   # its local executor starts every job at once: 1 cell alone, then all of them
        sub = ["--launcher", "slurm", "--slurm-cluster", "local", "--slurm-time", "30"]
        launchers += [("submitit local, 1 cell", sub + ["--seeds", "0"]), ("submitit local", sub)]
    with tempfile.TemporaryDirectory(prefix="ueperf-overhead-") as tmp:
        work = Path(tmp)
        _run_sweep(work, "warm", grid[:-2] + ["--seeds", "0"], [], a.threads)   # the clean store, cached once
        rows = {}
        for name, extra in launchers:
            print(f"[overhead] {name} ...", file=sys.stderr, flush=True)
            rows[name] = _per_cell(_run_sweep(work, name.replace(" ", "_").replace(",", "").replace("×", "x"),
                                              grid, extra, a.threads))
        print(f"[overhead] store open at {a.store_n} × {a.size} px ...", file=sys.stderr, flush=True)
        so = store_open(work, a.store_n, a.size)
    est = estimate(rows, so, a)
    md = report(a, rows, so, est, command)
    out = Path(a.out) if a.out else result_path("sweep_overhead", suffix=".md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    out.with_suffix(".json").write_text(json.dumps({"command": command, "hardware": hardware_tag(), "date": today(),
                                                    "launchers": rows, "store_open": so, "estimate": est},
                                                   indent=2, default=str))
    print(md)
    print(f"wrote {out} (+ .json)", file=sys.stderr)


if __name__ == "__main__":
    main()
