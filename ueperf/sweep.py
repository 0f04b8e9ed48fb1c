"""Sweeps that produce the papers' tables: protections × countermeasures (× paradigms) → clean
test accuracy.

    python -m ueperf.sweep --dataset cifar10 --root ~/data \\
        --protections clean,random,em,rem,sp,ops,ap,aep,hypo --countermeasures nt,nt_cg,st_cg \\
        [--protect-set em:max_rounds=10] [--surrogate-set model.width=0.5] [--set train.epochs=30] \\
        [--data train_limit=5000] [--out sweeps/NAME]
    python -m ueperf.sweep ... --paradigms fs,lp,pf1,pf2,pf3,ft --prior PATH|RECIPE [--prior-set k=v]

For each protection (``clean`` = the clean training set) the protected store is generated once
(or reused: stores are keyed by method, config, seed and clean data); for each countermeasure a
victim is trained on it with the recipe (``--recipe``, default the spec §3.0 standard one) plus
``--set`` overrides, under each paradigm (``--paradigms``; lp/pf/ft start from ``--prior``, a
state dict or a recipe whose prior is built and cached by ``ueperf.prior``), and its final clean
test accuracy fills one cell. Every cell is one
ordinary run folder under ``OUT/runs/<protection>__<countermeasure>``: a finished cell is reused,
an interrupted one resumed, so rerunning the same command continues a sweep. Writes
``OUT/table.md`` (with the command), ``table.csv``, ``table.json`` and ``table.png`` (heat map).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

CLEAN = "clean"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ueperf.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="clean source name (cifar10, imagefolder, ...) or a clean store folder")
    p.add_argument("--root", default="", help="where the source lives (folder or archive)")
    p.add_argument("--data", dest="data_sets", action="append", default=[], metavar="KEY=VALUE",
                   help="DataConfig override for the clean source, e.g. --data train_limit=5000")
    p.add_argument("--protections", default="clean,random,em",
                   help="comma-separated; 'clean' = unprotected; LABEL=METHOD adds a row for a variant of a method "
                        "with its own --protect-set LABEL:KEY=VALUE (e.g. em_class=em --protect-set "
                        "em_class:granularity=class)")
    p.add_argument("--countermeasures", default="nt", help="comma-separated (each may be a '+' combination)")
    p.add_argument("--paradigms", default="fs", help="comma-separated training paradigms (spec §5): fs, lp, "
                                                     "pf1, pf2, pf3, ft; all but fs need --prior")
    p.add_argument("--prior", default="", metavar="PATH|RECIPE",
                   help="the pretrained prior of the lp/pf/ft paradigms: a state-dict file, or a recipe to build "
                        "(and cache) one with `ueperf.prior` and --prior-set")
    p.add_argument("--prior-set", dest="prior_sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override for the prior's recipe, e.g. data.image_size=32")
    p.add_argument("--protect-set", dest="protect_sets", action="append", default=[], metavar="METHOD:KEY=VALUE",
                   help="a protection's config override, e.g. em:max_rounds=10 (repeatable)")
    p.add_argument("--surrogate-set", dest="surrogate_sets", action="append", default=[], metavar="KEY=VALUE",
                   help="RunConfig override for every surrogate, e.g. model.width=0.25")
    p.add_argument("--recipe", default="cifar10_resnet18", help="victim recipe (default cifar10_resnet18)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="victim config override (repeatable), e.g. model.width=0.25")
    p.add_argument("--seed", type=int, default=0, help="protection seed (victims use train.seed)")
    p.add_argument("--device", default="auto", help="device for the protections (victims: train.device)")
    p.add_argument("--out", default="", help="sweep folder (default sweeps/<dataset>-<time>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _protect_overrides(items: Sequence[str], methods: Sequence[str]) -> Dict[str, List[str]]:
    from .errors import ConfigError
    out: Dict[str, List[str]] = {m: [] for m in methods}
    for item in items:
        if ":" not in item or "=" not in item.split(":", 1)[1]:
            raise ConfigError(f"--protect-set {item!r}: expected METHOD:KEY=VALUE (e.g. em:max_rounds=10)")
        m, kv = item.split(":", 1)
        if m not in out:
            raise ConfigError(f"--protect-set {item!r}: {m!r} is not in --protections ({', '.join(methods)})")
        out[m].append(kv)
    return out


def _rows(spec: str):
    """Rows of ``--protections``: (labels in order, {label: method}); ``LABEL=METHOD`` names a variant."""
    from .errors import ConfigError
    labels: List[str] = []
    method_of: Dict[str, str] = {}
    for item in (i.strip() for i in spec.split(",")):
        if not item:
            continue
        label, _, method = item.partition("=")
        label, method = label.strip(), (method.strip() or label.strip())
        if not label or label in method_of:
            raise ConfigError(f"--protections: {item!r} " + ("repeats a row name" if label else "has no row name")
                              + "; give each row its own name (LABEL=METHOD for a variant)")
        labels.append(label)
        method_of[label] = method
    return labels, method_of


def _prior_arch(prior: Path) -> Dict[str, str]:
    """model, width, stem of a prior from the ``prior.json`` that ``ueperf.prior`` writes beside it
    ({} when there is none, e.g. a torchvision checkpoint)."""
    meta = prior.parent / "prior.json"
    if not meta.is_file():
        return {}
    m = json.loads(meta.read_text())
    mc = (m.get("config") or {}).get("model") or {}
    return {k: str(v) for k, v in (("model", mc.get("name", m.get("model"))), ("width", mc.get("width", m.get("width"))),
                                   ("stem", mc.get("stem"))) if v not in (None, "")}


def _fill_prior(psets: Dict[str, List[str]], prior: Path, method_of: Optional[Dict[str, str]] = None) -> None:
    """Protections crafted against a prior (Config field ``prior``: bait, ssc) get the sweep's
    ``--prior`` unless ``--protect-set M:prior=`` says otherwise, and the architecture of the prior
    they craft against (model, width, stem from its ``prior.json``) for the fields the user did not
    set — so a row crafted against another family's prior (spec §5's black-box check) needs only
    ``--protect-set M:prior=PATH``."""
    import dataclasses

    from .protections import PROTECTIONS
    for label, sets in psets.items():
        if label == CLEAN:
            continue
        method = (method_of or {}).get(label, label)
        fields = {f.name for f in dataclasses.fields(PROTECTIONS.get(method).Config)}
        if "prior" not in fields:
            continue
        given = {k: v for k, _, v in (kv.partition("=") for kv in sets)}
        own = Path(given["prior"]).expanduser() if "prior" in given else prior
        if "prior" not in given:
            sets.append(f"prior={prior.absolute()}")
        sets.extend(f"{k}={v}" for k, v in _prior_arch(own).items() if k in fields and k not in given)


def run_cell(recipe: str, store_path: Path, countermeasure: str, overrides: Sequence[str], run_dir: Path,
             progress: bool, paradigm: str = "fs") -> Dict:
    """Train one victim (or reuse / resume its run folder) and return its summary."""
    from .countermeasures import build_hooks
    from .engine.trainer import train
    from .recipes import build
    summary = run_dir / "summary.json"
    if summary.exists():
        return json.loads(summary.read_text())
    sets = [*overrides, f"data.dataset={store_path}", f"out_dir={run_dir.parent}", f"name={run_dir.name}",
            f"train.progress={'true' if progress else 'false'}"]
    cfg = build(recipe, sets, countermeasure=countermeasure, paradigm=paradigm)
    resume = (run_dir / "config.json").exists()
    return train(cfg, hooks=build_hooks(cfg), resume=resume)


def write_table(out: Path, rows: List[str], cols: List[str], cells: Dict[str, Dict[str, Optional[float]]],
                title: str, command: str, notes: Sequence[str] = ()) -> None:
    """table.md / .csv / .json / .png of clean test accuracy (%) per (row, column)."""
    from .reports.plots import plot_heatmap
    from .reports.records import write_json_atomic

    def fmt(v):
        return "–" if v is None else f"{100 * v:.2f}"

    md = [f"# {title}", "", f"Command: `{command}`", "", f"Date: {time.strftime('%Y-%m-%d')}", "",
          "Clean test accuracy (%) of the victim, final epoch.", "",
          "| protection | " + " | ".join(cols) + " |", "|" + " --- |" * (len(cols) + 1)]
    md += [f"| {r} | " + " | ".join(fmt(cells[r].get(c)) for c in cols) + " |" for r in rows]
    md += [""] + list(notes)
    (out / "table.md").write_text("\n".join(md) + "\n")
    csv = ["protection," + ",".join(cols)]
    csv += [r + "," + ",".join("" if cells[r].get(c) is None else f"{cells[r][c]:.4f}" for c in cols) for r in rows]
    (out / "table.csv").write_text("\n".join(csv) + "\n")
    write_json_atomic(out / "table.json", {"rows": rows, "columns": cols, "cells": cells, "command": command})
    try:
        plot_heatmap([[cells[r].get(c) for c in cols] for r in rows], rows, cols, out / "table.png",
                     title=title, label="clean test accuracy (%)")
    except ImportError:
        print("matplotlib is not installed: skipped table.png", file=sys.stderr)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .config import DataConfig, apply_overrides
    from .countermeasures import parse
    from .data import prepare_dataset
    from .data.store import is_store, open_store
    from .errors import ConfigError
    from .paradigms import PARADIGMS
    from .protections import PROTECTIONS
    from .protections.runner import generate_protected
    from .recipes import build

    prots, method_of = _rows(args.protections)
    cms = [c.strip() for c in args.countermeasures.split(",") if c.strip()]
    pars = [p.strip() for p in args.paradigms.split(",") if p.strip()]
    if not prots or not cms or not pars:
        raise ConfigError("--protections, --countermeasures and --paradigms each need at least one name")
    for p in prots:
        if p != CLEAN:
            PROTECTIONS.get(method_of[p])  # unknown names fail before any work
    for c in cms:
        parse(c)
        build(args.recipe, args.overrides, countermeasure=c)  # --set values type-check now
    for par in pars:
        PARADIGMS.get(par)
    if any(par != "fs" for par in pars) and not args.prior:
        raise ConfigError("--paradigms other than fs start from a pretrained prior: pass --prior PATH (a state "
                          "dict) or --prior RECIPE (built and cached on that recipe's dataset)")
    # columns: countermeasures (paradigm fs only), paradigms (countermeasure nt only), else paradigm/countermeasure
    combos = [(par, c) for par in pars for c in cms]
    col = (lambda par, c: c) if pars == ["fs"] else (lambda par, c: par) if cms == ["nt"] else (lambda par, c: f"{par}/{c}")
    cols = [col(par, c) for par, c in combos]
    psets = _protect_overrides(args.protect_sets, prots)
    command = "python -m ueperf.sweep " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    out = Path(args.out or f"sweeps/{Path(args.dataset).name}-{time.strftime('%Y%m%d-%H%M%S')}").expanduser()
    out.mkdir(parents=True, exist_ok=True)

    victim = build(args.recipe, args.overrides)
    if is_store(args.dataset):
        clean = open_store(args.dataset)
    else:
        dcfg = apply_overrides(DataConfig(dataset=args.dataset, root=args.root, cache_dir=victim.data.cache_dir),
                               args.data_sets)
        clean = prepare_dataset(dcfg)
    cache = Path(victim.data.cache_dir).expanduser()
    prior_sets: List[str] = []
    if args.prior:
        prior = Path(args.prior).expanduser()
        if not prior.is_file():
            from .prior import build_prior
            prior = build_prior(build(args.prior, [f"data.cache_dir={victim.data.cache_dir}", *args.prior_sets]),
                                progress=not args.quiet)
        prior_sets = [f"model.pretrained={prior.absolute()}"]
    if args.prior:
        _fill_prior(psets, prior, method_of)
    cells: Dict[str, Dict[str, Optional[float]]] = {p: {} for p in prots}
    axes = [a for a, n in (("paradigms", pars != ["fs"]), ("countermeasures", cms != ["nt"] or pars == ["fs"])) if n]
    title = f"{clean.name}: protections × " + " × ".join(axes)
    gen_time: Dict[str, float] = {}
    for p in prots:
        if p == CLEAN:
            store = clean
        else:
            t0 = time.perf_counter()
            store = generate_protected(method_of[p], clean, overrides=psets[p], seed=args.seed, cache_dir=cache,
                                       surrogate_overrides=args.surrogate_sets, device=args.device,
                                       progress=not args.quiet)
            gen_time[p] = time.perf_counter() - t0
        for par, c in combos:
            run_dir = out / "runs" / (f"{p}__{c}" if par == "fs" else f"{p}__{par}__{c}")
            print(f"── {p} × {col(par, c)}", file=sys.stderr, flush=True)
            sets = list(args.overrides) + (prior_sets if par != "fs" else [])
            s = run_cell(args.recipe, store.path, c, sets, run_dir, progress=not args.quiet, paradigm=par)
            cells[p][col(par, c)] = s.get("final_test_acc")
            write_table(out, prots, cols, cells, title, command)
    notes = [f"Protection time (s, this run; 0 ≈ reused): " +
             ", ".join(f"{p} {t:.0f}" for p, t in gen_time.items())] if gen_time else []
    write_table(out, prots, cols, cells, title, command, notes)
    print((out / "table.md").read_text())
    print(f"wrote {out}/table.md, table.csv, table.json, table.png")
    return 0


if __name__ == "__main__":
    from .cli import run_cli
    run_cli(main)
