"""The distributed tests, many times in a row on a busy machine: do they ever crash or hang?

    python bench/stress_distributed.py [--runs 10] [--busy 2] [--out bench/results/stress_distributed_<hw>_<date>.md]

Starts ``--busy`` processes that spin on a core each (the machine "shared"), then runs
``pytest tests/test_distributed.py`` (the two-process DDP and DeepSpeed runs against one
process) ``--runs`` times, and reports every run's outcome and time. A failure keeps the tail of
its output in the report (an abort at exit shows as the rank's exit code, e.g. -6 = SIGABRT).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _spin() -> None:
    while True:
        pass


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--busy", type=int, default=2, help="spinning processes that keep the cores busy")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    spinners = [mp.get_context("spawn").Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for s in spinners:
        s.start()
    rows, failures = [], []
    try:
        for i in range(1, args.runs + 1):
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_distributed.py"],
                               cwd=ROOT, capture_output=True, text=True)
            dt = time.perf_counter() - t0
            tail = (r.stdout.strip().splitlines() or [""])[-1]
            rows.append(f"| {i} | {r.returncode} | {tail} | {dt:.0f} s |")
            print(f"run {i}: rc {r.returncode}, {tail} ({dt:.0f} s)", file=sys.stderr, flush=True)
            if r.returncode != 0:
                failures.append(f"### run {i}\n\n```\n{(r.stdout + r.stderr)[-4000:]}\n```")
    finally:
        for s in spinners:
            s.terminate()
    ok = sum(1 for row in rows if row.split("|")[2].strip() == "0")
    text = "\n".join([f"# Distributed tests under load ({time.strftime('%Y-%m-%d')})", "",
                      f"Command: `python bench/stress_distributed.py --runs {args.runs} --busy {args.busy}`  ",
                      f"Machine: {os.cpu_count()} cores, {args.busy} spinning processes beside the tests.", "",
                      f"**{ok} of {len(rows)} runs passed.**", "", "| run | exit | pytest | time |",
                      "| --- | --- | --- | --- |", *rows, "", *failures]) + "\n"
    out = Path(args.out or ROOT / "bench" / "results" / f"stress_distributed_cpu-{os.cpu_count()}core_{time.strftime('%Y-%m-%d')}.md")
    out.write_text(text)
    print(text)
    return 0 if ok == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
