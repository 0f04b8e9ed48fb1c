"""Detect protected data: ``python -m ueperf.detect --dataset STORE_OR_SOURCE [--method NAME ...] [--seed S] [--out DIR]``.

Answers "is this training set protected, and which of its samples?" with methods that need no
clean reference set (docs/methods.md §9): one score per dataset with a verdict, its threshold and
what the threshold was calibrated on, and one score per training sample. ``--dataset`` is a store
folder (clean or protected) or a registered source name (with ``--root`` where it lives and
``--data KEY=VALUE`` for its options), exactly as for ``python -m ueperf.protect``.

Writes the folder ``--out`` (default ``runs/detect-<store name>``; replaced only with
``--overwrite``), atomically:

    detect.json  the dataset, the seed, and per method: reference, dataset score, threshold, verdict,
                 calibration, per-sample threshold, flagged count, diagnostics, time, config, and,
                 when the store knows which samples are protected, the detection quality
    report.md    the same as a Markdown report
    scores.npy   (N, M) float64: column j = the per-sample scores of method j (``scores_columns``)
    scores.csv   index,label,protected,<method>_score,<method>_flag,... (protected: 1/0, empty if unknown)

When the store is a protected store made by ueperf (it records which samples it protected, also
for a partial protection, ``--ratio`` < 1), the report adds each method's detection quality: AUROC
of the per-sample scores, detection rate and false alarms at the method's threshold. For a clean
store or a plain source only the scores are reported.

Examples::

    python -m ueperf.detect --dataset ~/.cache/ueperf/protected/em-cifar10-0123abcd4567
    python -m ueperf.detect --dataset cifar10 --root ~/data --method linear_fit --seed 1
    python -m ueperf.detect --dataset STORE --set loss_dynamics.epochs=4 --out runs/detect-em
    python -m ueperf.detect --list                       # the methods and their references
    python -m ueperf.detect --list keys --method iterative_filtering
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

MARKER = "detect.json"
FILES = (MARKER, "report.md", "scores.npy", "scores.csv")
# Units of the detection configs' numeric keys (by field name), for --list keys.
UNITS = {"steps": "GD steps", "epochs": "epochs", "batch_size": "images", "lr": "lr", "runs": "runs",
         "width": "× channels", "rounds": "rounds", "remove": "fraction", "chunk": "images", "cache_mb": "MiB",
         "threshold": "score", "sample_threshold": "score"}


# ───────────────────────────────────────────── parser ──
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ueperf.detect", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", help="a store folder (clean or protected) or a registered source name "
                                     "(cifar10, cifar100, imagefolder, embedded, synthetic)")
    p.add_argument("--root", default="", help="where the source lives (folder or archive); default: the source's own")
    p.add_argument("--data", dest="data_sets", action="append", default=[], metavar="KEY=VALUE",
                   help="DataConfig override for a source, e.g. --data train_limit=5000 (repeatable)")
    p.add_argument("--method", dest="methods", action="append", default=[], metavar="NAME",
                   help="detection method (repeatable; default: every registered one, see --list)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="method config override, e.g. --set loss_dynamics.epochs=4 (repeatable; --list keys)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random number of the methods (default 0)")
    p.add_argument("--out", default=None, help="output folder (default: runs/detect-<store name>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing detection report at --out")
    p.add_argument("--cache-dir", default=None, help="stores cache (default: $UEPERF_CACHE_DIR or ~/.cache/ueperf)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--list", nargs="?", const="methods", choices=["methods", "keys"],
                   help="list the detection methods with their references, or (--list keys --method NAME) a "
                        "method's config keys, and exit")
    return p


# ───────────────────────────────────────────── listing ──
def list_methods() -> str:
    from .detection import DETECTORS
    from .listing import _first_sentence
    names = DETECTORS.names()
    w = max(len(n) for n in names)
    lines = []
    for n in names:
        cls = DETECTORS.get(n)
        lines.append(f"{n:<{w}}  {_first_sentence(cls.__doc__ or '')}")
        lines.append(f"{'':<{w}}  reference: {cls.reference}")
    return "\n".join(lines)


def list_keys(method: str, overrides: Sequence[str]) -> str:
    from .detection.base import resolve_config
    from .listing import config_keys, format_keys
    _, cfg = resolve_config(method, list(overrides))
    return format_keys(config_keys(cfg, units={}, unit_by_name=UNITS))


# ───────────────────────────────────────────── arguments ──
def split_overrides(overrides: Sequence[str], methods: Sequence[str]) -> Dict[str, List[str]]:
    """``["m.key=v", ...]`` → ``{m: ["key=v", ...]}``; ConfigError for a key without its method, or
    for a method that is not run."""
    from .errors import ConfigError
    out: Dict[str, List[str]] = {m: [] for m in methods}
    for item in overrides:
        key, eq, value = item.partition("=")
        method, dot, field = key.strip().partition(".")
        if not eq or not dot or not field:
            raise ConfigError(f"--set {item!r}: expected METHOD.KEY=VALUE, e.g. --set loss_dynamics.epochs=4 "
                              f"(the methods run: {', '.join(methods)})")
        if method not in out:
            raise ConfigError(f"--set {item!r}: method {method!r} is not run; add --method {method} "
                              f"(the methods run: {', '.join(methods)})")
        out[method].append(f"{field}={value}")
    return out


def resolve_methods(names: Sequence[str], overrides: Sequence[str]) -> Dict[str, Any]:
    """``{name: (detector, config)}`` in the order asked (default: every registered method), every
    config checked before any data is read."""
    from .detection import DETECTORS
    from .detection.base import resolve_config
    chosen = list(dict.fromkeys(names)) or DETECTORS.names()
    for n in chosen:
        DETECTORS.get(n)  # ConfigError naming the known methods
    per = split_overrides(overrides, chosen)
    return {n: resolve_config(n, per[n]) for n in chosen}


# ───────────────────────────────────────────── running ──
def truth_of(store) -> Optional[Any]:
    """The protected-sample mask a protected store records (None for a clean store or a source)."""
    import numpy as np

    from .data.protected import protected_indices
    if store.kind != "protected":
        return None
    idx = protected_indices(store)
    n = len(store.train)
    mask = np.ones(n, dtype=bool) if idx is None else np.zeros(n, dtype=bool)
    if idx is not None:
        mask[idx] = True
    return mask


def run_methods(store, methods: Dict[str, Any], *, seed: int, device, progress: bool) -> Dict[str, Any]:
    """Run every method on the store's training split; ``{name: (Detection, seconds)}``."""
    import numpy as np
    import torch

    from .detection.base import DetectContext

    n = len(store.train)
    out: Dict[str, Any] = {}
    for name, (det, cfg) in methods.items():
        if progress:
            print(f"{name}: running on {n} images ...", file=sys.stderr, flush=True)
        ctx = DetectContext(store.train.x, np.asarray(store.train.y), store.num_classes, cfg, seed,
                            torch.device(device), progress)
        t0 = time.perf_counter()
        res = det.detect(ctx)
        dt = time.perf_counter() - t0
        s = np.asarray(res.sample_scores, dtype=np.float64)
        if s.shape != (n,) or not np.isfinite(s).all() or not np.isfinite(res.score):
            raise RuntimeError(f"detection method {name} returned {s.shape} sample scores (finite: "
                               f"{bool(np.isfinite(s).all())}) and score {res.score} for {n} images")
        res.sample_scores = s
        out[name] = (res, dt)
    return out


