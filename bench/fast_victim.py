"""The fast victim against itself without each of its techniques, and against the standard recipe.

    python bench/fast_victim.py --quick --seeds 0        # a smoke-sized run (~5 min on 2 busy CPU cores)
    python bench/fast_victim.py --cpu --seeds 0,1,2      # CPU-sized victims on 2,000 images (~15 min on 2 cores)
    python bench/fast_victim.py --seeds 0,1,2            # the full comparison (GPU-sized: use a GPU)
    python bench/fast_victim.py --seeds 0,1,2 --device cuda --set train.compile=true

Arms, each trained on the real CIFAR-10 subset (5,438 train / 1,017 test images, the archive in
``--data``) with ``python -m ueperf.train``'s own code path (``recipes.build`` + the trainer), one
run per seed:

- ``all``: the ``fast_victim`` recipe as it is (airbench94: fastnet, whitening, identity init, BN
  momentum 0.4, BN-bias lr × 64, label smoothing 0.2, Nesterov SGD with warm-up + linear decay,
  Lookahead, multicrop TTA);
- ``no <technique>``: the same with one technique at its off value (the ``--set`` shown in the
  report);
- ``cifar10_resnet18 w0.125``: the standard recipe (ResNet-18 at width 0.125, SGD 0.1, cosine, 60
  epochs, crop + flip) for reference.

Reported per arm: clean test accuracy (final epoch) mean ± sample std over seeds, and wall time
per run (the whole ``train()`` call: model, whitening, epochs, evaluation, files) mean ± std, plus
the trainer's own training+evaluation time. Every value is the paper's (no tuning here, on the test
set or elsewhere); ``--quick`` shrinks the runs (width, epochs, images: see ``QUICK``) to check the
script, not to measure; ``--cpu`` measures the CPU-sized victims of ``bench/proxy_validity.py``
(fastnet w0.25, batch 256, lr scaled by rule; see ``CPU``). Runs are kept in ``--work`` (a rerun
reuses finished ones; two processes with different ``--seeds`` can fill it side by side); the
report goes to bench/results/fast_victim[_quick|_cpu]_<hardware>_<date>.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

from harness import SHARED_DATA, hardware_name, pick_device, result_path, today, versions  # noqa: E402

ARCHIVE = "cifar-10-subset-python.tar.gz"
# arm → (recipe, the --set values that make it, what it switches off)
ARMS: Dict[str, tuple] = {
    "all": ("fast_victim", [], "nothing: every technique on"),
    "no whitening": ("fast_victim", ["fast.whiten=false"], "first conv: default init, trained"),
    "no identity init": ("fast_victim", ["fast.identity_init=false"], "convs keep PyTorch's default init"),
    "no BN momentum": ("fast_victim", ["fast.bn_momentum=0"], "BatchNorm momentum PyTorch's 0.1"),
    "no BN-bias lr": ("fast_victim", ["fast.bn_bias_lr=1"], "BatchNorm biases at the base lr"),
    "no label smoothing": ("fast_victim", ["fast.label_smoothing=0"], "plain cross-entropy"),
    "no Nesterov": ("fast_victim", ["optim.nesterov=false"], "heavy-ball momentum"),
    "no warm-up": ("fast_victim", ["optim.warmup_epochs=0"], "linear decay from the first step"),
    "no lookahead": ("fast_victim", ["fast.lookahead=false"], "the last weights are evaluated"),
    "no TTA": ("fast_victim", ["fast.tta=none"], "one view per test image"),
    "cifar10_resnet18 w0.125": ("cifar10_resnet18", ["model.width=0.125"], "reference: the standard recipe"),
}
# --quick: a quarter-width fastnet, 3 epochs of batch 512 on 2,048 training images, 500 test images;
# the epoch-valued settings of the recipe keep their share of the run (warm-up 20 %, whitening bias 30 %)
QUICK_EPOCHS = 3
QUICK = ["data.train_limit=2048", "data.test_limit=500"]
QUICK_FAST = ["model.width=0.25", f"train.epochs={QUICK_EPOCHS}", "train.batch_size=512",
              f"optim.warmup_epochs={0.2 * QUICK_EPOCHS:g}", f"fast.whiten_bias_epochs={0.3 * QUICK_EPOCHS:g}"]
QUICK_REF = ["train.epochs=2"]
# --cpu: the CPU-sized victims of bench/proxy_validity.py, one CPU thread each, ~17 s per run here:
# 2,000 training images, all 1,017 test images, evaluated after the last epoch; fastnet at width
# 0.25 with batch 256 (the recipe's 1,024 would be 2 steps per epoch) and its lr scaled linearly
# (1.5 × 256 / 1,024), 10 epochs; the reference at 8 epochs (the same CPU time per run)
CPU = ["data.train_limit=2000", "train.eval_every=1000"]
CPU_FAST = ["model.width=0.25", "train.batch_size=256", "optim.lr=0.375"]
CPU_REF = ["train.epochs=8"]


def arm_sets(arm: str, quick: bool, extra: Sequence[str], cpu: bool = False) -> List[str]:
    recipe, sets, _ = ARMS[arm]
    out = list(sets)
    if quick:
        out = QUICK + (QUICK_FAST if recipe == "fast_victim" else QUICK_REF) + out
        if recipe == "fast_victim" and "optim.warmup_epochs=0" in sets:
            out = [s for s in out if not s.startswith("optim.warmup_epochs=")] + ["optim.warmup_epochs=0"]
    elif cpu:
        out = CPU + (CPU_FAST if recipe == "fast_victim" else CPU_REF) + out
    return out + list(extra)


def run_arm(arm: str, seed: int, args, data_root: Path, work: Path) -> Dict:
    """One run (reused when its folder finished with the same settings): summary + wall time."""
    from ueperf.config import to_dict
    from ueperf.countermeasures import build_hooks
    from ueperf.data import prepare_dataset
    from ueperf.engine.trainer import Trainer
    from ueperf.recipes import build
    recipe = ARMS[arm][0]
    sets = arm_sets(arm, args.quick, args.set, args.cpu) + [
        "data.dataset=cifar10", f"data.root={data_root}", f"data.cache_dir={work / 'cache'}",
        f"train.seed={seed}", f"train.device={args.device}", f"train.threads={args.threads}",
        "train.progress=false", f"out_dir={work / 'runs'}"]
    key = hashlib.sha256(json.dumps([recipe, sets]).encode()).hexdigest()[:8]
    name = f"{arm.replace(' ', '_')}__s{seed}__{key}"
    run = work / "runs" / name
    if (run / "summary.json").is_file() and (run / "wall.json").is_file():
        return {**json.loads((run / "summary.json").read_text()), **json.loads((run / "wall.json").read_text()),
                "reused": True}
    cfg = build(recipe, sets + [f"name={name}"])
    hooks = build_hooks(cfg)
    prepare_dataset(cfg.data)  # the store is built once, outside the timed run
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # a busy machine slows every run
    t0 = time.perf_counter()
    with Trainer(cfg, hooks=hooks, resume=(run / "config.json").is_file()) as tr:
        summary = tr.fit()
    wall = {"wall_s": time.perf_counter() - t0, "load_1min_at_start": load, "sets": sets, "recipe": recipe,
            "config": to_dict(cfg)["fast"]}
    (run / "wall.json").write_text(json.dumps(wall))
    return {**summary, **wall, "reused": False}


def _ms(xs: Sequence[float], scale: float = 1.0, fmt: str = "{:.1f}") -> str:
    xs = [x * scale for x in xs if x is not None]
    if not xs:
        return "–"
    if len(xs) == 1:
        return fmt.format(xs[0])
    return f"{fmt.format(statistics.mean(xs))} ± {fmt.replace('+', '').format(statistics.stdev(xs))}"


def report(results: Dict[str, List[Dict]], args, device, out: Path) -> str:
    seeds = [int(s) for s in args.seeds.split(",")]
    base = [r["final_test_acc"] for r in results["all"]]
    lines = [f"# Fast victim: airbench94's techniques one by one"
             f"{' (quick)' if args.quick else ' (CPU-sized)' if args.cpu else ''}", "",
             f"Command: `python bench/fast_victim.py {' '.join(sys.argv[1:])}`", "",
             f"Date: {today()}; hardware: {hardware_name(device)}; {versions()}; "
             f"torch threads: {args.threads or 'default'}; seeds {', '.join(map(str, seeds))}.", "",
             f"Data: the CIFAR-10 subset `{ARCHIVE}` (5,438 train / 1,017 test images)"
             + (f"; quick: {', '.join(QUICK)}" if args.quick else "")
             + (f"; CPU-sized: {', '.join(CPU)}; fast victim {', '.join(CPU_FAST)} (lr = the recipe's 1.5 × 256 / "
                f"1,024, the linear rule); reference {', '.join(CPU_REF)} (about the same CPU time per run)"
                if args.cpu else "") + ". Clean test accuracy of the last epoch, "
             "mean ± sample std over seeds; wall time of the whole run (`train()`: model, whitening, epochs, "
             "evaluation, files) and the trainer's own epoch + evaluation time (`total_time_s`).", ""]
    if args.quick:
        lines += [f"**Quick setting — a check that the script runs, not a measurement**: fast victim "
                  f"{', '.join(QUICK_FAST)}; reference {', '.join(QUICK_REF)}. Accuracies this short "
                  f"say nothing about the techniques, and on a shared machine the wall times of runs made one "
                  f"after the other follow its load, not the arm (each run's load is in its `wall.json`).", ""]
    lines += ["| arm | off value (`--set`) | what changes | clean test acc (%) | Δ vs all (pp) | wall s / run | train+eval s |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for arm, rs in results.items():
        recipe, sets, what = ARMS[arm]
        acc = [r["final_test_acc"] for r in rs]
        delta = [a - b for a, b in zip(acc, base)] if arm != "all" else []
        lines.append(f"| {arm} | {' '.join(f'`{s}`' for s in sets) or '–'} | {what} | {_ms(acc, 100)} | "
                     f"{_ms(delta, 100, '{:+.1f}') if delta else '–'} | {_ms([r['wall_s'] for r in rs], 1, '{:.1f}')} | "
                     f"{_ms([r['total_time_s'] for r in rs], 1, '{:.1f}')} |")
    lines += ["", "Values are the paper's (K. Jordan, arXiv 2404.00498; `ueperf/recipes/fast.py` says where each "
              "comes from and how the optimiser's were converted); nothing was tuned, on the test set or elsewhere. "
              "Δ is paired by seed (same seed, same data order). Runs: "
              f"`{args.work}`; the settings of each run are in its `wall.json` and `config.json`.", ""]
    text = "\n".join(lines)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/fast_victim.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (one run per arm and seed)")
    p.add_argument("--quick", action="store_true", help="small runs that check the script (see QUICK)")
    p.add_argument("--cpu", action="store_true", help="the CPU-sized victims of bench/proxy_validity.py (see CPU): "
                   "a measurement on 2,000 images that a CPU finishes in minutes")
    p.add_argument("--arms", default="", help="comma-separated arms (default: all; --list shows them)")
    p.add_argument("--data", default=SHARED_DATA,
                   help=f"folder holding {ARCHIVE} (default $UEPERF_SHARED_DATA or ../shared/data)")
    p.add_argument("--work", default="", help="where runs are kept (default ~/.cache/ueperf/fast_victim[_quick])")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra --set for every run")
    p.add_argument("--out", default="", help="report path (default bench/results/fast_victim[_quick]_<hw>_<date>.md)")
    p.add_argument("--list", action="store_true", help="list the arms and exit")
    args = p.parse_args(argv)
    if args.list:
        for arm, (recipe, sets, what) in ARMS.items():
            print(f"{arm:26s} {recipe:18s} {' '.join(sets) or '-':28s} {what}")
        return 0
    data_root = Path(args.data).expanduser() / ARCHIVE
    if not data_root.is_file():
        raise SystemExit(f"{data_root} not found: pass --data DIR (the folder holding {ARCHIVE})")
    device = pick_device(args.device)
    args.device = str(device)
    if args.quick and args.cpu:
        raise SystemExit("--quick and --cpu: choose one (--quick checks the script, --cpu measures at CPU size)")
    stem = "fast_victim_quick" if args.quick else "fast_victim_cpu" if args.cpu else "fast_victim"
    work = Path(args.work or f"~/.cache/ueperf/{stem}").expanduser()
    args.work = str(work)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()] or list(ARMS)
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arms {unknown}; --list shows them")
    if "all" not in arms:
        arms = ["all"] + arms  # the Δ column is against it
    seeds = [int(s) for s in args.seeds.split(",")]
    results: Dict[str, List[Dict]] = {}
    for arm in arms:
        results[arm] = []
        for s in seeds:
            r = run_arm(arm, s, args, data_root, work)
            results[arm].append(r)
            print(f"{arm} s{s}: clean test acc {100 * r['final_test_acc']:.2f}%  wall {r['wall_s']:.1f} s"
                  f"{'  (reused)' if r['reused'] else ''}", file=sys.stderr, flush=True)
    out = Path(args.out) if args.out else result_path(stem, device)
    print(report(results, args, device, out))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
