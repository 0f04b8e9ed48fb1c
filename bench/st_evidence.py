"""Evidence for Progressive Staged Training on real images: the grid, its ablations, the verdict.

    python bench/st_evidence.py run    [--data DIR] [--work DIR] [--only cifar,tiny,ablations,calibration]
    python bench/st_evidence.py calibrate [--work DIR]           # the calibration alone (after the EM stores exist)
    python bench/st_evidence.py report [--work DIR] [--out bench/results/st_evidence_<hw>_<date>.md]
    python bench/st_evidence.py print                      # the sweep commands, to adapt

``run`` sweeps (python -m ueperf.sweep, one process per dataset, 1 thread each; reruns reuse
finished cells) the victims of the ST claims on the CIFAR-10 subset (5,438 images) and on 10
classes of tiny-imagenet-100 at 32 px: rows clean / random / EM, columns nt, nt_cg, st, st_cg,
st_full, iss_jpeg and ueraser_lite (the CPU-sized UEraser, ~6 min a cell on this CPU), seeds 0-2 — then ST-CG on the CIFAR EM
row under each alternative the implementation keeps (trigger, check interval, damping, rollback
depth, the paper's base lr, the reference window), and the 20-clean-image calibration of spec
§4.7 (``python -m ueperf.calibrate``, one per seed on that seed's EM store: jump ratio × α, the
choice by held-out accuracy; its grid doubles as the jump/α ablation). EM is crafted at a budget where NT with crop + flip
lands far below clean (eighth-width ResNet-18 surrogate, 6 rounds, EOT over crop + flip). Victims:
ResNet-18 at width 0.125, 8 epochs, the cifar10_resnet18 recipe (crop + flip, cosine, lr 0.1),
ST at its defaults; st_full fine-tunes 3 epochs on top (st.budget=extra, the paper's protocol).

``report`` redraws the grid sweeps' tables from their finished cells (``--table-only``), reads them
and the run summaries and writes the tables (mean ± sample std over seeds), how often ST fired, the
ablation and calibration tables, and the targets of the claim with paired verdicts (d_s = a_s − b_s
per seed; "beats by > 2 std" = mean(d) > 2 × std(d) and mean(d) > 0; "within t" = mean(d) > −t).
~4 h on 2 idle CPU cores for everything (the calibration is 27 trainings, ueraser_lite 6 min a cell); the data folder holds
cifar-10-subset-python.tar.gz and tiny-imagenet-100.tar.gz (default $UEPERF_SHARED_DATA or
../shared/data beside the repository).
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

EM = ["width=0.125", "max_rounds=6", "steps=5", "alpha=2/255", "train_steps=20", "stop_error=0",
      "eot_crop_flip=true", "eot=2"]
VICTIM = ["model.width=0.125", "train.epochs=8", "st.finetune_epochs=3", "train.threads=1"]
COLUMNS = ["nt", "nt_cg", "st", "st_cg", "st_full", "iss_jpeg"]
ROWS = "clean,random,em"
SEEDS = "0,1,2"
CALIBRATION_GRID = ["st.jump=1.3,1.5,2", "st.alpha=0.3,0.5,0.7"]  # spec §4.7's α × the default trigger's ratio
ABLATIONS = {  # name → the ST-CG settings it changes (EM row, CIFAR)
    "trigger=rise": ["st.trigger=rise"],
    "checks at epoch ends only": ["st.check_every=1000"],
    "damping exponential (deep groups too)": ["st.multiplier=exponential"],
    "rollback 1 check back": ["st.rollback=1"],
    "paper base lr 0.2": ["st.base_lr=paper"],
    "damping linear": ["st.multiplier=linear"],
    "reference window 2 epochs": ["st.window=2"],
}


def _sweeps(data: Path, work: Path) -> Dict[str, List[str]]:
    em = [a for kv in EM for a in ("--protect-set", f"em:{kv}")]
    vic = ["--recipe", "cifar10_resnet18"] + [a for kv in VICTIM for a in ("--set", kv)]
    cifar = ["--dataset", "cifar10", "--root", str(data / "cifar-10-subset-python.tar.gz")]
    tiny = ["--dataset", "imagefolder", "--root", str(data / "tiny-imagenet-100.tar.gz"),
            "--data", "classes=0:10", "--data", "image_size=32"]
    out = {"cifar": cifar + ["--protections", ROWS, "--countermeasures", ",".join(COLUMNS + ["ueraser_lite"]),
                             "--seeds", SEEDS] + em + vic + ["--out", str(work / "cifar")],
           "tiny": tiny + ["--protections", ROWS, "--countermeasures", ",".join(COLUMNS + ["ueraser_lite"]),
                           "--seeds", SEEDS] + em + vic + ["--out", str(work / "tiny")]}
    for i, (name, sets) in enumerate(ABLATIONS.items()):
        out[f"ablation{i}"] = cifar + ["--protections", "em", "--countermeasures", "st_cg", "--seeds", SEEDS] + em + vic + \
            [a for kv in sets for a in ("--set", kv)] + ["--out", str(work / f"ablation{i}")]
    return out


def run(args) -> int:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    sweeps = _sweeps(Path(args.data), Path(args.work))
    only = set(args.only.split(","))
    groups = [[k] for k in ("cifar", "tiny") if k in only]
    if "ablations" in only:
        groups.append([k for k in sweeps if k.startswith("ablation")])
    calibrate_cmd = shlex.join([sys.executable, str(Path(__file__).resolve()), "calibrate", "--work", args.work])
    if "calibration" in only:  # after the ablations, whose sweeps make (or reuse) the EM stores it needs
        groups.append((groups.pop() if "ablations" in only else []) + ["calibration"])
    procs = []
    for keys in groups:  # one process chain per group, the groups side by side
        cmd = " && ".join(calibrate_cmd if k == "calibration" else
                          shlex.join([sys.executable, "-m", "ueperf.sweep", *sweeps[k], "--quiet"]) for k in keys)
        print(f"$ {cmd}", file=sys.stderr)
        procs.append(subprocess.Popen(cmd, shell=True, env=env, cwd=ROOT))
    return max([p.wait() for p in procs] or [0])


def _em_store(work: Path, seed: int) -> Path:
    """The CIFAR EM store of ``seed`` that the sweeps trained on (recorded in a run's config)."""
    for sweep in ["cifar", *(f"ablation{i}" for i in range(len(ABLATIONS)))]:
        for col in ("nt", "st_cg"):
            cfg = work / sweep / "runs" / f"em__fs__{col}__s{seed}" / "config.json"
            if cfg.exists():
                return Path(json.loads(cfg.read_text())["config"]["data"]["dataset"])
    raise SystemExit(f"no CIFAR EM store of seed {seed} under {work}: run the cifar or ablation sweeps first "
                     f"(python bench/st_evidence.py run --only cifar)")


def calibrate(args) -> int:
    """Spec §4.7 on the CIFAR EM row: per seed, ``python -m ueperf.calibrate`` of ST-CG over
    CALIBRATION_GRID on that seed's EM store, choosing on 20 clean held-out test images."""
    work = Path(args.work)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for seed in map(int, SEEDS.split(",")):
        cmd = [sys.executable, "-m", "ueperf.calibrate", "--dataset", str(_em_store(work, seed)),
               "--countermeasure", "st_cg", *[a for g in CALIBRATION_GRID for a in ("--grid", g)],
               "--recipe", "cifar10_resnet18", *[a for kv in VICTIM if not kv.startswith("st.finetune")
                                                 for a in ("--set", kv)],
               "--set", f"train.seed={seed}",
               "--set", f"out_dir={work / 'calibration'}", "--name", f"em_s{seed}"]
        print(f"$ {shlex.join(cmd)}", file=sys.stderr)
        rc = subprocess.call(cmd, env=env, cwd=ROOT)
        if rc:
            return rc
    return 0


# ── the report ─────────────────────────────────────────────────────────────────────────────────
def _table(sweep: Path) -> Optional[dict]:
    p = sweep / "table.json"
    return json.loads(p.read_text()) if p.exists() else None


def _summaries(sweep: Path, row: str, col: str) -> List[dict]:
    out = []
    for s in (0, 1, 2):
        p = sweep / "runs" / f"{row}__fs__{col}__s{s}" / "summary.json"
        if p.exists():
            out.append(json.loads(p.read_text()))
    return out


def _paired(a: Sequence[Optional[float]], b: Sequence[Optional[float]]):
    d = [100 * (x - y) for x, y in zip(a, b) if x is not None and y is not None]
    if len(d) < 2:
        return None
    return statistics.mean(d), statistics.stdev(d), len(d)


def _verdict(a, b, label, holds) -> str:
    """A targets-table row: the paired a − b (points) and whether ``holds(mean, std)``."""
    p = _paired(a, b)
    if p is None:
        return f"| {label} | – | not measured |"
    m, s, n = p
    return f"| {label} | {m:+.1f} ± {s:.1f} (n={n}) | {'**met**' if holds(m, s) else 'not met'} |"


def _beats(m: float, s: float) -> bool:        # beats by more than 2 std of the paired difference
    return m > 0 and m > 2 * s


def _calibration_section(work: Path, base: Optional[dict]) -> List[str]:
    """Spec §4.7 on the CIFAR EM row: the grid's mean test accuracy per point (the jump/α ablation),
    each seed's choice on 20 clean held-out images, and the chosen runs against NT-CG."""
    docs = {s: work / "calibration" / f"em_s{s}" / "calibration.json" for s in map(int, SEEDS.split(","))}
    docs = {s: json.loads(p.read_text()) for s, p in docs.items() if p.exists()}
    lines = ["## Calibration on 20 clean images (spec §4.7): ST-CG on the CIFAR EM row", "",
             f"`python bench/st_evidence.py calibrate` — per seed, `python -m ueperf.calibrate --countermeasure st_cg "
             f"{' '.join('--grid ' + g for g in CALIBRATION_GRID)}` on that seed's EM store (victim as above, 8 epochs): "
             "each grid point trains ST-CG once; the choice is the best accuracy on 20 clean held-out test images "
             "(2 per class), which every calibration run leaves out of its test set (so its test accuracy is on "
             "997 of the 1,017 test images).", ""]
    if not docs:
        return lines + ["not run", ""]
    points = [r["point"] for r in next(iter(docs.values()))["runs"]]
    keys = list(points[0])
    lines += ["Grid (mean ± std over seeds; n = seeds finished):", "",
              "| " + " | ".join(keys) + " | test acc (%) | held-out acc (%) | rollbacks / run | chosen by |",
              "|" + " --- |" * (len(keys) + 4)]
    for i, pt in enumerate(points):
        rows = [d["runs"][i] for d in docs.values() if i < len(d["runs"])]
        chosen = [str(s) for s, d in docs.items() if d["choice"] == pt]
        rej = [r["rejections"] for r in rows if r.get("rejections") is not None]
        lines.append("| " + " | ".join(str(pt[k]) for k in keys) + f" | {fmt([r['test_acc'] for r in rows], expect=3)} | "
                     f"{fmt([r['holdout_acc'] for r in rows], expect=3)} | "
                     f"{statistics.mean(rej) if rej else 0:.1f} | {('seed ' + ', '.join(chosen)) if chosen else ''} |")
    chosen_acc = {s: next(r["test_acc"] for r in d["runs"] if r["point"] == d["choice"]) for s, d in docs.items()}
    default = {s: next((r["test_acc"] for r in d["runs"] if r["point"] == {"st.jump": "1.5", "st.alpha": "0.5"}), None)
               for s, d in docs.items()}
    lines += ["", "| per seed | choice | its test acc (%) |", "| --- | --- | --- |"]
    lines += [f"| {s} | `{d['set']}` | {100 * chosen_acc[s]:.1f} |" for s, d in docs.items()]
    lines += ["", "Targets with the calibrated ST-CG (paired over seeds, percentage points; NT-CG on the full test set):",
              "", "| claim | a − b | verdict |", "| --- | --- | --- |"]
    seeds = sorted(docs)
    if base is not None:
        ntcg = [base["cells"]["em"]["nt_cg"][s] for s in seeds]
        lines.append(_verdict([chosen_acc[s] for s in seeds], ntcg, "calibrated ST-CG beats NT-CG by > 2 std", _beats))
    lines.append(_verdict([chosen_acc[s] for s in seeds], [default[s] for s in seeds],
                          "calibrated ST-CG beats ST-CG at the defaults by > 2 std (same 997 test images)", _beats))
    return lines + [""]


def report(args) -> int:
    work = Path(args.work)
    sweeps = _sweeps(Path(args.data), work)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for key in ("cifar", "tiny"):  # the tables of the whole grid, whichever commands filled the folders
        if (work / key / "runs").is_dir():
            subprocess.run([sys.executable, "-m", "ueperf.sweep", *sweeps[key], "--table-only", "--quiet"], env=env,
                           cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    lines = [f"# Progressive Staged Training on real images ({time.strftime('%Y-%m-%d')})", "",
             f"Hardware: {cpu_name()}, {os.cpu_count()} cores, 1 torch thread per run, CPU only; "
             f"torch {__import__('torch').__version__}.", "",
             "Command: `python bench/st_evidence.py run && python bench/st_evidence.py report` "
             "(the sweeps below; reruns reuse finished cells).", "",
             "Victims: ResNet-18 at width 0.125, 8 epochs, recipe cifar10_resnet18 (crop + flip, cosine, lr 0.1, "
             "batch 128); ST at its defaults (jump 1.5 × the last epoch's median, checks ≥ 4 per epoch, warm-up "
             "1 epoch / 50 steps, rollback before the rise, geometric α 0.5, base lr = NT's); st_full = ST-CG 8 "
             "epochs + 3 fine-tune epochs (the paper's extra budget). EM: eighth-width surrogate, 6 rounds of "
             "5 × 2/255 steps, EOT over crop + flip, ε 8/255. Cells: final clean test accuracy (%), mean ± "
             "sample std over seeds 0-2.", ""]
    for key, title in (("cifar", "CIFAR-10 subset (5,438 train / 1,017 test images)"),
                       ("tiny", "tiny-imagenet-100, 10 classes at 32 px (5,000 train / 500 test)")):
        t = _table(work / key)
        if t is None:
            lines += [f"## {title}", "", "not run", ""]
            continue
        lines += [f"## {title}", "", f"`python -m ueperf.sweep {' '.join(sweeps[key])}`", "",
                  "| protection | " + " | ".join(t["columns"]) + " |", "| --- |" + " --- |" * len(t["columns"])]
        for r in t["rows"]:
            lines.append(f"| {r} | " + " | ".join(fmt(t["cells"][r][c], expect=3) for c in t["columns"]) + " |")
        lines += ["", "How often ST fired (rollbacks per run, mean over seeds; epochs with a rollback):", "",
                  "| protection | " + " | ".join(c for c in t["columns"] if c.startswith("st")) + " |",
                  "| --- |" + " --- |" * sum(c.startswith("st") for c in t["columns"])]
        for r in t["rows"]:
            cells = []
            for c in (c for c in t["columns"] if c.startswith("st")):
                ss = _summaries(work / key, r, c)
                if not ss:
                    cells.append("–")
                    continue
                rej = statistics.mean(s.get("st_rejections", 0) for s in ss)
                ep = sorted({e for s in ss for e in s.get("st_rejected_epochs", [])})
                cells.append(f"{rej:.1f} (epochs {','.join(map(str, ep)) or 'none'})")
            lines.append(f"| {r} | " + " | ".join(cells) + " |")
        c = t["cells"]
        lines += ["", "Targets (paired over seeds, percentage points):", "", "| claim | a − b | verdict |", "| --- | --- | --- |"]
        if "em" in c:
            lines.append(_verdict(c["clean"]["nt"], c["em"]["nt"], "EM bites: clean NT − EM NT > 15", lambda m, s: m > 15))
            lines.append(_verdict(c["em"]["st_cg"], c["em"]["nt_cg"], "EM row: ST-CG beats NT-CG by > 2 std", _beats))
            best = [None if x is None or y is None else max(x, y) for x, y in zip(c["em"]["nt_cg"], c["em"]["st_cg"])]
            lines.append(_verdict(c["em"]["st_full"], best, "EM row: ST-Full beats max(NT-CG, ST-CG) by > 2 std", _beats))
            lines.append(_verdict(c["em"]["st"], c["em"]["nt"], "EM row: ST beats NT by > 2 std", _beats))
        lines.append(_verdict(c["clean"]["st_full"], c["clean"]["nt"], "clean: ST-Full within 2 of NT", lambda m, s: m > -2))
        lines.append(_verdict(c["clean"]["st_cg"], c["clean"]["nt_cg"], "clean: ST-CG within 3 of NT-CG", lambda m, s: m > -3))
        lines.append("")
    base = _table(work / "cifar")
    lines += ["## Ablations: ST-CG on the CIFAR EM row", "",
              "Each row changes one ST setting from its default (same EM stores, seeds 0-2; the EM row only — at "
              "the defaults ST never fired on clean data). Jump ratio and α values: the calibration grid below.", "",
              "| ST-CG variant | EM test acc (%) | − NT-CG, paired | rollbacks / run |", "| --- | --- | --- | --- |"]
    if base is not None:
        ss = _summaries(work / "cifar", "em", "st_cg")
        rej = f"{statistics.mean(s.get('st_rejections', 0) for s in ss):.1f}" if ss else "–"
        p = _paired(base["cells"]["em"]["st_cg"], base["cells"]["em"]["nt_cg"])
        lines.append(f"| defaults | {fmt(base['cells']['em']['st_cg'], expect=3)} | "
                     f"{'–' if p is None else f'{p[0]:+.1f} ± {p[1]:.1f}'} | {rej} |")
    for i, (name, sets) in enumerate(ABLATIONS.items()):
        t = _table(work / f"ablation{i}")
        if t is None:
            lines.append(f"| {name} (`{' '.join(sets)}`) | not run | | |")
            continue
        ss = _summaries(work / f"ablation{i}", "em", "st_cg")
        rej = f"{statistics.mean(s.get('st_rejections', 0) for s in ss):.1f}" if ss else "–"
        p = None if base is None else _paired(t["cells"]["em"]["st_cg"], base["cells"]["em"]["nt_cg"])
        lines.append(f"| {name} (`{' '.join(sets)}`) | {fmt(t['cells']['em']['st_cg'], expect=3)} | "
                     f"{'–' if p is None else f'{p[0]:+.1f} ± {p[1]:.1f}'} | {rej} |")
    lines.append("")
    lines += _calibration_section(work, base)
    out = Path(args.out or ROOT / "bench" / "results" / f"st_evidence_{hardware_tag()}_{time.strftime('%Y-%m-%d')}.md")
    write_report(out, lines)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["run", "calibrate", "report", "print"],
                   help="run the sweeps (and the calibration), the calibration alone, write the report, or print the sweep commands")
    p.add_argument("--data", default=SHARED_DATA,
                   help="folder with cifar-10-subset-python.tar.gz and tiny-imagenet-100.tar.gz")
    p.add_argument("--work", default="~/.cache/ueperf/st_evidence", help="sweep folders (reused on rerun)")
    p.add_argument("--only", default="cifar,tiny,ablations,calibration",
                   help="run: which parts (cifar, tiny, ablations, calibration)")
    p.add_argument("--out", default="", help="report path (default bench/results/st_evidence_<hw>_<date>.md)")
    args = p.parse_args(argv)
    args.work = str(Path(args.work).expanduser())
    if args.what == "print":
        for name, argv_ in _sweeps(Path(args.data), Path(args.work)).items():
            print(f"# {name}\npython3 -m ueperf.sweep {shlex.join(argv_)} --quiet")
        return 0
    return {"run": run, "calibrate": calibrate, "report": report}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
