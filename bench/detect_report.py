"""How well does each detection method find protected data? Every method × store × seed, one table.

    python bench/detect_report.py --protected STORE [STORE ...] --clean STORE [STORE ...]
        [--methods linear_fit,loss_dynamics,iterative_filtering] [--seeds 0,1,2]
        [--set METHOD.KEY=VALUE ...] [--device auto] [--out bench/results/detect_<hardware>_<date>.md]
    python bench/detect_report.py --merge A.json B.json [...] --out REPORT.md   # one report from several runs

Stores are folders: protected stores made by ``python -m ueperf.protect`` (any method, any
``--ratio``: each records which samples it protected) and clean stores (a cached source store, or
any store of kind "clean"). Every method of ``ueperf.detection`` (docs/methods.md §9) runs on every
store with every seed (``ueperf.detect``'s own code: the same numbers as the CLI), and the report
gives, per method × protection × ratio, mean ± std over the seeds of:

- dataset score (and its threshold) and the verdict: in how many seeds the store was called protected;
- detection rate: flagged among the protected samples, at the method's per-sample threshold;
- false alarms: flagged among the clean samples (for a clean store: among all of them);
- AUROC of the per-sample scores (protected vs clean samples; – when every sample is protected or none).

A clean store's row is the calibration check: its verdict should read 0/n and its false alarms stay
low at your data's scale (the methods' thresholds were set on small synthetic sets; docs/methods.md
§9.4). The Markdown goes to ``--out`` (default ``bench/results/detect_<hardware>_<date>.md``), every
value to the ``.json`` beside it. Cost: loss_dynamics trains 3 small CNNs × 8 epochs per store and
seed; the linear methods take seconds to minutes (one pass per GD step over the set). To use more
cores, give each process a share of the stores (one torch thread each: ``OMP_NUM_THREADS=1``) and
its own ``--out``, then ``--merge`` their .json files into one report.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

from harness import cpu_name, hardware_name, result_path, versions  # noqa: E402  (bench/ is on the path)

import torch  # noqa: E402

from ueperf.config import DataConfig  # noqa: E402
from ueperf.data import prepare_dataset  # noqa: E402
from ueperf.detect import resolve_methods, run_methods, truth_of  # noqa: E402
from ueperf.detection.base import quality  # noqa: E402
from ueperf.files import write_json_atomic, write_text_atomic  # noqa: E402
from ueperf.parallel import resolve_device  # noqa: E402
from ueperf.reports.tables import fmt, md_table  # noqa: E402


def row_label(store) -> Dict[str, Any]:
    """(protection, ratio) of a store, from its manifest."""
    if store.kind != "protected":
        return {"protection": "clean", "ratio": 0.0}
    m = store.manifest.get("meta") or {}
    eps = m.get("eps")
    budget = (f"{eps * 255:.3g}/255" if m.get("norm") == "linf" else f"{eps:.3g}") if eps is not None else "?"
    return {"protection": f"{m.get('method')} ({m.get('granularity')}, {m.get('norm')} {budget})",
            "ratio": float(m.get("ratio", 1.0))}


def measure(paths: Sequence[str], methods: Dict[str, Any], seeds: Sequence[int], device, progress: bool
            ) -> List[Dict[str, Any]]:
    """One record per (store, method, seed)."""
    out = []
    for p in paths:
        store = prepare_dataset(DataConfig(dataset=str(p)))
        truth = truth_of(store)
        label = row_label(store)
        for s in seeds:
            res = run_methods(store, methods, seed=s, device=device, progress=progress)
            for name, (det, dt) in res.items():
                if truth is not None:
                    q = quality(det, truth)
                else:  # a clean store: every flag is a false alarm
                    q = {"auroc": None, "detection_rate": None, "false_alarm_rate": float(det.flags.mean())}
                out.append({"store": str(store.path), **label, "method": name, "seed": s,
                            "score": det.score, "threshold": det.threshold, "protected": det.verdict,
                            "auroc": q["auroc"], "detection_rate": q["detection_rate"],
                            "false_alarm_rate": q["false_alarm_rate"], "time_s": dt})
                print(f"{Path(p).name}  {name}  seed {s}: score {det.score:.3f} ({'protected' if det.verdict else 'not protected'})"
                      f", {dt:.1f} s", file=sys.stderr, flush=True)
    return out


def report(recs: List[Dict[str, Any]], args, device, merged: Sequence[Sequence[str]] = ()) -> str:
    keys = []
    for r in recs:
        k = (r["method"], r["protection"], r["ratio"])
        if k not in keys:
            keys.append(k)
    keys.sort(key=lambda k: (k[0], k[1] == "clean", k[1], k[2]))
    n = len(args.seed_list)
    rows = []
    for method, prot, ratio in keys:
        rs = [r for r in recs if (r["method"], r["protection"], r["ratio"]) == (method, prot, ratio)]
        col = lambda key: [r[key] for r in rs]  # noqa: E731
        rows.append([method, prot, "–" if prot == "clean" else f"{ratio:g}",
                     f"{fmt(col('score'), 1.0, 3, n)} (≥ {rs[0]['threshold']:.3g})",
                     f"{sum(r['protected'] for r in rs)}/{len(rs)}",
                     fmt(col("detection_rate"), 100.0, 1, n), fmt(col("false_alarm_rate"), 100.0, 1, n),
                     fmt(col("auroc"), 1.0, 3, n), fmt(col("time_s"), 1.0, 1, n)])
    cmd = " ".join(["python", "bench/detect_report.py", *sys.argv[1:]])
    runs = "".join(f"  \nfrom: `{' '.join(['python', 'bench/detect_report.py', *c[1:]])}`" for c in merged)
    lines = [f"# Detection of protected data: methods × protections ({time.strftime('%Y-%m-%d')})", "",
             f"Command: `{cmd}`{runs}  ",
             f"Hardware: {hardware_name(device)}; {versions()}; {torch.get_num_threads()} torch thread(s)  ",
             f"Seeds: {', '.join(map(str, args.seed_list))} (mean ± std over seeds; the methods' seed; the stores are "
             f"fixed)", "",
             *md_table(["method", "protection", "ratio", "dataset score (threshold)", "verdict: protected",
                        "detection rate (%)", "false alarms (%)", "AUROC", "time (s)"], rows), "",
             "Verdict: seeds in which the dataset score reached the threshold. Detection rate: flagged among the "
             "samples the store records as protected; false alarms: flagged among its clean samples (every sample "
             "of a clean store); both at the method's per-sample threshold. AUROC: per-sample scores, protected vs "
             "clean samples (– when the store protects every sample, or for a clean store). Methods and thresholds: "
             "docs/methods.md §9.", "", "Stores:", ""]
    seen = []
    for r in recs:
        if r["store"] not in seen:
            seen.append(r["store"])
            lines.append(f"- `{r['store']}`: {r['protection']}" + ("" if r["protection"] == "clean" else f", ratio {r['ratio']:g}"))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protected", nargs="*", default=[], metavar="STORE", help="protected store folders")
    p.add_argument("--clean", nargs="*", default=[], metavar="STORE", help="clean store folders")
    p.add_argument("--methods", default="", help="comma-separated detection methods (default: all)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of the methods (default 0,1,2)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="method config override, as for python -m ueperf.detect")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--out", default="", help="report path (default bench/results/detect_<hardware>_<date>.md)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--merge", nargs="*", default=[], metavar="JSON",
                   help="write one report from the .json files of earlier runs (nothing is measured)")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    commands = [sys.argv]
    if args.merge:
        if args.protected or args.clean:
            p.error("--merge reads finished runs: give no --protected/--clean stores with it")
        recs, seeds = [], []
        for j in args.merge:
            try:
                doc = json.loads(Path(j).read_text())
            except (OSError, ValueError) as e:
                p.error(f"--merge {j}: not a detect_report .json ({e})")
            recs += doc["records"]
            seeds += [s for s in doc["seeds"] if s not in seeds]
            commands.append(doc["command"])
        args.seed_list = seeds
    else:
        if not (args.protected or args.clean):
            p.error("give at least one store (--protected STORE ... and/or --clean STORE ...)")
        args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
        methods = resolve_methods([m for m in args.methods.split(",") if m.strip()], args.overrides)
        recs = measure([*args.protected, *args.clean], methods, args.seed_list, device, not args.quiet)
    out = Path(args.out) if args.out else result_path("detect", device)
    write_text_atomic(out, report(recs, args, device, commands[1:]))
    write_json_atomic(out.with_suffix(".json"), {"command": sys.argv, "hardware": hardware_name(device),
                                                 "cpu": cpu_name(), "seeds": args.seed_list, "records": recs,
                                                 **({"merged": commands[1:]} if args.merge else {})})
    print(f"report: {out} (values: {out.with_suffix('.json')})")
    return 0


if __name__ == "__main__":
    from ueperf.cli import run_cli
    run_cli(main)
