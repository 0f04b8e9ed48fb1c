"""The measurements of the GPU suite, one function per step; each runs in its own process.

``bench/gpu/run.py`` (the driver) starts ``python3 bench/gpu/steps.py --step NAME --params P.json
--result R.json`` for every step, with a time limit, and reads R.json afterwards. A step writes
R.json (atomically) every time it has a new figure, so a step killed at its limit still leaves
what it measured. Every step uses the engine's own code paths: the trainer (``Trainer`` /
``train_epoch`` / ``fit``), the kernels' benchmarks (``bench/kernels/``), the reference loop and
FLOP counter of ``bench/bench_train.py``, EM's ``generate``, ``metrics.acm``, the recipes and
countermeasure hooks.

R.json: ``{"figures": {key: number|str}, "tables": [{"title", "columns", "rows"}], "notes": [str]}``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
REPO = BENCH.parent
for p in (str(BENCH / "kernels"), str(BENCH), str(REPO)):
    if p not in sys.path:
        sys.path.insert(0, p)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ueperf.files import write_json_atomic  # noqa: E402

# Dense bf16 tensor-core peak per GPU model (vendor datasheets, without sparsity), FLOP/s; the
# first name that occurs in the device's name wins (so "H100 PCIe" before "H100").
PEAK_BF16 = [("GH200", 989e12), ("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12),
             ("H100", 989e12), ("H800", 989e12), ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12),
             ("L40S", 362e12), ("L40", 181e12), ("A10G", 70e12), ("A10", 125e12), ("L4", 121e12)]


def peak_bf16(name: str):
    for key, flops in PEAK_BF16:
        if key.lower() in name.lower():
            return key, flops
    return None, None


class Result:
    """A step's figures, tables and notes, rewritten to ``path`` after every change."""

    def __init__(self, path: Path):
        self.path = path
        self.data = {"figures": {}, "tables": [], "notes": []}
        self.save()

    def save(self) -> None:
        write_json_atomic(self.path, self.data)

    def fig(self, **kv) -> None:
        self.data["figures"].update(kv)
        self.save()

    def table(self, title: str, columns, rows) -> None:
        t = {"title": title, "columns": list(columns), "rows": [[_cell(r.get(c)) for c in columns] for r in rows]}
        self.data["tables"] = [x for x in self.data["tables"] if x["title"] != title] + [t]
        self.save()

    def note(self, text: str) -> None:
        self.data["notes"].append(text)
        self.save()


def _cell(v):
    if isinstance(v, float):
        return float(f"{v:.4g}")
    return v


# ───────────────────────────────────────────── helpers ──
def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def peak_gib(dev: torch.device):
    """Peak GPU memory allocated since the last :func:`reset_peak`, GiB (None on CPU)."""
    if dev.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(dev) / 2 ** 30


def host_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # ru_maxrss is KiB on Linux


