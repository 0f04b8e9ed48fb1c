"""Is the fast victim a valid proxy? The same protections × countermeasures grid under two victims
at the same CPU budget per run, and how well the fast victim ranks the protections like the standard one.

    python bench/proxy_validity.py run --dataset cifar --prior PRIOR     # both sweeps (reruns reuse finished cells)
    python bench/proxy_validity.py report --dataset cifar --prior PRIOR  # tables, rank correlations, plot
                                                 # (a hand-written "## Reading" section of the report is kept)
    python bench/proxy_validity.py print --prior PRIOR                   # the sweep commands, nothing run

The grid (issue 20): protections clean, random, em, rem, sp, ops, ap, aep, hypo, bait × countermeasures
nt, nt_cg, iss_jpeg, ueraser_lite, st_cg × seeds 0-2 (replicate s crafts every protection with seed s
and trains every victim with train.seed = s), run twice on the same protected stores:

- **standard**: the spec §3.0 recipe (``cifar10_resnet18``: SGD 0.1, cosine, batch 128, crop 4 + flip)
  with ResNet-18 at width 0.125, 8 epochs;
- **fast**: the ``fast_victim`` recipe (airbench94) with fastnet at width 0.25 and batch 256 (the
  recipe's batch of 1,024 is half of the 2,000 training images: 2 steps per epoch), its lr scaled
  with the batch (1.5 × 256 / 1,024 = 0.375, the linear rule; weight decay per epoch unchanged),
  everything else the recipe's 10 epochs.

The two widths make one run of each cost about the same on one CPU thread (~17 s for 2,000 images
here, measured side by side). Nothing was tuned on test data: the fast victim's values are the
paper's, scaled by rule; the standard recipe's are the spec's. ``ueraser_lite`` stands in for
UEraser (its R = 5 copies need a GPU). Protections at CPU budgets (those of
``protections_cpu-2core_2026-11-24.md``, REM at 100 iterations); BAIT crafts against the prior in
``--prior`` (a ResNet-18 pretrained on tiny-imagenet-100), the victims train from scratch.

Report (``bench/results/proxy_validity_<hardware>_<date>.md`` + .json + .png): both tables (mean ±
std over seeds), per countermeasure the Spearman rank correlation between the victims of protection
strength (clean-row accuracy − the row's accuracy, same victim and countermeasure) over the ten
rows — on the seed means, per seed (mean ± std), with a permutation p-value — Kendall's τ, the rows
whose rank moves by 3 or more, the rows on which the victims disagree about whether the protection
bites (drop > 5 points and > 2 std of the paired seeds), and the cost of each victim (time per run
and per grid).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from harness import REPO as ROOT, SHARED_DATA, cpu_name, hardware_tag, write_report  # noqa: E402  (bench/ is on the path)
from ueperf.reports.tables import fmt  # noqa: E402

PROTECTIONS = ["clean", "random", "em", "rem", "sp", "ops", "ap", "aep", "hypo", "bait"]
COUNTERMEASURES = ["nt", "nt_cg", "iss_jpeg", "ueraser_lite", "st_cg"]
SEEDS = "0,1,2"
TRAIN_LIMIT = 2000
PROTECT = {  # CPU budgets (protections_cpu-2core_2026-11-24.md; REM 100 iterations)
    "em": ["width=0.25", "max_rounds=6", "steps=5", "alpha=2/255", "train_steps=20"],
    "aep": ["surrogate_width=0.25", "surrogate_epochs=10", "steps=20", "tau=0.1"],
    "hypo": ["surrogate_width=0.25", "surrogate_epochs=10", "steps=20"],
    "rem": ["width=0.125", "iterations=100", "steps=4", "alpha=2/255", "adv_steps=2", "adv_alpha=2/255", "eot=1"],
    "bait": ["passes=3", "steps=5", "regen_steps=10"],
}
COMMON = ["train.threads=1", "train.eval_every=1000"]  # evaluate after the last epoch only (both victims alike)
VICTIMS: Dict[str, Tuple[str, List[str], str]] = {
    "standard": ("cifar10_resnet18", ["model.width=0.125", "train.epochs=8"],
                 "ResNet-18 w0.125, spec §3.0 recipe, 8 epochs"),
    "fast": ("fast_victim", ["model.width=0.25", "train.batch_size=256", "optim.lr=0.375"],
             "fastnet w0.25, fast_victim recipe, 10 epochs, batch 256, lr 0.375"),
}
DATASETS = {
    "cifar": ("CIFAR-10 subset, first 2,000 train images, 1,017 test images",
              lambda data: ["--dataset", "cifar10", "--root", str(data / "cifar-10-subset-python.tar.gz")]),
    "tiny": ("tiny-imagenet-100, classes 0-9 at 32 px, 2,000 train images, 500 test images",
             lambda data: ["--dataset", "imagefolder", "--root", str(data / "tiny-imagenet-100.tar.gz"),
                           "--data", "classes=0:10", "--data", "image_size=32"]),
}
BITES_PP = 5.0  # a protection "bites" when it lowers accuracy by more than this many points (and > 2 std)
# Full-scale reference (quoted in docs/methods.md §6, not measured here): CIFAR-10, ResNet-18, all
# 50,000 images, the papers' epochs and budgets. nt: paper (a) Table II; iss_jpeg: the ISS README's
# JPEG-10 column (its HYPO is the repositories' weaker default, cf. §6.9).
PUBLISHED = {
    "nt": ("paper (a) Table II, NT", {"clean": 92.41, "em": 19.93, "rem": 21.86, "sp": 13.67, "ops": 21.71,
                                      "aep": 6.82, "ap": 18.43, "hypo": 12.34}),
    "iss_jpeg": ("ISS README, JPEG-10", {"clean": 85.38, "em": 81.50, "rem": 81.50, "sp": 83.01, "ops": 82.53,
                                         "aep": 83.87, "ap": 85.15, "hypo": 85.45}),
}


def sweep_args(dataset: str, victim: str, data: Path, work: Path, prior: Path, workers: int) -> List[str]:
    recipe, sets, _ = VICTIMS[victim]
    args = DATASETS[dataset][1](data) + ["--data", f"train_limit={TRAIN_LIMIT}",
                                         "--protections", ",".join(PROTECTIONS),
                                         "--countermeasures", ",".join(COUNTERMEASURES), "--seeds", SEEDS,
                                         "--prior", str(prior), "--recipe", recipe]
    args += [a for m, kvs in PROTECT.items() for kv in kvs for a in ("--protect-set", f"{m}:{kv}")]
    args += [a for kv in sets + COMMON for a in ("--set", kv)]
    args += ["--out", str(work / dataset / victim)]
    if workers > 1:
        args += ["--launcher", "local", "--workers", str(workers)]
    return args


def run(args) -> int:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for ds in args.dataset.split(","):
        for victim in args.victims.split(","):  # standard first: it makes the stores the fast one reuses
            cmd = [sys.executable, "-m", "ueperf.sweep",
                   *sweep_args(ds, victim, Path(args.data), Path(args.work), Path(args.prior), args.workers), "--quiet"]
            print(f"$ {shlex.join(cmd)}", file=sys.stderr, flush=True)
            t0 = time.time()
            rc = subprocess.call(cmd, env=env, cwd=ROOT)
            _record_wall(Path(args.work) / ds / victim, time.time() - t0, rc)
            if rc:
                return rc
    return 0


def _record_wall(out: Path, seconds: float, rc: int) -> None:
    p = out / "walls.json"
    walls = json.loads(p.read_text()) if p.exists() else []
    walls.append({"seconds": seconds, "rc": rc, "at": time.strftime("%Y-%m-%d %H:%M:%S")})
    out.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(walls, indent=1))


# ── statistics (no scipy: written out) ────────────────────────────────────────────────────────
def ranks(xs: Sequence[float]) -> List[float]:
    """Ranks 1..n, ties get the mean of the ranks they span."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    ma, mb = statistics.mean(a), statistics.mean(b)
    sa = sum((x - ma) ** 2 for x in a) ** 0.5
    sb = sum((y - mb) ** 2 for y in b) ** 0.5
    if sa == 0 or sb == 0:
        return float("nan")
    return sum((x - ma) * (y - mb) for x, y in zip(a, b)) / (sa * sb)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    return pearson(ranks(a), ranks(b))