def describe_store(store, truth) -> Dict[str, Any]:
    meta = store.manifest.get("meta") or {}
    prot = None
    if store.kind == "protected":
        prot = {k: meta.get(k) for k in ("method", "eps", "norm", "granularity", "ratio", "seed", "protected_count")}
    return {"path": str(store.path), "name": store.name, "kind": store.kind, "train_images": len(store.train),
            "num_classes": store.num_classes, "image_shape": list(store.image_shape), "protection": prot,
            "truth_known": truth is not None}


def build_record(store, truth, results: Dict[str, Any], methods: Dict[str, Any], *, seed: int, device: str,
                 argv: Sequence[str]) -> Dict[str, Any]:
    import dataclasses

    from . import __version__
    from .detection.base import quality
    rec_methods = {}
    for name, (res, dt) in results.items():
        det, cfg = methods[name]
        flags = res.flags
        rec_methods[name] = {
            "reference": det.reference, "dataset_score": res.score, "threshold": res.threshold,
            "protected": res.verdict, "verdict": "protected" if res.verdict else "not protected",
            "calibration": res.calibration, "score_meaning": res.score_meaning,
            "sample_threshold": res.sample_threshold, "sample_meaning": res.sample_meaning,
            "flagged": int(flags.sum()), "flagged_fraction": float(flags.mean()),
            "quality": quality(res, truth) if truth is not None else None,
            "details": res.details, "config": dataclasses.asdict(cfg), "time_s": round(dt, 3)}
    return {"dataset": describe_store(store, truth), "seed": seed, "device": str(device),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "ueperf_version": __version__, "command": ["python", "-m", "ueperf.detect", *argv],
            "methods": rec_methods, "scores_columns": list(results),
            "files": {"scores_npy": "scores.npy", "scores_csv": "scores.csv", "report": "report.md"}}


