"""Compare runs: ``python -m ueperf.report RUN_OR_SWEEP_DIRS... [--out DIR]``.

Reads any set of run folders (``config.json`` + ``records.jsonl``, and ``summary.json`` once the
run has finished), sweep folders (every run under ``SWEEP/runs/``) and folders of runs (``runs/``)
and writes, in ``--out`` (default ``reports/<date>-<time>``):

    report.md    one row per run: run, protection, countermeasure, paradigm, dataset, model,
                 epochs, seed, final and best clean test accuracy, final training accuracy,
                 wall time, warnings, status (finished | incomplete)
    report.csv   the same rows, accuracies as fractions, time in minutes, plus each run's path
    report.png   every run's clean test accuracy per epoch, side by side (final ○, peak ★)

Examples::

    python -m ueperf.report runs/demo runs/demo-2                 # two runs
    python -m ueperf.report sweeps/cifar10-20261206-0412 --out cmp # every cell of a sweep
    python -m ueperf.report runs/* --out reports/all
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .errors import UeperfError

# (column, CSV header) in table order
COLUMNS = [("run", "run"), ("protection", "protection"), ("countermeasure", "countermeasure"),
           ("paradigm", "paradigm"), ("dataset", "dataset"), ("model", "model"), ("epochs", "epochs"),
           ("seed", "seed"), ("final test acc (%)", "final_test_acc"), ("best test acc (%)", "best_test_acc"),
           ("final train acc (%)", "final_train_acc"), ("time (min)", "time_min"), ("warnings", "warnings"),
           ("status", "status")]


@dataclass
class Run:
    """One run folder, read: what it is (``info``: ueperf.reports.runinfo) and its numbers."""
    path: Path
    label: str
    info: Dict[str, Any]
    records: List[Dict[str, Any]]
    finished: bool
    epochs: int                              # epochs done
    epochs_planned: Optional[int]
    final_test_acc: Optional[float]
    best_test_acc: Optional[float]
    final_train_acc: Optional[float]
    time_s: Optional[float]
    warnings: List[str] = field(default_factory=list)

    @property
    def curve(self) -> List[tuple]:
        """``[(epoch, clean test accuracy)]`` of the epochs that were evaluated."""
        return [(r["epoch"], r["test_acc"]) for r in self.records if r.get("test_acc") is not None and "epoch" in r]


# ───────────────────────────────────────────── finding runs ──
def is_run(path: Path) -> bool:
    return (path / "config.json").is_file()


def _runs_in(folder: Path) -> List[Path]:
    """The run folders directly inside ``folder``, by name."""
    return sorted(c for c in folder.iterdir() if c.is_dir() and is_run(c))


def find_runs(paths: Sequence[str]) -> List[Path]:
    """The run folders named by ``paths`` — run folders, sweep folders (the runs in ``runs/``) and
    folders of runs (``runs/``: the runs in it) — in the order given (a folder's runs by name), each
    once. Every path that is none of these is reported in one :class:`UeperfError`."""
    out: List[Path] = []
    bad: List[str] = []
    for p in paths:
        d = Path(p).expanduser()
        if not d.exists():
            bad.append(f"{p}: no such file or folder")
        elif not d.is_dir():
            bad.append(f"{p}: is a file, not a run folder (a run folder holds config.json, records.jsonl, "
                       f"summary.json)")
        elif is_run(d):
            out.append(d)
        elif (d / "runs").is_dir() and _runs_in(d / "runs"):
            out.extend(_runs_in(d / "runs"))
        elif (d / "runs").is_dir():
            bad.append(f"{p}: a sweep folder whose runs/ holds no run yet (no runs/*/config.json)")
        elif _runs_in(d):  # a folder of runs, e.g. runs/
            out.extend(_runs_in(d))
        else:
            bad.append(f"{p}: not a run folder (no config.json), a sweep folder (no runs/) nor a folder of runs")
    if bad:
        raise UeperfError("cannot compare these paths:\n  " + "\n  ".join(bad) +
                          "\nGive run folders (e.g. runs/demo) or sweep folders (e.g. sweeps/NAME).")
    seen, unique = set(), []
    for d in out:
        key = d.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return unique


def _labels(paths: List[Path]) -> List[str]:
    """Each run's folder name; where two share it, with as many parent folders as tell them apart."""
    labels = [p.name for p in paths]
    depth = 1
    while len(set(labels)) < len(labels) and depth < 8:
        depth += 1
        labels = [p.name if [q.name for q in paths].count(p.name) == 1 else "/".join(p.resolve().parts[-depth:])
                  for p in paths]
    return labels


def read_run_folder(path: Path, label: str = "") -> Run:
    """A run folder's description and numbers: summary.json's when the run finished, else what
    records.jsonl holds so far."""
    from .reports.records import read_records
    from .reports.runinfo import read_run
    try:
        config = json.loads((path / "config.json").read_text()).get("config", {})
    except (OSError, ValueError) as e:
        raise UeperfError(f"{path}/config.json cannot be read ({e}); is {path} a ueperf run folder?") from None
    try:
        summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").is_file() else None
    except (OSError, ValueError) as e:
        raise UeperfError(f"{path}/summary.json cannot be read ({e})") from None
    records = [r for r in read_records(path / "records.jsonl") if "epoch" in r]
    tests = [r["test_acc"] for r in records if r.get("test_acc") is not None]
    trains = [r["train_acc"] for r in records if r.get("train_acc") is not None]
    s = summary or {}
    return Run(
        path=path, label=label or path.name, info=read_run(path), records=records, finished=summary is not None,
        epochs=int(s.get("epochs", len(records))), epochs_planned=config.get("train", {}).get("epochs"),
        final_test_acc=s.get("final_test_acc", tests[-1] if tests else None),
        best_test_acc=s.get("best_test_acc", max(tests) if tests else None),
        final_train_acc=s.get("final_train_acc", trains[-1] if trains else None),
        time_s=s.get("total_time_s", records[-1].get("elapsed_s") if records else None),
        warnings=list(s.get("warnings") or []))


def read_runs(paths: Sequence[str]) -> List[Run]:
    folders = find_runs(paths)
    return [read_run_folder(p, label) for p, label in zip(folders, _labels(folders))]


# ───────────────────────────────────────────── table ──
def _pct(v: Optional[float]) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def row(run: Run) -> Dict[str, Any]:
    """The table's values for one run (accuracies as fractions, time in minutes; None = unknown)."""
    i = run.info
    return {"run": run.label, "protection": i.get("protection", "?"), "countermeasure": i.get("countermeasure", "?"),
            "paradigm": i.get("paradigm", "?"), "dataset": i.get("dataset", "?"), "model": i.get("model", "?"),
            "epochs": run.epochs, "seed": i.get("seed"), "final_test_acc": run.final_test_acc,
            "best_test_acc": run.best_test_acc, "final_train_acc": run.final_train_acc,
            "time_min": None if run.time_s is None else run.time_s / 60, "warnings": len(run.warnings),
            "status": "finished" if run.finished else "incomplete"}


def markdown(runs: Sequence[Run], command: str = "") -> str:
    from .reports.tables import md_table
    body = []
    for run in runs:
        r = row(run)
        epochs = str(r["epochs"]) if run.finished or run.epochs_planned is None else f"{r['epochs']}/{run.epochs_planned}"
        body.append([r["run"], r["protection"], r["countermeasure"], r["paradigm"], r["dataset"], r["model"], epochs,
                     "–" if r["seed"] is None else str(r["seed"]), _pct(r["final_test_acc"]), _pct(r["best_test_acc"]),
                     _pct(r["final_train_acc"]), "–" if r["time_min"] is None else f"{r['time_min']:.2f}",
                     str(r["warnings"]), r["status"]])
    lines = [f"# Comparison of {len(runs)} run{'s' if len(runs) != 1 else ''}", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [f"Date: {time.strftime('%Y-%m-%d')}. Accuracies on the clean test set (%); final = the last "
              "evaluated epoch, best = the highest over epochs; train = on the (protected, augmented) training set.", ""]
    lines += md_table([c for c, _ in COLUMNS], [[x.replace("|", "\\|") for x in b] for b in body])
    warned = [r for r in runs if r.warnings]
    if warned:
        lines += ["", "Warnings:", ""] + [f"- {r.label}: {w}" for r in warned for w in r.warnings]
    return "\n".join(lines) + "\n"


def csv_text(runs: Sequence[Run]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([h for _, h in COLUMNS] + ["path"])
    for run in runs:
        r = row(run)
        w.writerow([("" if r[h] is None else f"{r[h]:.4f}" if isinstance(r[h], float) else r[h]) for _, h in COLUMNS]
                   + [str(run.path)])
    return buf.getvalue()


# ───────────────────────────────────────────── figure ──
def plot(runs: Sequence[Run], path: Path) -> str:
    """Small multiples, one panel per run on a shared accuracy axis: clean test accuracy per epoch,
    the final value ○ and the peak ★ marked and labelled; the panel title names the run."""
    from .reports.plots import _plt, _save, epoch_axis
    from .reports.runinfo import run_title
    plt = _plt()
    n = len(runs)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows + 0.6), squeeze=False, sharey=True)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, run in zip(axes.flat, runs):
        curve = run.curve
        if curve:
            ep, acc = zip(*curve)
            ax.plot(ep, [100 * a for a in acc], "-o", ms=3, color="tab:green", label="clean test")
            k = max(range(len(acc)), key=lambda j: acc[j])
            ax.plot(ep[-1], 100 * acc[-1], "o", ms=9, mfc="none", mec="k", mew=1.5,
                    label=f"final {100 * acc[-1]:.1f}")
            ax.plot(ep[k], 100 * acc[k], "*", ms=13, color="tab:orange", label=f"peak {100 * acc[k]:.1f} (ep {ep[k]})")
            ax.legend(fontsize=7, loc="best")
        else:
            ax.text(0.5, 0.5, "no evaluated epoch yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_ylim(0, 100)
        ax.set_xlabel("epoch")
        epoch_axis(ax, [e for e, _ in curve])
        info = dict(run.info, run=run.label)
        ax.set_title(run_title(info, epochs=run.epochs, width=55) + ("" if run.finished else " (incomplete)"),
                     fontsize=7)
    for r in range(rows):
        axes[r][0].set_ylabel("clean test accuracy (%)")
    fig.suptitle(f"{n} run{'s' if n != 1 else ''}: clean test accuracy per epoch (final ○, peak ★)", fontsize=11)
    fig.tight_layout()
    return _save(fig, plt, path)


# ───────────────────────────────────────────── CLI ──
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ueperf.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="RUN_OR_SWEEP_DIR", help="run folders and/or sweep folders")
    p.add_argument("--out", default="", help="output folder (default reports/<date>-<time>)")
    return p


def write_report(paths: Sequence[str], out: Path, command: str = "") -> List[Run]:
    """Read the runs and write ``out``/report.{md,csv,png}; returns the runs in table order."""
    from .files import write_text_atomic
    runs = read_runs(paths)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "report.md", markdown(runs, command))
    write_text_atomic(out / "report.csv", csv_text(runs))
    try:
        plot(runs, out / "report.png")
    except ImportError:
        print("matplotlib is not installed: skipped report.png (pip install matplotlib)", file=sys.stderr)
    return runs


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    command = "python3 -m ueperf.report " + " ".join(shlex.quote(a) for a in argv)
    find_runs(args.paths)  # every path checked before anything is written
    out = Path(args.out or f"reports/{time.strftime('%Y%m%d-%H%M%S')}").expanduser()
    print(f"report folder: {out}/", file=sys.stderr, flush=True)
    runs = write_report(args.paths, out, command)
    print((out / "report.md").read_text())
    print(f"wrote {out}/report.md, report.csv and report.png ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    from .cli import run_cli
    run_cli(main)


def _console() -> None:
    """Entry point of the ``ueperf-report`` console script."""
    from .cli import run_cli
    run_cli(main)
