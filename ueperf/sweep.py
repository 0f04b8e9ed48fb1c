"""Sweeps that produce the papers' tables: protections × countermeasures (× paradigms) × seeds →
clean test accuracy, mean ± std over seeds.

    python -m ueperf.sweep --dataset cifar10 --root ~/data \\
        --protections clean,random,em,rem,sp,ops,ap,aep,hypo --countermeasures nt,nt_cg,st_cg --seeds 0,1,2 \\
        [--protect-set em:max_rounds=10] [--surrogate-set model.width=0.5] [--set train.epochs=30] \\
        [--data train_limit=5000] [--out sweeps/NAME]
    python -m ueperf.sweep ... --paradigms fs,lp,pf1,pf2,pf3,ft --prior PATH|RECIPE [--prior-set k=v]
    python -m ueperf.sweep ... --table-only          # redraw the tables from the finished cells
    python -m ueperf.sweep ... --launcher local --workers 8          # cells at once, one per GPU
    python -m ueperf.sweep ... --gpus-per-cell 8                     # each cell under torchrun on 8 GPUs
    python -m ueperf.sweep ... --launcher slurm --slurm-partition gpu --slurm-time 4:00:00   # submitit
    python -m ueperf.sweep ... --dry-run             # check every cell's config, print what would run

For each protection row (``clean`` = the clean training set) and seed, the protected store is made
once (or reused: stores are keyed by method, config, seed and clean data); for each countermeasure
and paradigm a victim is trained on it with the recipe (``--recipe``, default the spec §3.0
standard one) plus ``--set`` overrides, ``train.seed`` = the seed. Every cell is an ordinary run
folder under ``OUT/runs/`` (see ueperf.grid): a finished cell is reused, an interrupted one
resumed, so rerunning the command with the same ``--out`` continues a sweep (it prints
that command when it starts). Writes ``OUT/table.{md,csv,json,png}``
(final clean test accuracy) and the companion tables ``peak``, ``train`` (final training
accuracy), ``time`` (minutes per run) and ``speed`` (training images/s).

Where the cells run is :mod:`ueperf.launch`: ``--launcher inline`` (default: one after another
here), ``local`` (``--workers`` processes on this machine, one per GPU), ``slurm`` (jobs through
submitit: protections first, each protection's cells as a job array after it; submit and return,
rerun to collect finished cells and resubmit the failed ones). Same cells, same numbers.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

from .grid import CLEAN, Grid, GridRunner, parse_list, parse_rows, parse_seeds

# (stem, summary metric, label, scale the .md and heat map show the values at, digits)
TABLES = [("table", "final_test_acc", "final clean test accuracy (%)", 100.0, 1),
          ("peak", "best_test_acc", "peak clean test accuracy over epochs (%)", 100.0, 1),
          ("train", "final_train_acc", "final training accuracy on the (protected) training set (%)", 100.0, 1),
          ("time", "total_time_s", "wall time per run (minutes)", 1 / 60, 2),
          ("speed", "mean_images_per_s", "training throughput (images/s)", 1.0, 0)]


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
    p.add_argument("--seeds", default="0", help="comma-separated replicate seeds: replicate s crafts every protection "
                                                "with seed s and trains every victim with train.seed=s (e.g. 0,1,2)")
    p.add_argument("--prior", default="", metavar="PATH|RECIPE",
                   help="the pretrained prior of the lp/pf/ft paradigms: a state-dict file, or a recipe to build "
                        "(and cache) one with `ueperf.prior` and --prior-set")
    p.add_argument("--prior-set", dest="prior_sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override for the prior's recipe, e.g. data.image_size=32")
    p.add_argument("--protect-set", dest="protect_sets", action="append", default=[], metavar="LABEL:KEY=VALUE",
                   help="a protection row's config override, e.g. em:max_rounds=10 (repeatable)")
    p.add_argument("--surrogate-set", dest="surrogate_sets", action="append", default=[], metavar="KEY=VALUE",
                   help="RunConfig override for every surrogate, e.g. model.width=0.25")
    p.add_argument("--recipe", default="cifar10_resnet18", help="victim recipe (default cifar10_resnet18)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="victim config override (repeatable), e.g. model.width=0.25")
    p.add_argument("--device", default="auto", help="device for the protections (victims: train.device)")
    p.add_argument("--out", default="", help="sweep folder (default sweeps/<dataset>-<time>)")
    p.add_argument("--table-only", action="store_true", help="only redraw the tables from the cells finished so far")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    from .launch import add_arguments
    add_arguments(p)
    return p


def grid_from_args(args) -> Grid:
    out = Path(args.out or f"sweeps/{Path(args.dataset).name}-{time.strftime('%Y%m%d-%H%M%S')}").expanduser()
    return Grid(dataset=args.dataset, root=args.root, data_sets=list(args.data_sets),
                rows=parse_rows(args.protections, args.protect_sets),
                countermeasures=parse_list(args.countermeasures, "countermeasures"),
                paradigms=parse_list(args.paradigms, "paradigms"), seeds=parse_seeds(args.seeds),
                recipe=args.recipe, overrides=list(args.overrides), prior=args.prior, prior_sets=list(args.prior_sets),
                surrogate_sets=list(args.surrogate_sets), device=args.device, out=out, progress=not args.quiet)


def describe(runner: GridRunner) -> str:
    """What the victims are: dataset, classes, image size, model, width, epochs (for titles)."""
    g = runner.g
    cfg = runner.cell_config(g.cells()[0], store_path="<store>", prior="<prior>")
    d = cfg.data
    data = Path(g.dataset).name if "/" in g.dataset else g.dataset
    if data == "imagefolder" and (g.root or d.root):  # the folder says which data set it is
        data = f"{Path(g.root or d.root).name.split('.')[0]} (imagefolder)"
    extras = [f"classes {d.classes}" if d.classes else "", f"{d.image_size} px" if d.image_size else "",
              *(s for s in g.data_sets if s.split("=", 1)[0] in ("train_limit", "classes", "image_size"))]
    data += "".join(f", {e}" for e in extras if e)
    para = f", paradigm {g.paradigms[0]}" if len(g.paradigms) == 1 else ""
    return (f"{data}; {cfg.model.name} width {cfg.model.width:g}, {cfg.train.epochs} "
            f"epoch{'s' if cfg.train.epochs != 1 else ''}{para} ({g.recipe})")


def protection_warnings(runner: GridRunner) -> List[str]:
    """The warnings recorded in the manifests of the sweep's protected stores (EM at its round cap,
    an ε budget barely used, ...): the stores this process made or opened, and the cached stores of
    the rows whose key needs no prior (their key is recomputed from the clean store). Their advice
    sets method keys as the sweep does (``--protect-set LABEL:KEY=VALUE``, not ``--set``)."""
    import dataclasses

    from .data.store import is_store, open_store
    from .protections import PROTECTIONS
    from .protections.runner import advice_for, default_out, protection_key, resolve_config
    g, out = runner.g, []
    for row in g.rows:
        if not row.method:
            continue
        for seed in g.seeds:
            store = runner._stores.get((row.label, seed))
            path = store.path if store is not None else None
            if path is None and "prior" not in {f.name for f in dataclasses.fields(PROTECTIONS.get(row.method).Config)}:
                _, pcfg = resolve_config(row.method, runner._row_overrides(row))
                key, _ = protection_key(row.method, pcfg, 1.0, seed, runner.clean(), g.surrogate_sets)
                path = default_out(row.method, runner.clean(), key, Path(runner._victim().data.cache_dir).expanduser())
            if path is not None and is_store(path):
                warns = (store or open_store(path, verify=False)).manifest.get("meta", {}).get("warnings", [])
                out += [f"{row.label} seed {seed}: {advice_for(w, f'--protect-set {row.label}:')}" for w in warns]
    return out


def write_tables(runner: GridRunner, command: str, final: bool = True, warnings: Sequence[str] = ()) -> Path:
    """Every table of the sweep; while cells are still running (``final=False``) only the main
    table's md/csv/json, so progress stays visible without redrawing five heat maps per cell.
    ``warnings`` (the cost estimate's) and the protections' own go under the main table."""
    g = runner.g
    res = runner.results()
    rows = [r.label for r in g.rows]
    cols = g.columns()
    what = describe(runner)
    seeds = ", ".join(map(str, g.seeds))
    before = [f"Command: `{command}`", "", f"Date: {time.strftime('%Y-%m-%d')}; victims: {what}; seeds {seeds} "
              f"(mean ± sample std over seeds; n where fewer finished)."]
    notes = ["Protection time (s, this run; 0 ≈ reused): " + ", ".join(f"{k} {t:.0f}" for k, t in runner.gen_time.items())] \
        if runner.gen_time else []
    if final:
        notes += [f"Warning: {w}" for w in [*warnings, *protection_warnings(runner)]]
    axes = " × ".join(a for a, on in (("paradigms", g.paradigms != ["fs"]),
                                      ("countermeasures", g.countermeasures != ["nt"] or g.paradigms == ["fs"])) if on)
    from .reports.tables import write_table
    for stem, metric, label, scale, digits in (TABLES if final else TABLES[:1]):
        cells: Dict[str, Dict[str, List]] = {r: {c: res.get(r, {}).get(c, {}).get(metric, []) for c in cols} for r in rows}
        write_table(g.out, stem, rows, cols, cells, title=f"{g.out.name}: {what}; seeds {seeds}: protections × {axes} — {label}",
                    lines_before=before, lines_after=notes if stem == "table" else [], label=label,
                    expect=len(g.seeds), plot=final, scale=scale, digits=digits,
                    metric=metric)
    return g.out / "table.md"


def estimate_cost(runner: GridRunner, lc) -> List[str]:
    """Print what the sweep will cost before it starts (ueperf.engine.cost): the victims still to
    train (images × epochs × countermeasure factor, at a speed measured now on this machine) and
    the protections not yet cached (for methods that state their work). Returns the warnings.
    Not for ``--launcher slurm``: its cells run on other machines."""
    from . import parallel
    from .engine.cost import announce, format_duration, measure_rate, training_passes
    from .protections import PROTECTIONS
    from .protections.runner import default_out, estimate_cost as protection_cost, protection_key, resolve_config
    from .data.store import is_store
    g = runner.g
    todo = [c for c in g.cells() if runner.summary(c) is None]
    if not todo or lc.launcher == "slurm":  # SLURM: the cells run elsewhere, and the data may not be here
        return []
    clean = runner.clean()
    H, _, C = clean.image_shape
    cfg0 = runner.cell_config(todo[0], store_path="<store>", prior="<prior>")
    dev = parallel.resolve_device(cfg0.train.device if g.device == "auto" else g.device, 0)
    rate = measure_rate(cfg0.model.name, cfg0.model.width, clean.num_classes, cfg0.data.image_size or H, dev,
                        channels=C)
    victims = sum(training_passes(runner.cell_config(c, store_path="<store>", prior="<prior>"), len(clean.train))
                  for c in todo) / rate
    parts = [f"{len(todo)} of {len(g.cells())} victim runs to train: {format_duration(victims)} "
             f"({cfg0.model.name} width {cfg0.model.width:g} at {rate:.0f} img/s measured)"]
    total = victims
    cache = Path(runner._victim().data.cache_dir).expanduser()
    for row in g.rows:
        if not row.method or getattr(PROTECTIONS.get(row.method), "work", None) is None:
            continue  # clean rows; methods that do not state their work (model-free ones take seconds)
        _, pcfg = resolve_config(row.method, runner._row_overrides(row))
        for seed in g.seeds:
            key, _ = protection_key(row.method, pcfg, 1.0, seed, clean, g.surrogate_sets)
            if is_store(default_out(row.method, clean, key, cache)):
                continue
            est = protection_cost(row.method, pcfg, clean, dev)
            if est is not None:
                total += est[0]
                parts.append(f"{row.label} seed {seed}: {format_duration(est[0])}")
    workers = max(1, lc.workers) if lc.launcher == "local" else 1
    if workers > 1:
        parts.append(f"{workers} cells at a time")
        total = (total - victims) + victims / workers
    warn = announce(f"the sweep ({lc.launcher} launcher)", total, dev, "; ".join(parts))
    return [warn] if warn else []


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    command = "python3 -m ueperf.sweep " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    grid = grid_from_args(args)
    # The default folder is new each time (sweeps/<dataset>-<time>): continuing needs it named.
    again = command if args.out else f"{command} --out {shlex.quote(str(grid.out.absolute()))}"
    from .cli import set_interrupt_hint
    set_interrupt_hint(f"Continue the sweep with: {again}  (finished cells are reused, interrupted ones resume)")
    runner = GridRunner(grid)
    from . import launch
    lc = launch.from_args(args)
    runner.validate()                       # every name and every cell's config, before any work
    if not args.table_only:
        launch.check(lc, runner)            # and where they will run
    if lc.dry_run:
        argv_run = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--dry-run"]
        run = "python3 -m ueperf.sweep " + " ".join(shlex.quote(a) for a in argv_run)
        print("\n".join(launch.plan(runner, lc, run if args.out else
                                     f"{run} --out {shlex.quote(str(grid.out.absolute()))}")))
        return 0
    grid.out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        print(f"sweep folder: {grid.out}/ (continue or redraw it later with: {again})", file=sys.stderr, flush=True)
    res, warnings = None, []
    if not args.table_only:
        warnings = estimate_cost(runner, lc)
        res = launch.run_cells(runner, lc, after=lambda cell, s: write_tables(runner, command, final=False))
    md = write_tables(runner, command, warnings=warnings)
    print(md.read_text())
    print(f"wrote {grid.out}/table.md (+ .csv .json .png) and the peak, train, time, speed tables")
    if res and res.get("submitted") is not None and lc.launcher == "slurm" and not lc.slurm.wait \
            and lc.slurm.cluster == "slurm":
        print(f"submitted {res['submitted']} cells to SLURM ({res.get('active', 0)} still queued or running from "
              f"before); collect finished cells and resubmit failed ones with: {again}")
    return 0


__all__ = ["main", "build_parser", "grid_from_args", "write_tables", "CLEAN"]


if __name__ == "__main__":
    from .cli import run_cli
    run_cli(main, "Continue the sweep with the same command and --out naming its folder.")
