"""Protections × training paradigms with a transformer prior, beside the same sweep with a ResNet prior.

    python bench/vit_prior.py print               # the two sweep commands (nothing run)
    python bench/vit_prior.py run [--only vit]    # the sweeps (each builds and caches its prior first)
    python bench/vit_prior.py report              # tables + what differs → bench/results/vit_prior_<hw>_<date>.md

Issue 19's check that the paradigms, BAIT and SSC behave with a ViT prior as with a CNN one.
Both sweeps are the same but for the family:

- **prior**: ``python -m ueperf.prior --recipe tinyimagenet100_resnet18`` with ``model.name`` =
  ``vit_small`` (ViT-S/16 dimensions at width 0.125: 48 wide, 12 blocks, 4-px patches at 32 px)
  or ``resnet18`` (width 0.125, CIFAR stem), trained on 10,000 tiny-imagenet-100 images at 32 px
  (100 classes, a source disjoint from the target), 8 epochs — built by the sweep (``--prior
  RECIPE --prior-set ...``) and cached;
- **target**: the first 2,000 images of the CIFAR-10 subset, all 1,017 test images;
- **rows**: clean, EM (its own from-scratch quarter-width ResNet surrogate, as in
  proxy_validity), BAIT and SSC crafted against the prior (white-box: the prior the victims start
  from) at the CPU budgets of paradigms_cpu-2core_2026-11-24.md;
- **paradigms**: fs (from scratch), lp (head only), pf-half (the stem or patch embedding and half
  the body frozen: ResNet ``pf2`` = 2 of 4 stages, ViT ``pf6`` = 6 of 12 blocks), ft (all layers);
  victims of the prior's family and width, 8 epochs, cosine, batch 128, crop + flip; the ResNet
  (prior and victims) with the spec §3.0 SGD (lr 0.1; the paradigms' body lr × 0.1), the ViT with
  AdamW as DeiT/timm train one (lr 1e-3, weight decay 0.05 off biases, norms and tokens, 1 warm-up
  epoch; the paradigms' body lr × 0.1); seeds 0-2.

Cells: final clean test accuracy (%), mean ± std over seeds; "what differs" compares the effect of
each protection (clean − row, paired by seed) and the value of the prior (ft − fs on clean data)
between the two families. On this CPU the ViT runs are ~10× the ResNet ones (see the sweep's own
cost estimate, printed when it starts).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from harness import REPO as ROOT, SHARED_DATA, cpu_name, hardware_tag, write_report  # noqa: E402  (bench/ is on the path)
from ueperf.reports.tables import fmt  # noqa: E402

ROWS = ["clean", "em", "bait", "ssc"]
SEEDS = "0,1,2"
TRAIN_LIMIT = 2000
PROTECT = {
    "em": ["width=0.25", "max_rounds=6", "steps=5", "alpha=2/255", "train_steps=20"],
    "bait": ["passes=3", "steps=5", "regen_steps=10"],
    "ssc": ["max_rounds=8", "steps=5", "alpha=2/255"],
}
# the ViT trains as timm/DeiT users train one: AdamW, lr 1e-3 (for batch 128), weight decay 0.05 off
# biases, norms and tokens, 1 warm-up epoch; the ResNet with the spec §3.0 SGD recipe
VIT_OPTIM = ["optim.optimizer=adamw", "optim.lr=1e-3", "optim.weight_decay=0.05", "optim.wd_exclude=timm",
             "optim.warmup_epochs=1"]
FAMILIES = {  # family → (model and optimiser --set values, paradigms, pf-half's name)
    "vit": (["model.name=vit_small", "model.width=0.125", "model.stem=auto"] + VIT_OPTIM, ["fs", "lp", "pf6", "ft"],
            "pf6"),
    "resnet": (["model.name=resnet18", "model.width=0.125", "model.stem=cifar"], ["fs", "lp", "pf2", "ft"], "pf2"),
}
PRIOR = ["data.image_size=32", "data.train_limit=10000", "data.test_limit=1000", "train.epochs=8", "train.threads=1"]
VICTIM = ["train.epochs=8", "train.threads=1", "train.eval_every=1000"]


def sweep_args(family: str, data: Path, work: Path, workers: int) -> List[str]:
    model, paradigms, _ = FAMILIES[family]
    tiny = data / "tiny-imagenet-100.tar.gz"
    args = ["--dataset", "cifar10", "--root", str(data / "cifar-10-subset-python.tar.gz"),
            "--data", f"train_limit={TRAIN_LIMIT}", "--protections", ",".join(ROWS),
            "--paradigms", ",".join(paradigms), "--countermeasures", "nt", "--seeds", SEEDS,
            "--prior", "tinyimagenet100_resnet18", "--recipe", "cifar10_resnet18"]
    args += [a for kv in [f"data.root={tiny}"] + PRIOR + model for a in ("--prior-set", kv)]
    args += [a for m, kvs in PROTECT.items() for kv in kvs for a in ("--protect-set", f"{m}:{kv}")]
    args += [a for kv in model + VICTIM for a in ("--set", kv)]
    args += ["--out", str(work / family)]
    if workers > 1:
        args += ["--launcher", "local", "--workers", str(workers)]
    return args


def run(args) -> int:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for fam in args.only.split(","):
        cmd = [sys.executable, "-m", "ueperf.sweep", *sweep_args(fam, Path(args.data), Path(args.work), args.workers),
               "--quiet"]
        print(f"$ {shlex.join(cmd)}", file=sys.stderr, flush=True)
        rc = subprocess.call(cmd, env=env, cwd=ROOT)
        if rc:
            return rc
    return 0


def paired(a: Sequence[Optional[float]], b: Sequence[Optional[float]]) -> str:
    """mean ± std over seeds of a − b (points)."""
    d = [100 * (x - y) for x, y in zip(a, b) if x is not None and y is not None]
    if len(d) < 2:
        return "–"
    return f"{statistics.mean(d):+.1f} ± {statistics.stdev(d):.1f}"


def column(t: dict, row: str, paradigm: str) -> Optional[List[Optional[float]]]:
    """The seeds of (row, paradigm) in a sweep table (columns are paradigm names when there is one
    countermeasure, else 'paradigm/countermeasure')."""
    for c in t["columns"]:
        if c == paradigm or c.split("/")[0] == paradigm or c.startswith(paradigm + " "):
            return t["cells"].get(row, {}).get(c)
    return None


def report(args) -> int:
    work = Path(args.work)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    lines = [f"# Protections × paradigms with a ViT prior and with a ResNet prior ({time.strftime('%Y-%m-%d')})", "",
             f"Hardware: {cpu_name()}, {os.cpu_count()} cores, 1 torch thread per run; torch "
             f"{__import__('torch').__version__}. Command: `python bench/vit_prior.py run && python bench/vit_prior.py "
             "report`. Setting: see the script's docstring (target 2,000 CIFAR-10 images; priors on 10,000 "
             "tiny-imagenet-100 images at 32 px; victims of the prior's family, 8 epochs; seeds 0-2). Cells: final "
             "clean test accuracy (%), mean ± std over seeds.", ""]
    tabs: Dict[str, dict] = {}
    for fam, (_, paradigms, _) in FAMILIES.items():
        out = work / fam
        if not (out / "runs").is_dir():
            lines += [f"## {fam} prior", "", "not run", ""]
            continue
        subprocess.run([sys.executable, "-m", "ueperf.sweep", *sweep_args(fam, Path(args.data), work, 1),
                        "--table-only", "--quiet"], env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        t = json.loads((out / "table.json").read_text())
        tabs[fam] = t
        prior = sorted((Path(args.cache) / "priors").glob("tinyimagenet100_resnet18-*/prior.json")) if args.cache else []
        lines += [f"## {fam} prior", "",
                  f"`python -m ueperf.sweep {shlex.join(sweep_args(fam, Path('../shared/data'), Path('WORK'), args.workers))}`", "",
                  "| protection | " + " | ".join(paradigms) + " |", "| --- |" + " --- |" * len(paradigms)]
        for r in ROWS:
            lines.append(f"| {r} | " + " | ".join(fmt(column(t, r, p) or [], expect=3) for p in paradigms) + " |")
        lines.append("")
        for pj in prior:
            d = json.loads(pj.read_text())
            if d.get("model") == FAMILIES[fam][0][0].split("=")[1]:
                lines += [f"Prior: `$UEPERF_CACHE_DIR/{pj.parent.relative_to(args.cache)}` — {d.get('model')} width {d.get('width')}, {d.get('epochs')} epochs, "
                          f"{100 * d.get('final_test_acc', 0):.1f} % on 1,000 tiny-imagenet-100 val images (100 classes).", ""]
    if len(tabs) == 2:
        lines += ["## What differs between the families", "",
                  "Effect of each protection (clean − row, points, paired by seed) under each paradigm; pf-half is "
                  "ResNet pf2 / ViT pf6. Last row: the value of the prior on clean data (ft − fs).", "",
                  "| | " + " | ".join(f"{p} ResNet | {p} ViT" for p in ("fs", "lp", "pf-half", "ft")) + " |",
                  "| --- |" + " --- | --- |" * 4]
        for r in ROWS[1:]:
            cells = []
            for p in ("fs", "lp", "pf-half", "ft"):
                for fam in ("resnet", "vit"):
                    name = FAMILIES[fam][2] if p == "pf-half" else p
                    t = tabs[fam]
                    a, b = column(t, "clean", name), column(t, r, name)
                    cells.append(paired(a, b) if a and b else "–")
            lines.append(f"| {r} | " + " | ".join(cells) + " |")
        cells = []
        for p in ("fs", "lp", "pf-half", "ft"):
            for fam in ("resnet", "vit"):
                name = FAMILIES[fam][2] if p == "pf-half" else p
                a, b = column(tabs[fam], "clean", name), column(tabs[fam], "clean", "fs")
                cells.append(paired(a, b) if a and b and p != "fs" else "–")
        lines += ["| clean: − fs | " + " | ".join(cells) + " |", ""]
    out = Path(args.out or ROOT / "bench" / "results" / f"vit_prior_{hardware_tag()}_{time.strftime('%Y-%m-%d')}.md")
    write_report(out, lines)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["run", "report", "print"])
    p.add_argument("--data", default=SHARED_DATA,
                   help="folder with cifar-10-subset-python.tar.gz and tiny-imagenet-100.tar.gz")
    p.add_argument("--work", default="vit_prior_work", help="where the sweeps write (default ./vit_prior_work)")
    p.add_argument("--cache", default=os.environ.get("UEPERF_CACHE_DIR", ""),
                   help="the cache holding the priors (default $UEPERF_CACHE_DIR), for the report's prior lines")
    p.add_argument("--only", default="resnet,vit", help="which sweeps `run` runs, in order")
    p.add_argument("--workers", type=int, default=2, help="runs side by side (one CPU thread each)")
    p.add_argument("--out", default="", help="report path")
    args = p.parse_args(argv)
    if args.what == "print":
        for fam in args.only.split(","):
            print(shlex.join([sys.executable, "-m", "ueperf.sweep",
                              *sweep_args(fam, Path(args.data), Path(args.work), args.workers)]))
        return 0
    return run(args) if args.what == "run" else report(args)


if __name__ == "__main__":
    sys.exit(main())