def random_set(n: int, size: int, classes: int, seed: int = 0):
    """Uniform random uint8 images and labels: throughput does not depend on the content."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    y = rng.integers(0, classes, size=n).astype(np.int64)
    return x, y


def make_store(folder: Path, x, y, tx, ty, classes: int, source: str):
    from ueperf.data.store import write_store
    return write_store(folder, train=(x, y), test=(tx, ty), classes=[f"class_{k}" for k in range(classes)],
                       meta={"source": source})


def engine_config(p: dict, dev: torch.device, batch: int, compile_: bool, epochs: int):
    from ueperf.config import RunConfig
    cfg = RunConfig()
    cfg.model.name, cfg.model.width = "resnet18", p["width"]
    cfg.train.batch_size, cfg.train.compile, cfg.train.epochs = batch, compile_, epochs
    cfg.train.progress, cfg.train.device, cfg.train.precision = False, str(dev), "auto"
    return cfg


def smoke_compile() -> None:
    """On the CPU (--smoke): torch.compile with the ``eager`` backend (dynamo traces, no inductor code
    generation), so the compiled code path is exercised in seconds without a C++ toolchain."""
    import functools
    if getattr(torch.compile, "_ueperf_smoke", False):
        return
    eager = functools.partial(torch.compile, backend="eager")
    eager._ueperf_smoke = True
    torch.compile = eager


# ───────────────────────────────────────────── env ──
def step_env(p, R, dev):
    """Versions, device, driver: what the report's header needs."""
    import platform
    try:
        import triton
        tv = triton.__version__
    except Exception as e:  # noqa: BLE001 — report, never fail
        tv = f"absent ({type(e).__name__})"
    f = {"torch": torch.__version__, "triton": tv, "cuda": torch.version.cuda or "none",
         "cudnn": str(torch.backends.cudnn.version()) if dev.type == "cuda" else "n/a",
         "python": platform.python_version(), "numpy": np.__version__, "cpu_count": os.cpu_count(),
         "device": str(dev)}
    if dev.type == "cuda":
        prop = torch.cuda.get_device_properties(dev)
        f.update(device_name=prop.name, device_memory_gib=round(prop.total_memory / 2 ** 30, 1),
                 sm_count=prop.multi_processor_count, capability=f"{prop.major}.{prop.minor}")
        key, flops = peak_bf16(prop.name)
        f.update(peak_bf16_tflops=flops / 1e12 if flops else None, peak_source=key or "unknown model: no MFU")
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            f["nvidia_smi"] = out.stdout.strip() or out.stderr.strip()
        except (OSError, subprocess.SubprocessError) as e:
            f["nvidia_smi"] = f"unavailable ({type(e).__name__})"
    else:
        from harness import cpu_name
        f.update(device_name=f"{cpu_name()} ({os.cpu_count()} cores)", torch_threads=torch.get_num_threads())
    try:
        f["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                         text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        f["git_commit"] = "unknown"
    R.fig(**f)


# ───────────────────────────────────────────── training throughput ──
def engine_epochs(store, dev, p, batch, compile_, run_dir):
    """The engine's own epoch loop (``Trainer.train_epoch``): per-epoch records, peak memory."""
    from ueperf.engine.trainer import Trainer
    cfg = engine_config(p, dev, batch, compile_, p["epochs"])
    reset_peak(dev)
    t0 = time.perf_counter()
    with Trainer(cfg, store=store, run_dir=run_dir) as tr:
        setup_s = time.perf_counter() - t0
        recs = [tr.train_epoch(e) for e in range(p["epochs"])]
        info = {"precision": str(tr.dtype).replace("torch.", "") if tr.dtype is not None else "fp32",
                "channels_last": cfg.train.channels_last}
    return recs, setup_s, peak_gib(dev), info


def step_train(p, R, dev):
    """ueperf (resident uint8 set, fused augmentation, bf16 autocast, channels-last, optional
    torch.compile) against the plain PyTorch reference loop of bench_train.py, ResNet-18."""
    import bench_train
    from ueperf.models import build_model
    S, n, K = p["size"], p["n"], p["classes"]
    work = Path(p["work"])
    if p["compile"] and dev.type == "cpu":
        smoke_compile()
    x, y = random_set(n, S, K)
    model = build_model("resnet18", K, S, width=p["width"]).to(dev)
    fl = bench_train.flops_per_image(model, S, dev)
    stem = getattr(model, "stem", "?")
    del model
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else ""
    key, peak = peak_bf16(name)
    R.fig(size=S, images=n, classes=K, width=p["width"], stem=stem, fwd_gflop_per_image=fl / 1e9,
          train_gflop_per_image=3 * fl / 1e9, peak_bf16_tflops=peak / 1e12 if peak else None)
    rows = []
    cols = ["provider", "batch", "img_s", "ratio", "mfu_pct", "tflops", "first_epoch_s", "peak_gpu_gib"]

    def mfu(rate):
        return 100 * rate * 3 * fl / peak if peak else None

    ref = p.get("reference_img_s")
    if not p["compile"]:
        ns = SimpleNamespace(model="resnet18", size=S, width=p["width"], batch=p["batch"], workers=p["workers"],
                             warmup=p["ref_warmup"], steps=p["ref_steps"])
        reset_peak(dev)
        ref = bench_train.bench_reference(ns, x, y, dev, K)
        rows.append({"provider": f"reference (DataLoader x{p['workers']} workers, per-sample, fp32, NCHW)",
                     "batch": p["batch"], "img_s": ref, "ratio": 1.0, "mfu_pct": mfu(ref),
                     "tflops": ref * 3 * fl / 1e12, "peak_gpu_gib": peak_gib(dev)})
        R.fig(reference_img_s=ref, reference_peak_gpu_gib=peak_gib(dev))
        R.table("throughput", cols, rows)
    tx, ty = x[:max(p["batch"], 256)], y[:max(p["batch"], 256)]
    store = make_store(work / f"train{S}", x, y, tx, ty, K, "gpu-suite uniform random")
    tag = "compiled" if p["compile"] else "eager"
    for b in p["batches"]:
        recs, setup_s, mem, info = engine_epochs(store, dev, p, b, p["compile"], work / f"run{S}_{tag}_{b}")
        rate = statistics.median(r["images_per_s"] for r in recs[1:]) if len(recs) > 1 else recs[0]["images_per_s"]
        how = ("" if not p["compile"] else " (inductor)" if dev.type == "cuda" else
               " (CPU: dynamo with the eager backend)")
        prov = (f"ueperf {tag}{how}, "
                f"{info['precision']}, {'channels-last' if info['channels_last'] else 'NCHW'}, fused augment")
        rows.append({"provider": prov, "batch": b, "img_s": rate, "ratio": rate / ref if ref else None,
                     "mfu_pct": mfu(rate), "tflops": rate * 3 * fl / 1e12,
                     "first_epoch_s": recs[0]["train_time_s"] + setup_s, "peak_gpu_gib": mem})
        R.fig(**{f"ueperf_{tag}_b{b}_img_s": rate, f"ueperf_{tag}_b{b}_ratio": rate / ref if ref else None,
                 f"ueperf_{tag}_b{b}_mfu_pct": mfu(rate), f"ueperf_{tag}_b{b}_peak_gpu_gib": mem,
                 f"ueperf_{tag}_b{b}_first_epoch_s": recs[0]["train_time_s"] + setup_s})
        R.table("throughput", cols, rows)
    R.note(f"ueperf img/s: median over epochs 2..{p['epochs']} of the engine's Trainer.train_epoch on {n} images "
           f"(epoch 1 is warm-up{' and compilation' if p['compile'] else ''}: first_epoch_s, set-up included). "
           f"Reference: bench_train.bench_reference, {p['ref_steps']} steps after {p['ref_warmup']}. "
           f"MFU = img/s x 3 x forward FLOPs (conv + linear, counted by hooks) / the GPU's dense bf16 peak"
           + (f" ({key}: {peak / 1e12:.0f} TFLOP/s)." if peak else " (unknown here: not given)."))
    R.fig(host_peak_rss_gib=host_rss_gib())


# ───────────────────────────────────────────── kernels ──
def _bench_csv(main, argv, out: Path, kernel: str):
    import csv
    out.mkdir(parents=True, exist_ok=True)
    for f in out.glob(f"{kernel}_*.csv"):
        f.unlink()
    rc = main(argv + ["--out", str(out)])
    if rc:
        raise RuntimeError(f"bench {kernel} {argv} returned {rc}")
    (path,) = list(out.glob(f"{kernel}_*.csv"))
    with open(path) as fh:
        return list(csv.DictReader(fh))


def step_kernels(p, R, dev):
    """The fused augmentation and PGD kernels against eager torch, torch.compile and a copy of the
    same bytes (bench/kernels/bench_augment.py and bench_pgd.py, unchanged). The calls run in the
    order given: the Triton-vs-copy figures first, the torch.compile providers (slow to compile) last."""
    import bench_augment
    import bench_pgd
    mains = {"augment": bench_augment.main, "pgd": bench_pgd.main}
    work = Path(p["work"]) / "kernels"
    common = ["--device", str(dev), "--batch", str(p["batch"])]
    if p.get("warmup") is not None:
        common += ["--warmup", str(p["warmup"]), "--reps", str(p["reps"])]
    cols = ["config", "provider", "median_ms", "GB_per_s", "x_copy", "vs_torch"]
    rows, torch_ms = [], {}
    for kernel, label, size, extra, providers in p["calls"]:
        reset_peak(dev)
        got = _bench_csv(mains[kernel], common + ["--size", str(size), "--providers", providers] + extra,
                         work, kernel)
        for r in got:
            config = f"{kernel} {r['norm']} {label}" if kernel == "pgd" else f"{kernel} {label}"
            ms = float(r["median_ms"])
            if r["provider"] == "torch":
                torch_ms[config] = ms
            rows.append({"config": config, "provider": r["provider"], "median_ms": ms, "GB_per_s": r["GB_per_s"],
                         "x_copy": float(r["x_copy"]) if r["x_copy"] else None,
                         "vs_torch": (torch_ms[config] / ms if config in torch_ms and r["provider"] != "sample_params"
                                      else None)})
            if r["provider"] in ("triton", "torch", "torch.compile") and r["x_copy"]:
                R.fig(**{f"{config.replace(' ', '_')}_{r['provider']}_x_copy": float(r["x_copy"])})
        R.fig(**{f"{kernel}_{label}_peak_gpu_gib": peak_gib(dev)})
        R.table("kernels", cols, rows)
    if dev.type != "cuda":
        R.note("triton and torch.compile providers are benchmarked on CUDA only (harness.triton_skip_reason, "
               "compile_skip_reason): this CPU run times torch and the copy floor.")
    R.note("x_copy = time / time of a copy of the same bytes, measured in the same call (augment: uint8 in, "
           "output dtype out; PGD: 3 reads + 1 write); vs_torch = eager torch time / time. Medians (CUDA events on "
           "the GPU), batch " + str(p["batch"]) + ".")


# ───────────────────────────────────────────── ACM ──
def step_acm(p, R, dev):
    """ACM (metrics.acm) per available backend on n × d random features, device-synchronised."""
    from ueperf.metrics.acm import timed_acm
    n, d, K = p["n"], p["dim"], 10
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(n, d, generator=g)
    labels = torch.arange(K).repeat_interleave(n // K)
    feats = feats[:labels.numel()]
    R.fig(points=int(labels.numel()), dim=d)
    plan = []
    devices = [dev] + ([torch.device("cpu")] if dev.type == "cuda" else [])
    for where in devices:
        plan += [("torch", "pca2", where), ("torch", "raw", where)]
    from importlib.util import find_spec
    if find_spec("sklearn") is not None:
        plan.append(("tsne", "pca2", torch.device("cpu")))
    else:
        R.note("tsne: skipped, scikit-learn is not installed")
    if find_spec("faiss") is not None:
        plan += [("faiss", "pca2", torch.device("cpu")), ("faiss", "raw", torch.device("cpu"))]
    else:
        R.note("faiss: skipped, faiss is not installed")
    cols = ["backend", "reduce", "device", "median_ms", "min_ms", "reps", "value"]
    rows = []
    for backend, reduce, where in plan:
        f, y = feats.to(where), labels.to(where)
        slow = backend == "tsne"
        warm, reps = (0, 1) if slow else (p["warmup"], p["reps"])
        for _ in range(warm):
            timed_acm(f, y, backend=backend, reduce=reduce)
        got = [timed_acm(f, y, backend=backend, reduce=reduce) for _ in range(reps)]
        ms = [m["acm_ms"] for m in got]
        rows.append({"backend": backend, "reduce": reduce, "device": where.type, "median_ms": statistics.median(ms),
                     "min_ms": min(ms), "reps": reps, "value": got[-1]["acm"]})
        R.fig(**{f"acm_{backend}_{reduce}_{where.type}_ms": statistics.median(ms)})
        R.table("acm", cols, rows)


# ───────────────────────────────────────────── EM ──
def step_em(p, R, dev):
    """Sample-wise EM (the registered method, its defaults) on n synthetic images: time per min-min
    round, projected to the rounds it takes; the stop test is switched off so every round runs."""
    from ueperf.data.sources.synthetic import generate
    from ueperf.protections import PROTECTIONS
    from ueperf.protections.base import ProtectContext
    n, S, K = p["n"], p["size"], p["classes"]
    x_np, y_np = generate(n, K, S, 0)
    x, y = torch.from_numpy(x_np).to(dev), torch.from_numpy(y_np).to(dev)
    cls = PROTECTIONS.get("em")
    cfg = cls.Config()
    cfg.width, cfg.max_rounds, cfg.stop_error = p["width"], p["rounds"], 0.0
    for k, v in p.get("overrides", {}).items():
        setattr(cfg, k, v)
    R.fig(images=n, size=S, width=cfg.width, pgd_steps=cfg.resolved_steps(), noise_batch=cfg.batch_size,
          train_steps=cfg.train_steps)
    rounds = []
    cols = ["round", "round_s", "surrogate_acc", "noise_img_steps_per_s"]

    def log(rec):
        rounds.append({"round": rec["round"], "round_s": rec["round_s"], "surrogate_acc": rec["surrogate_acc"],
                       "noise_img_steps_per_s": n * cfg.resolved_steps() / rec["round_s"]})
        steady = statistics.median(r["round_s"] for r in rounds[1:]) if len(rounds) > 1 else rounds[0]["round_s"]
        R.fig(round_s=steady, projected_10_rounds_s=10 * steady, projected_30_rounds_s=30 * steady,
              rounds_measured=len(rounds), peak_gpu_gib=peak_gib(dev))
        R.table("rounds", cols, rounds)

    ctx = ProtectContext(x=x, y=y, num_classes=K, classes=[f"class_{k}" for k in range(K)], cfg=cfg, seed=0,
                         device=dev, shard=torch.arange(n, device=dev), progress=False,
                         gather=lambda d: d, broadcast=lambda t, src=0: t, log=log)
    reset_peak(dev)
    sync(dev)
    t0 = time.perf_counter()
    cls().generate(ctx)
    sync(dev)
    R.fig(generate_s=time.perf_counter() - t0, peak_gpu_gib=peak_gib(dev), host_peak_rss_gib=host_rss_gib())
    R.note("round_s: median over rounds 2.. (round 1 carries the first-call costs: library handles, allocator "
           "growth). cudnn.benchmark is left as the protect CLI leaves it (off). Each round = "
           f"{cfg.train_steps} surrogate SGD batches + {cfg.resolved_steps()} PGD steps over all {n} images + the "
           "stop test. Projections: 10 rounds and the cap of 30 (max_rounds); how many rounds EM needs to "
           "reach 99 % on real CIFAR-10 is not measured here (synthetic images).")


# ───────────────────────────────────────────── ST vs NT ──
def step_st(p, R, dev):
    """Short runs of the cifar10_resnet18 recipe with countermeasure nt, nt_cg and st_cg on the
    same synthetic store (Trainer.fit: train + clean test + hooks + checkpoint per epoch)."""
    from ueperf.countermeasures import build_hooks
    from ueperf.data.sources.synthetic import generate
    from ueperf.engine.trainer import Trainer
    from ueperf.recipes import build
    work = Path(p["work"])
    K = 10
    x, y = generate(p["n"], K, p["size"], 0)
    tx, ty = generate(p["n_test"], K, p["size"], 1)
    store = make_store(work / "st_store", x, y, tx, ty, K, "gpu-suite synthetic")
    cols = ["countermeasure", "epochs", "epoch_s", "train_s", "img_s", "acm_ms", "rejected", "peak_gpu_gib"]
    rows, per = [], {}
    recipe_epochs = None
    for cm in ("nt", "nt_cg", "st_cg"):
        sets = [f"model.width={p['width']}", f"train.epochs={p['epochs']}", "train.progress=false",
                f"train.device={dev}", *p.get("sets", [])]
        cfg = build("cifar10_resnet18", sets, countermeasure=cm)
        if recipe_epochs is None:
            base = build("cifar10_resnet18", [])
            recipe_epochs, finetune = base.train.epochs, base.st.finetune_epochs
        hooks = build_hooks(cfg)
        reset_peak(dev)
        with Trainer(cfg, hooks=hooks, store=store, run_dir=work / f"st_{cm}") as tr:
            tr.fit()
            recs = list(tr.records)
        el = [r["elapsed_s"] for r in recs]
        epoch_s = [b - a for a, b in zip([0.0] + el[:-1], el)]
        steady = statistics.median(epoch_s[1:]) if len(epoch_s) > 1 else epoch_s[0]
        acm_ms = [r["acm_ms"] for r in recs if r.get("acm_ms") is not None]
        per[cm] = steady
        rows.append({"countermeasure": cm, "epochs": len(recs), "epoch_s": steady,
                     "train_s": statistics.median(r["train_time_s"] for r in recs[1:] or recs),
                     "img_s": statistics.median(r["images_per_s"] for r in recs[1:] or recs),
                     "acm_ms": statistics.median(acm_ms) if acm_ms else None,
                     "rejected": sum(bool(r.get("rejected")) for r in recs), "peak_gpu_gib": peak_gib(dev)})
        R.fig(**{f"{cm}_epoch_s": steady, f"{cm}_peak_gpu_gib": peak_gib(dev)})
        R.table("per-epoch wall time", cols, rows)
    over_nt = per["st_cg"] - per["nt"]
    over_cg = per["st_cg"] - per["nt_cg"]
    R.fig(st_cg_overhead_vs_nt_s=over_nt, st_cg_overhead_vs_nt_pct=100 * over_nt / per["nt"],
          st_cg_overhead_vs_nt_cg_s=over_cg, st_cg_overhead_vs_nt_cg_pct=100 * over_cg / per["nt_cg"],
          st_full_projected_s=recipe_epochs * per["st_cg"] + finetune * per["nt_cg"],
          recipe_epochs=recipe_epochs, finetune_epochs=finetune, host_peak_rss_gib=host_rss_gib())
    R.note(f"epoch_s: median over epochs 2..{p['epochs']} of the wall time between epoch records (training, "
           f"clean test pass, the hooks' ACM checks, rollbacks and snapshots, checkpoint). ST-Full projection = "
           f"{recipe_epochs} x st_cg epoch + {finetune} fine-tune epochs x nt_cg epoch (no early stop assumed).")


def step_fast(p, R, dev):
    """The fast victim (recipe fast_victim, airbench94's techniques) on 50,000 synthetic CIFAR-shaped
    images: Trainer.fit for a few epochs (whitening fit, training, TTA test pass, checkpoint), the
    steady epoch time, one run and a 10 x 8 grid of them projected (issue: "a 10 x 8 grid in <= 10 min
    on one H100"). Synthetic data: the time, not the accuracy, is measured here."""
    from ueperf.countermeasures import build_hooks
    from ueperf.data.sources.synthetic import generate
    from ueperf.engine.trainer import Trainer
    from ueperf.recipes import build
    work = Path(p["work"])
    K = 10
    x, y = generate(p["n"], K, p["size"], 0)
    tx, ty = generate(p["n_test"], K, p["size"], 1)
    store = make_store(work / "fast_store", x, y, tx, ty, K, "gpu-suite synthetic")
    sets = [f"train.epochs={p['epochs']}", "train.progress=false", f"train.device={dev}", *p.get("sets", [])]
    cfg = build("fast_victim", sets)
    recipe_epochs = build("fast_victim", []).train.epochs
    reset_peak(dev)
    t0 = time.perf_counter()
    with Trainer(cfg, hooks=build_hooks(cfg), store=store, run_dir=work / "fast_victim") as tr:
        setup_s = time.perf_counter() - t0          # data on the device, model, whitening fit
        tr.fit()
        recs = list(tr.records)
    total_s = time.perf_counter() - t0
    el = [r["elapsed_s"] for r in recs]
    epoch_s = [b - a for a, b in zip([0.0] + el[:-1], el)]
    steady = statistics.median(epoch_s[1:]) if len(epoch_s) > 1 else epoch_s[0]
    run_s = setup_s + epoch_s[0] + (recipe_epochs - 1) * steady
    R.table("fast victim epochs", ["epoch", "epoch_s", "train_s", "img_s"],
            [{"epoch": r["epoch"], "epoch_s": e, "train_s": r["train_time_s"], "img_s": r["images_per_s"]}
             for r, e in zip(recs, epoch_s)])
    R.fig(fast_setup_s=setup_s, fast_first_epoch_s=epoch_s[0], fast_epoch_s=steady, fast_measured_total_s=total_s,
          fast_img_s=statistics.median(r["images_per_s"] for r in recs[1:] or recs), recipe_epochs=recipe_epochs,
          fast_run_projected_s=run_s, grid_10x8_projected_s=80 * run_s, fast_peak_gpu_gib=peak_gib(dev))
    R.note(f"One fast_victim run = setup (store on the device, model, whitening fit) + first epoch + "
           f"{recipe_epochs - 1} x the median later epoch (training + TTA test pass + checkpoint); a 10 x 8 "
           f"grid = 80 such runs one after another (no protection crafting, no overlap).")


# ───────────────────────────────────────────── profiler ──
ANNOTATIONS = ("ueperf_epoch",)
SYNC_NAMES = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy",
              "aten::_local_scalar_dense", "aten::item")


def profile_activity(events, window, cuda: bool) -> dict:
    """From profiler events: the GPU's busy time inside ``window`` (µs; the union of kernel, copy and
    memset intervals, record_function ranges left out), the top-10 GPU names by total time, and the
    host synchronisations (CUDA runtime sync calls; ``tensor.item()`` on the CPU)."""
    from torch.autograd import DeviceType
    lo, hi = window
    gpu = [e for e in events if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
           and e.name not in ANNOTATIONS and not e.name.startswith(("Optimizer.", "ProfilerStep"))]
    counts = {k: 0 for k in SYNC_NAMES}
    for e in events:
        if e.device_type == DeviceType.CPU and e.name in counts:
            counts[e.name] += 1
    busy, cur = 0.0, None
    for a, b in sorted((max(e.time_range.start, lo), min(e.time_range.end, hi)) for e in gpu):
        if b <= a:
            continue
        if cur is None or a > cur[1]:
            busy += (cur[1] - cur[0]) if cur else 0.0
            cur = [a, b]
        else:
            cur[1] = max(cur[1], b)
    busy += (cur[1] - cur[0]) if cur else 0.0
    agg = {}
    for e in gpu:
        t = agg.setdefault(e.name, [0.0, 0])
        t[0] += e.time_range.end - e.time_range.start
        t[1] += 1
    top = sorted(((k, v[0], v[1]) for k, v in agg.items()), key=lambda r: -r[1])[:10]
    syncs = (sum(counts[k] for k in SYNC_NAMES if k.startswith("cuda")) if cuda
             else counts["aten::_local_scalar_dense"])
    return {"busy_us": busy, "kernel_us": sum(v[0] for v in agg.values()) or 1.0, "kernels": len(gpu), "top": top,
            "counts": counts, "host_syncs": syncs,
            "dtoh": sum(1 for e in gpu if "DtoH" in e.name or "Device -> Pageable" in e.name
                        or "Device -> Pinned" in e.name)}


def step_profile(p, R, dev):
    """torch.profiler over one epoch of the engine's training loop (after a warm-up epoch)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, record_function
    from ueperf.engine.trainer import Trainer
    S, K, b, steps = p["size"], p["classes"], p["batch"], p["steps"]
    work = Path(p["work"])
    x, y = random_set(b * steps, S, K)
    store = make_store(work / "profile_store", x, y, x[:b], y[:b], K, "gpu-suite uniform random")
    cfg = engine_config(p, dev, b, False, 2)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    reset_peak(dev)
    with Trainer(cfg, store=store, run_dir=work / "profile_run") as tr:
        tr.train_epoch(0)
        with profile(activities=acts) as prof:
            with record_function("ueperf_epoch"):
                tr.train_epoch(1)
    events = prof.events()
    window = next(e for e in events if e.name == "ueperf_epoch" and e.device_type == DeviceType.CPU).time_range
    wall_us = window.end - window.start
    act = profile_activity(events, (window.start, window.end), cuda=dev.type == "cuda")
    R.fig(steps=steps, batch=b, size=S, epoch_wall_ms=wall_us / 1e3, step_wall_ms=wall_us / 1e3 / steps,
          peak_gpu_gib=peak_gib(dev), host_syncs_per_step=act["host_syncs"] / steps,
          dtoh_copies_per_step=act["dtoh"] / steps,
          **{f"{k}_per_step": v / steps for k, v in act["counts"].items()})
    if act["kernels"]:
        R.table("top-10 GPU kernels", ["kernel", "ms_per_step", "calls_per_step", "pct_of_gpu_time"],
                [{"kernel": k[:100], "ms_per_step": us / 1e3 / steps, "calls_per_step": n / steps,
                  "pct_of_gpu_time": 100 * us / act["kernel_us"]} for k, us, n in act["top"]])
        R.fig(gpu_busy_pct=100 * act["busy_us"] / wall_us, gpu_idle_pct=100 * (1 - act["busy_us"] / wall_us),
              kernels_per_step=act["kernels"] / steps)
    else:
        if dev.type == "cuda":
            R.note("the profiler recorded no GPU activity (CUPTI unavailable?): CPU ops only")
        ka = sorted((a for a in prof.key_averages() if a.key not in ANNOTATIONS),
                    key=lambda a: -a.self_cpu_time_total)[:10]
        R.table("top-10 CPU ops (no GPU)", ["op", "self_ms_per_step", "calls_per_step"],
                [{"op": a.key[:100], "self_ms_per_step": a.self_cpu_time_total / 1e3 / steps,
                  "calls_per_step": a.count / steps} for a in ka])
    R.note(f"One epoch of {steps} steps (batch {b}, {S} px, eager, the engine's Trainer.train_epoch) after a "
           "warm-up epoch. gpu_idle_pct: share of the epoch's wall time with no GPU kernel or copy running. "
           "host_syncs_per_step: cudaStream/Device/EventSynchronize + blocking cudaMemcpy calls (on the CPU: "
           "tensor.item() calls). Sync counts include the epoch's own start/end synchronisation and its one loss "
           "check (log_every), spread over its steps.")


# ───────────────────────────────────────────── pytest ──
def _pytest(p, R, args):
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    summary = next((ln.strip("= ") for ln in reversed(lines) if " in " in ln and
                    any(w in ln for w in ("passed", "failed", "error", "skipped", "deselected", "no tests"))),
                   lines[-1] if lines else "")
    R.fig(command=" ".join(["python3"] + cmd[1:]), summary=summary, returncode=out.returncode,
          seconds=time.perf_counter() - t0)
    fails = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    if fails:
        R.note("\n".join(fails[:20]))
    if out.returncode not in (0, 5):  # 5 = nothing collected
        sys.stdout.write("\n".join(lines[-60:]) + "\n")
        raise RuntimeError(f"pytest returned {out.returncode}: {summary}")


def step_gpu_tests(p, R, dev):
    """The suite's CUDA-only tests (marker ``gpu``)."""
    _pytest(p, R, ["-m", "gpu", "tests"])


def step_kernel_tests(p, R, dev):
    """The kernel tests (Triton compiled on the GPU against the torch references)."""
    _pytest(p, R, ["tests/kernels"])


STEPS = {"env": step_env, "train": step_train, "kernels": step_kernels, "acm": step_acm, "em": step_em, "fast": step_fast,
         "st": step_st, "profile": step_profile, "gpu_tests": step_gpu_tests, "kernel_tests": step_kernel_tests}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="one step of the GPU suite (run by bench/gpu/run.py)")
    ap.add_argument("--step", required=True)
    ap.add_argument("--params", required=True, help="JSON file: the step's sizes")
    ap.add_argument("--result", required=True, help="JSON file the step writes its figures to")
    a = ap.parse_args(argv)
    p = json.loads(Path(a.params).read_text())
    R = Result(Path(a.result))
    if p.get("delay"):  # test hook: a deliberately slow step
        time.sleep(float(p["delay"]))
    dev = torch.device(p["device"])  # cudnn.benchmark: as each code path sets it (the trainer does)
    fn = STEPS[p.get("kind", a.step)]
    with tempfile.TemporaryDirectory(dir=p.get("work")) as d:
        p["work"] = d
        fn(p, R, dev)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