# ───────────────────────────────────────────── writing ──
def _pct(v: Optional[float]) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _num(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:.3f}"


def markdown_report(rec: Dict[str, Any]) -> str:
    from .reports.tables import md_table
    ds = rec["dataset"]
    known = ds["truth_known"]
    lines = [f"# Detection of protected data: {ds['name']}", "",
             f"Dataset: `{ds['path']}` ({ds['kind']} store, {ds['train_images']} training images of "
             f"{'x'.join(str(v) for v in ds['image_shape'])}, {ds['num_classes']} classes); seed {rec['seed']}, "
             f"device {rec['device']}, ueperf {rec['ueperf_version']}, {rec['created']}.  "]
    p = ds["protection"]
    if p:
        lines.append(f"Truth (recorded by the store): {p['method']} ({p.get('granularity')}-wise, {p['norm']} "
                     f"eps {p['eps']:.4g}), {p['protected_count']}/{ds['train_images']} samples protected "
                     f"(ratio {p['ratio']:g}).  ")
    else:
        lines.append("Truth: unknown (not a protected store made by ueperf): scores only.  ")
    lines.append(f"Command: `{' '.join(rec['command'])}`")
    header = ["method", "dataset score", "threshold", "verdict", "flagged"]
    if known:
        header += ["AUROC", "detection rate", "false alarms"]
    header.append("time")
    rows = []
    for name, m in rec["methods"].items():
        row = [name, _num(m["dataset_score"]), _num(m["threshold"]), m["verdict"],
               f"{m['flagged']}/{ds['train_images']}"]
        if known:
            q = m["quality"]
            row += [_num(q["auroc"]), _pct(q["detection_rate"]), _pct(q["false_alarm_rate"])]
        rows.append(row + [f"{m['time_s']:.1f} s"])
    lines += ["", *md_table(header, rows), ""]
    if known:
        lines += ["AUROC of the per-sample scores against the recorded protected samples (– when every sample or "
                  "none is protected); detection rate = flagged among protected, false alarms = flagged among "
                  "clean, at each method's per-sample threshold.", ""]
    for name, m in rec["methods"].items():
        lines += [f"## {name}", "",
                  f"- dataset score: {m['score_meaning']}; protected iff >= {m['threshold']:.4g}",
                  f"- threshold calibrated on: {m['calibration']}",
                  f"- per-sample score: {m['sample_meaning']}; flagged iff >= {m['sample_threshold']:.4g}",
                  f"- reference: {m['reference']}", ""]
    lines += ["Per-sample scores: `scores.npy` (one column per method, in the order above) and `scores.csv`; "
              "all numbers: `detect.json`. Methods: docs/methods.md §9."]
    return "\n".join(lines) + "\n"


def scores_csv(store, truth, results: Dict[str, Any]) -> str:
    names = list(results)
    head = ["index", "label", "protected"] + [f"{n}_{c}" for n in names for c in ("score", "flag")]
    cols = [(results[n][0].sample_scores, results[n][0].flags) for n in names]
    y = store.train.y
    out = [",".join(head)]
    for i in range(len(y)):
        row = [str(i), str(int(y[i])), "" if truth is None else str(int(truth[i]))]
        for s, f in cols:
            row += [repr(float(s[i])), str(int(f[i]))]
        out.append(",".join(row))
    return "\n".join(out) + "\n"