def kendall(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's τ-b."""
    conc = disc = ta = tb = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        da, db = a[i] - a[j], b[i] - b[j]
        if da == 0 and db == 0:
            continue
        if da == 0:
            ta += 1
        elif db == 0:
            tb += 1
        elif (da > 0) == (db > 0):
            conc += 1
        else:
            disc += 1
    den = ((conc + disc + ta) * (conc + disc + tb)) ** 0.5
    return (conc - disc) / den if den else float("nan")


def permutation_p(a: Sequence[float], b: Sequence[float], n: int = 20000, seed: int = 0) -> float:
    """One-sided p of Spearman's ρ ≥ the observed one under random pairings of the rows."""
    obs = spearman(a, b)
    rng = random.Random(seed)
    rb = ranks(b)
    ra = ranks(a)
    hits = 0
    perm = list(rb)
    for _ in range(n):
        rng.shuffle(perm)
        if pearson(ra, perm) >= obs - 1e-12:
            hits += 1
    return (hits + 1) / (n + 1)


# ── the report ─────────────────────────────────────────────────────────────────────────────────
def _load(work: Path, ds: str, victim: str, name: str) -> Optional[dict]:
    p = work / ds / victim / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def _mean(v: Sequence[Optional[float]]) -> Optional[float]:
    v = [x for x in v if x is not None]
    return statistics.mean(v) if v else None


def strengths(cells: dict, col: str, rows: Sequence[str], seed: Optional[int] = None) -> Optional[List[float]]:
    """clean − row accuracy (points) per row under ``col``: on the seed means, or of one seed."""
    def acc(r):
        v = cells[r][col]
        return v[seed] if seed is not None else _mean(v)
    base = acc("clean")
    out = []
    for r in rows:
        a = acc(r)
        if base is None or a is None:
            return None
        out.append(100 * (base - a))
    return out


def bites(cells: dict, row: str, col: str) -> Optional[bool]:
    d = [100 * (c - x) for c, x in zip(cells["clean"][col], cells[row][col]) if c is not None and x is not None]
    if len(d) < 2:
        return None
    m, s = statistics.mean(d), statistics.stdev(d)
    return m > BITES_PP and m > 2 * s


def analyse(std: dict, fast: dict) -> Dict[str, dict]:
    rows = [r for r in PROTECTIONS if r in std["cells"] and r in fast["cells"]]
    out = {}
    nseeds = len(SEEDS.split(","))
    for col in COUNTERMEASURES:
        if col not in std["columns"] or col not in fast["columns"]:
            continue
        a, b = strengths(std["cells"], col, rows), strengths(fast["cells"], col, rows)
        if a is None or b is None:
            continue
        per_seed = []
        for s in range(nseeds):
            sa, sb = strengths(std["cells"], col, rows, s), strengths(fast["cells"], col, rows, s)
            if sa is not None and sb is not None:
                per_seed.append(spearman(sa, sb))
        ra, rb = ranks([-x for x in a]), ranks([-x for x in b])  # rank 1 = strongest
        moved = [{"row": r, "standard_rank": x, "fast_rank": y} for r, x, y in zip(rows, ra, rb) if abs(x - y) >= 3]
        disagree = []
        for r in rows:
            if r == "clean":
                continue
            bs, bf = bites(std["cells"], r, col), bites(fast["cells"], r, col)
            if bs is not None and bf is not None and bs != bf:
                disagree.append({"row": r, "standard_bites": bs, "fast_bites": bf})
        # the noise ceiling: how well one seed of a victim ranks the rows like another seed of the same victim
        within = {}
        for v, t in (("standard", std), ("fast", fast)):
            ss = [strengths(t["cells"], col, rows, s) for s in range(nseeds)]
            pairs = [spearman(x, y) for x, y in itertools.combinations([x for x in ss if x is not None], 2)]
            within[v] = pairs
        out[col] = {"rows": rows, "standard": a, "fast": b, "spearman": spearman(a, b), "kendall": kendall(a, b),
                    "pearson": pearson(a, b), "p": permutation_p(a, b), "spearman_per_seed": per_seed,
                    "within_seed_pairs": within, "moved": moved, "disagree": disagree}
    return out


def _plot(res: Dict[str, dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = list(res)
    fig, axes = plt.subplots(1, len(cols), figsize=(3.6 * len(cols), 3.6), squeeze=False)
    for ax, col in zip(axes[0], cols):
        r = res[col]
        ax.scatter(r["standard"], r["fast"], s=14)
        for name, x, y in zip(r["rows"], r["standard"], r["fast"]):
            ax.annotate(name, (x, y), fontsize=7, xytext=(2, 2), textcoords="offset points")
        lo = min(r["standard"] + r["fast"]) - 2
        hi = max(r["standard"] + r["fast"]) + 2
        ax.plot([lo, hi], [lo, hi], lw=0.5, color="grey")
        ax.set_title(f"{col}: ρ = {r['spearman']:.2f}", fontsize=9)
        ax.set_xlabel("standard: clean − row acc (pp)", fontsize=8)
        ax.set_ylabel("fast: clean − row acc (pp)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _published_section(std: dict, fast: dict) -> List[str]:
    """Which victim reaches the full-scale verdicts: per countermeasure with published numbers, the
    rows that bite there (clean − row > BITES_PP) against the rows that bite under each victim, and
    Spearman ρ of strengths against the published ones over those rows."""
    lines = ["### Against the published full-scale numbers", "",
             "CIFAR-10, ResNet-18, 50,000 images, the papers' epochs and budgets (quoted in docs/methods.md §6, "
             "not measured here; BAIT and random have no published row). A published row bites when clean − row > "
             f"{BITES_PP:g} points.", "",
             "| countermeasure (source) | bite at full scale | bite under standard | bite under fast | "
             "agree (standard / fast) | Spearman ρ vs published (standard / fast) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for col, (source, pub) in PUBLISHED.items():
        rows = [r for r in pub if r != "clean" and r in std["cells"] and r in fast["cells"]]
        if col not in std["columns"] or col not in fast["columns"] or not rows:
            continue
        ref = {r: pub["clean"] - pub[r] > BITES_PP for r in rows}
        got = {v: {r: bool(bites(t["cells"], r, col)) for r in rows} for v, t in (("standard", std), ("fast", fast))}
        agree = " / ".join(f"{sum(got[v][r] == ref[r] for r in rows)} of {len(rows)}" for v in ("standard", "fast"))
        pstr = [pub["clean"] - pub[r] for r in rows]
        rho = []
        for t in (std, fast):
            st = strengths(t["cells"], col, ["clean"] + rows)
            rho.append("–" if st is None else f"{spearman(st[1:], pstr):.2f}")
        names = lambda d: ", ".join(r for r in rows if d[r]) or "none"  # noqa: E731
        lines.append(f"| {col} ({source}) | {names(ref)} | {names(got['standard'])} | {names(got['fast'])} | "
                     f"{agree} | {' / '.join(rho)} |")
    return lines + [""]


def _time_per_run(sweep: Path) -> List[float]:
    """Seconds per run (the trainer's total_time_s: model, epochs, evaluation) of every finished cell."""
    out = []
    for p in sorted((sweep / "runs").glob("*/summary.json")):
        t = json.loads(p.read_text()).get("total_time_s")
        if t is not None:
            out.append(float(t))
    return out


def report(args) -> int:
    work = Path(args.work)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    lines = [f"# Is the fast victim a valid proxy? ({time.strftime('%Y-%m-%d')})", "",
             f"Hardware: {cpu_name()}, {os.cpu_count()} cores, 1 torch thread per run, two runs side by side, "
             f"CPU only; torch {__import__('torch').__version__}.", "",
             f"Command: `python bench/proxy_validity.py run --dataset {args.dataset} --prior PRIOR && python "
             f"bench/proxy_validity.py report --dataset {args.dataset} --prior PRIOR` (the sweeps below; reruns reuse "
             "finished cells and stores; PRIOR: BAIT's, a ResNet-18 from `python -m ueperf.prior`).", "",
             "Victims, at about the same CPU time per run:", ""]
    lines += [f"- **{v}**: {d[2]} (`--recipe {d[0]} {' '.join('--set ' + s for s in d[1] + COMMON)}`)"
              for v, d in VICTIMS.items()]
    lines += ["", "Nothing was tuned on test data: the fast victim keeps airbench94's values, its lr scaled "
              "linearly with the batch (1.5 × 256/1,024); the standard one is spec §3.0's. "
              "`ueraser_lite` stands in for UEraser. Strength of a protection = clean-row accuracy − its "
              "accuracy, same victim and countermeasure (points); cells are final clean test accuracy (%), "
              "mean ± sample std over seeds 0-2.", ""]
    doc: Dict[str, dict] = {}
    for ds in args.dataset.split(","):
        title = DATASETS[ds][0]
        tabs = {}
        for victim in VICTIMS:
            out = work / ds / victim
            if (out / "runs").is_dir():
                subprocess.run([sys.executable, "-m", "ueperf.sweep",
                                *sweep_args(ds, victim, Path(args.data), work, Path(args.prior), 1),
                                "--table-only", "--quiet"], env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            tabs[victim] = (_load(work, ds, victim, "table"), _time_per_run(out))
        lines += [f"## {title}", ""]
        if any(t is None for t, _ in tabs.values()):
            lines += ["not run", ""]
            continue
        for victim, (t, _) in tabs.items():
            lines += [f"### {victim}: {VICTIMS[victim][2]}", "",
                      f"`python -m ueperf.sweep {shlex.join(sweep_args(ds, victim, Path('../shared/data'), Path('WORK'), Path('PRIOR'), args.workers))}`",
                      "", "| protection | " + " | ".join(t["columns"]) + " |", "| --- |" + " --- |" * len(t["columns"])]
            for r in t["rows"]:
                lines.append(f"| {r} | " + " | ".join(fmt(t["cells"][r][c], expect=3) for c in t["columns"]) + " |")
            lines.append("")
        res = analyse(tabs["standard"][0], tabs["fast"][0])
        lines += ["### Rank agreement of protection strength, per countermeasure", "",
                  "| countermeasure | Spearman ρ (seed means) | p (permutation, one-sided) | ρ per seed | Kendall τ | "
                  "Pearson r | ceiling: ρ seed vs seed, standard / fast | rows whose rank moves ≥ 3 (standard → fast) | "
                  "disagree on \"bites\" |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for col, r in res.items():
            ps = r["spearman_per_seed"]
            moved = ", ".join(f"{m['row']} {m['standard_rank']:g}→{m['fast_rank']:g}" for m in r["moved"]) or "none"
            dis = ", ".join(f"{d['row']} (standard {'bites' if d['standard_bites'] else 'no'}, "
                            f"fast {'bites' if d['fast_bites'] else 'no'})" for d in r["disagree"]) or "none"
            ceil = " / ".join(f"{statistics.mean(w):.2f}" if w else "–" for w in r["within_seed_pairs"].values())
            lines.append(f"| {col} | {r['spearman']:.2f} | {r['p']:.3f} | "
                         f"{statistics.mean(ps):.2f} ± {statistics.stdev(ps) if len(ps) > 1 else 0:.2f} | "
                         f"{r['kendall']:.2f} | {r['pearson']:.2f} | {ceil} | {moved} | {dis} |")
        lines += ["", f"\"Bites\": clean − row > {BITES_PP:g} points and > 2 std of the paired seeds. Rank 1 = the "
                  "strongest protection. Ceiling: the mean Spearman ρ between two seeds of the same victim (all "
                  "pairs) — how far seed noise alone lets single-seed rankings agree; the seed means are steadier "
                  "than one seed. Pearson r weighs the large effects; ρ weighs every row alike, also the rows "
                  "whose strength is within noise of 0.", ""]
        if ds == "cifar":  # the published numbers are CIFAR-10's: no reference for the other data set
            lines += _published_section(tabs["standard"][0], tabs["fast"][0])
        else:
            lines += ["No published full-scale numbers exist for this data set in this setting (10 classes at "
                      "32 px): the CIFAR-10 ones are not its reference, so it has no \"against the published\" "
                      "table.", ""]
        png = Path(args.out_stem + f"_{ds}.png")
        _plot(res, png)
        lines += [f"![strength under both victims]({png.name})", ""]
        tr = {v: t for v, (_, t) in tabs.items()}
        lines += ["### Cost on this CPU (1 thread per run)", "", "| victim | s / run (mean ± std over cells) | "
                  "runs | CPU-min per grid (the runs, not the crafting) | sweep wall time, 2 runs side by side |", "| --- | --- | --- | --- | --- |"]
        for v, xs in tr.items():
            walls = json.loads((work / ds / v / "walls.json").read_text()) if (work / ds / v / "walls.json").exists() else []
            wall = sum(w["seconds"] for w in walls)
            lines.append(f"| {v} | {fmt(xs, 1.0, expect=3)} | {len(xs)} | {sum(xs) / 60:.0f} | "
                         f"{wall / 60:.0f} min{' (includes crafting the stores)' if v == 'standard' else ''} |")
        lines.append("")
        doc[ds] = {"analysis": res, "tables": {v: t for v, (t, _) in tabs.items()}, "time_s": tr}
    Path(args.out_stem + ".json").write_text(json.dumps(doc, indent=1))
    write_report(Path(args.out_stem + ".md"), lines)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["run", "report", "print"])
    p.add_argument("--data", default=SHARED_DATA,
                   help="folder with cifar-10-subset-python.tar.gz and tiny-imagenet-100.tar.gz")
    p.add_argument("--work", default="proxy_work", help="where the sweeps write (default ./proxy_work)")
    p.add_argument("--prior", required=False, default="",
                   help="BAIT's prior: a ResNet-18 state dict from `python -m ueperf.prior` (its prior.json beside it)")
    p.add_argument("--dataset", default="cifar", help="cifar, tiny or cifar,tiny")
    p.add_argument("--victims", default="standard,fast", help="which sweeps `run` runs (standard first)")
    p.add_argument("--workers", type=int, default=2, help="runs side by side (one CPU thread each)")
    p.add_argument("--out-stem", default=str(ROOT / "bench" / "results" /
                                             f"proxy_validity_{hardware_tag()}_{time.strftime('%Y-%m-%d')}"))
    args = p.parse_args(argv)
    if args.what in ("run", "report", "print") and not args.prior:
        p.error("--prior PATH is required (BAIT crafts against it): build one with "
                "`python -m ueperf.prior --recipe tinyimagenet100_resnet18 --set data.image_size=32 --set model.stem=cifar ...`")
    if args.what == "print":
        for ds in args.dataset.split(","):
            for v in VICTIMS:
                print(shlex.join([sys.executable, "-m", "ueperf.sweep",
                                  *sweep_args(ds, v, Path(args.data), Path(args.work), Path(args.prior), args.workers)]))
        return 0
    return run(args) if args.what == "run" else report(args)


if __name__ == "__main__":
    sys.exit(main())
