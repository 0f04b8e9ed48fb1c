"""Spread of the gate's value-from-training checks: is every margin at least 3× its spread?

    python bench/gate_margins.py [--seeds 0,1,2] [--threads 1,2] [--out bench/results/gate_margins_<hw>_<date>.md]

Runs ``pytest -m margin tests`` once per (seed, torch thread count) with UEPERF_GATE_SEED and
OMP_NUM_THREADS set, each check logging ``value``, ``bound`` and ``margin`` (= distance on the
passing side) through tests/margins.py. Per assertion it reports the values over all runs, the
spread (max − min of the margin, which moves with both the value and a data-dependent bound),
the smallest margin and their ratio; the rule for a check to stay in the gate is
min margin >= 3 × spread. A check that failed in some run shows a negative min margin.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from harness import REPO as ROOT, cpu_name  # noqa: E402  (bench/ is on the path: run as a script)


def run(seeds, threads, log: Path, extra) -> list:
    runs = []
    for t in threads:
        for s in seeds:
            env = dict(os.environ, UEPERF_GATE_SEED=str(s), OMP_NUM_THREADS=str(t), UEPERF_MARGIN_LOG=str(log))
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "margin", "-p", "no:cacheprovider",
                                *extra, "tests"], cwd=ROOT, env=env, capture_output=True, text=True)
            tail = (r.stdout.strip().splitlines() or [""])[-1]
            runs.append({"seed": s, "threads": t, "rc": r.returncode, "summary": tail,
                         "seconds": round(time.perf_counter() - t0, 1)})
            print(f"seed {s} threads {t}: {tail} ({runs[-1]['seconds']} s)", file=sys.stderr, flush=True)
    return runs


def report(rows, runs, args) -> str:
    by = defaultdict(list)
    for r in rows:
        by[(r["test"], r["label"])].append(r)
    out = [f"# Gate margins: spread of the value-from-training checks ({time.strftime('%Y-%m-%d')})", "",
           f"Command: `python bench/gate_margins.py --seeds {args.seeds} --threads {args.threads}`  ",
           f"Hardware: {cpu_name()}, {os.cpu_count()} cores; Python {platform.python_version()}, "
           f"torch {__import__('torch').__version__}", "",
           "Each row is one assertion of a `margin`-marked test (tests/margins.py), run once per seed "
           "(UEPERF_GATE_SEED) and torch thread count (OMP_NUM_THREADS). margin = distance from the bound on the "
           "passing side; spread = max − min of the margin over the runs; the rule is min margin >= 3 × spread.", "",
           "| test | assertion | values (min … max) | bound (min … max) | min margin | spread | ratio | verdict |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    worst = None
    for (test, label), rs in sorted(by.items()):
        v = [r["value"] for r in rs]
        b = [r["bound"] for r in rs]
        m = [r["margin"] for r in rs]
        spread = max(m) - min(m)
        ratio = float("inf") if spread == 0 else min(m) / spread
        ok = min(m) > 0 and ratio >= 3
        worst = ratio if worst is None else min(worst, ratio)
        out.append(f"| {test.split('::', 1)[1]} | {label} | {min(v):.4f} … {max(v):.4f} | {min(b):.4f} … {max(b):.4f} | "
                   f"{min(m):.4f} | {spread:.4f} | {ratio:.1f} | {'ok' if ok else '**too thin**'} |"
                   .replace("| inf |", "| ∞ |"))
    out += ["", "Runs:", ""] + [f"- seed {r['seed']}, {r['threads']} thread(s): {r['summary']} ({r['seconds']} s)"
                                for r in runs]
    out += ["", f"{len(by)} assertions; the thinnest ratio is {worst:.1f}." if worst is not None else "no assertions logged"]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--out", default="")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (e.g. -k bait)")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    with tempfile.TemporaryDirectory() as d:
        log = Path(d) / "margins.jsonl"
        runs = run(seeds, threads, log, args.pytest_args)
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    text = report(rows, runs, args)
    out = Path(args.out or ROOT / "bench" / "results" / f"gate_margins_cpu-{os.cpu_count()}core_{time.strftime('%Y-%m-%d')}.md")
    out.write_text(text)
    print(text)
    print(f"wrote {out}", file=sys.stderr)
    return 0 if all(r["rc"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