def write_outputs(out: Path, rec: Dict[str, Any], store, truth, results: Dict[str, Any], overwrite: bool) -> Path:
    """The report folder, built in a temporary sibling and renamed into place (ueperf.files)."""
    import numpy as np

    from .files import atomic_dir, write_json_atomic, write_text_atomic
    matrix = np.stack([results[n][0].sample_scores for n in results], axis=1).astype(np.float64)
    with atomic_dir(out, replace=overwrite) as tmp:
        with open(tmp / "scores.npy", "wb") as f:
            np.save(f, matrix, allow_pickle=False)
        write_text_atomic(tmp / "scores.csv", scores_csv(store, truth, results))
        write_text_atomic(tmp / "report.md", markdown_report(rec))
        write_json_atomic(tmp / MARKER, rec)
    return out


# ───────────────────────────────────────────── main ──
def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from .errors import ConfigError

    if args.list == "keys":
        if len(args.methods) != 1:
            raise ConfigError("--list keys lists one method's config keys: add --method NAME (see --list)")
        print(list_keys(args.methods[0], split_overrides(args.overrides, args.methods)[args.methods[0]]))
        return 0
    if args.list:
        print(list_methods())
        return 0
    if not args.dataset:
        raise ConfigError("--dataset is required: a store folder, or a source name (cifar10, ...) with --root")
    if args.seed < 0:
        raise ConfigError(f"--seed {args.seed}: must be >= 0")
    methods = resolve_methods(args.methods, args.overrides)  # bad names / keys: fail before touching data

    from .config import DataConfig, apply_overrides
    from .data import prepare_dataset
    from .detection.base import check_labels
    from .files import check_replaceable, hold
    from .parallel import resolve_device

    try:
        device = resolve_device(args.device)
    except ConfigError as e:
        raise ConfigError(f"--device {args.device}: {str(e).replace('train.device=', '')}") from None
    dcfg = DataConfig(dataset=args.dataset, root=args.root)
    if args.cache_dir:
        dcfg.cache_dir = args.cache_dir
    try:
        apply_overrides(dcfg, args.data_sets)
    except ConfigError as e:
        raise ConfigError(f"--data: {e}") from None
    store = prepare_dataset(dcfg)
    check_labels(store.train.y, store.num_classes, what=f"the training split of {store.path}")
    truth = truth_of(store)
    out = Path(args.out) if args.out else Path("runs") / f"detect-{store.name}"
    inputs = [store.path]
    if store.kind == "protected":
        from .data.protected import find_clean
        inputs.append(find_clean(store, verify=False).path)
    out = check_replaceable(out, overwrite=args.overwrite, what="detection report", marker=MARKER, allowed=FILES,
                            inputs=inputs)
    lock = hold(out, what="detection report", hint="another detection is writing it: wait, or choose another --out")
    try:
        results = run_methods(store, methods, seed=args.seed, device=device, progress=not args.quiet)
        rec = build_record(store, truth, results, methods, seed=args.seed, device=str(device), argv=argv)
        write_outputs(out, rec, store, truth, results, args.overwrite)
    finally:
        lock.release()
    _summary(out, rec)
    return 0


def _summary(out: Path, rec: Dict[str, Any]) -> None:
    print(json.dumps({"out": str(out), "methods": {n: {"score": m["dataset_score"], "threshold": m["threshold"],
                                                       "protected": m["protected"]}
                                                   for n, m in rec["methods"].items()}}))
    ds = rec["dataset"]
    print(f"detection report: {out}/ ({', '.join(FILES)})")
    w = max(len(n) for n in rec["methods"])
    for n, m in rec["methods"].items():
        line = (f"  {n:<{w}}  score {m['dataset_score']:.3f} (threshold {m['threshold']:.3f}): {m['verdict']:<13}  "
                f"flagged {m['flagged']}/{ds['train_images']}")
        q = m["quality"]
        if q is not None:
            line += (f"  AUROC {_num(q['auroc'])}  detection {_pct(q['detection_rate'])}  "
                     f"false alarms {_pct(q['false_alarm_rate'])}")
        print(line)
    if not ds["truth_known"]:
        print("  (truth unknown: not a protected store made by ueperf, so no detection quality)")


_INTERRUPTED = "Rerun the same command (add --overwrite if a report was already written there)."

if __name__ == "__main__":
    from .cli import run_cli
    run_cli(main, _INTERRUPTED)
