"""Pick a countermeasure's hyperparameters from 20 clean images (spec §4.7).

    python -m ueperf.calibrate --dataset STORE --countermeasure st \\
        [--grid st.jump=1.3,1.5,2,3] [--grid st.alpha=0.3,0.5,0.7] [--holdout 20] [--set k=v ...]

Every combination of the grid values trains the countermeasure (on the protected training set
only, usually with a shortened budget via ``--set train.epochs=...``); the trained model is
scored on ``--holdout`` clean test-distribution images (2 per class on CIFAR-10), which every run
also excludes from its reported test set (``data.test_holdout``), so the choice never sees the
images the results are reported on. The best held-out accuracy wins (ties: lower held-out loss,
then the earlier grid point). Writes ``calibration.json`` (grid, every run's scores, the choice,
the ``--set`` line to reuse it) and ``calibration.md`` under ``out_dir/NAME``. Rerunning the same
command continues a calibration: finished grid points are reused, an interrupted one resumes.
Default grid: ST's jump ratio × α (the default, scale-free trigger); spec §4.7's τ × α
(``--grid st.tau=0.5,1,1.5,2,3,4 --grid st.alpha=0.3,0.5,0.7``) calibrates the paper's absolute
trigger, which a grid over ``st.tau`` selects unless ``st.trigger`` is given.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Dict, List, Tuple

DEFAULT_GRID = ["st.jump=1.3,1.5,2,3", "st.alpha=0.3,0.5,0.7"]  # spec §4.7's α; the jump ratio [ours]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ueperf.calibrate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="cifar10_resnet18", help="base recipe (default cifar10_resnet18)")
    p.add_argument("--dataset", default="", help="the protected training set (store folder) or dataset name")
    p.add_argument("--countermeasure", default="st", help="countermeasure to calibrate (default st)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="values to try for one config key (repeatable; default: " + " ".join(DEFAULT_GRID) + ")")
    p.add_argument("--holdout", type=int, default=20, help="clean held-out images to select on (default 20)")
    p.add_argument("--name", default="calibration", help="output folder name under out_dir")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p


def parse_grid(items: List[str]) -> List[Tuple[str, List[str]]]:
    from .errors import ConfigError
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,... (e.g. st.tau=1,2,3)")
        key, vals = item.split("=", 1)
        values = [v.strip() for v in vals.split(",") if v.strip()]
        if not values:
            raise ConfigError(f"--grid {item!r}: no values")
        out.append((key.strip(), values))
    return out


def _estimate_cost(base, runs: int) -> List[str]:
    """Print what the grid will cost before it starts (ueperf.engine.cost): ``runs`` trainings of the
    base config, at the speed of its model measured now on the device it will use. Returns the
    warnings (a GPU-sized calibration on the CPU), which calibration.json keeps."""
    from . import parallel
    from .data import prepare_dataset
    from .engine.cost import announce, measure_rate, training_passes
    store = prepare_dataset(base.data)
    H, _, C = store.image_shape
    dev = parallel.resolve_device(base.train.device, 0)
    rate = measure_rate(base.model.name, base.model.width, store.num_classes, H, dev, channels=C)
    seconds = runs * training_passes(base, len(store.train)) / rate
    epochs = f"{base.train.epochs} epoch{'s' if base.train.epochs != 1 else ''}"
    warn = announce(f"the calibration ({runs} runs of {epochs})", seconds, dev,
             f"{base.model.name} width {base.model.width:g} on {len(store.train)} images at {rate:.0f} img/s "
             f"measured; fewer grid values or --set train.epochs=N shorten it")
    return [warn] if warn else []


def _check_same(run_dir: Path, cfg, name: str) -> None:
    """A grid point's folder from an earlier calibration must hold the same run to be continued."""
    import json

    from .config import to_dict
    from .engine.trainer import config_diff
    from .errors import ConfigError
    diff = config_diff(json.loads((run_dir / "config.json").read_text())["config"], to_dict(cfg))
    if diff:
        raise ConfigError(f"{run_dir} holds a calibration run with other settings ({'; '.join(diff[:4])}); "
                          f"rerun with the same grid and --set values to continue it, or start a new "
                          f"calibration with --name {name}-2")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .config import to_dict
    from .countermeasures import build_hooks
    from .data.holdout import split_holdout
    from .data.store import Split
    from .errors import ConfigError
    from .recipes import build
    from .files import write_json_atomic, write_text_atomic
    from .reports.tables import md_table

    grid = parse_grid(args.grid or DEFAULT_GRID)
    if args.holdout < 1:
        raise ConfigError(f"--holdout={args.holdout}: must be >= 1")
    combos = list(itertools.product(*[v for _, v in grid]))
    keys = {k for k, _ in grid} | {o.split("=", 1)[0].strip() for o in args.overrides}
    if "st.tau" in keys and "st.trigger" not in keys:  # τ only matters to the absolute trigger
        args.overrides = [*args.overrides, "st.trigger=absolute"]
        print("calibrating st.tau: using st.trigger=absolute (the trigger τ belongs to)", file=sys.stderr)
    base = build(args.recipe, args.overrides, countermeasure=args.countermeasure, dataset=args.dataset)
    out = Path(base.out_dir).expanduser() / args.name
    for combo in combos:  # every grid value type-checks before any training
        build(args.recipe, args.overrides + [f"{k}={v}" for (k, _), v in zip(grid, combo)],
              countermeasure=args.countermeasure, dataset=args.dataset)
    from .data import make_loader
    from .engine.trainer import Trainer

    warnings = _estimate_cost(base, len(combos))
    rows: List[Dict] = []
    for i, combo in enumerate(combos):
        point = {k: v for (k, _), v in zip(grid, combo)}
        sets = args.overrides + [f"{k}={v}" for k, v in point.items()] + [
            f"data.test_holdout={args.holdout}", f"out_dir={out}", f"name=run{i:02d}"]
        cfg = build(args.recipe, sets, countermeasure=args.countermeasure, dataset=args.dataset)
        print(f"[{i + 1}/{len(combos)}] {' '.join(f'{k}={v}' for k, v in point.items())}", file=sys.stderr, flush=True)
        # A rerun of the same command reuses finished grid points and resumes an interrupted one.
        run_dir = out / f"run{i:02d}"
        resume = (run_dir / "config.json").exists()
        if resume:
            _check_same(run_dir, cfg, args.name)
        with Trainer(cfg, hooks=build_hooks(cfg), resume=resume) as tr:
            summary = tr.fit()
            _, _, xh, yh = split_holdout(tr.store.test.x, tr.store.test.y, args.holdout)
            loader = make_loader(Split(x=xh, y=yh, name="holdout"), len(yh), device=tr.ctx.device, shuffle=False,
                                 drop_last=False, seed=0)
            held = tr.evaluate(loader)
        rows.append({"point": point, "holdout_acc": held["test_acc"], "holdout_loss": held["test_loss"],
                     "test_acc": summary["final_test_acc"], "run_dir": summary["run_dir"],
                     "rejections": summary.get("st_rejections")})
    best = max(range(len(rows)), key=lambda j: (rows[j]["holdout_acc"], -rows[j]["holdout_loss"], -j))
    choice = rows[best]
    doc = {"countermeasure": args.countermeasure, "dataset": args.dataset or base.data.dataset,
           "holdout": args.holdout, "grid": dict(grid), "runs": rows, "choice": choice["point"],
           "set": " ".join(f"--set {k}={v}" for k, v in choice["point"].items()),
           "config": to_dict(base), "warnings": warnings}
    write_json_atomic(out / "calibration.json", doc)
    keys = [k for k, _ in grid]
    table = md_table([*keys, "held-out acc", "held-out loss", "test acc (monitor)", "rejections"],
                     [[*(r["point"][k] for k in keys), f"{100 * r['holdout_acc']:.1f} %", f"{r['holdout_loss']:.3f}",
                       f"{100 * (r['test_acc'] or 0):.2f} %", f"{r['rejections']}" + (" **←**" if r is choice else "")]
                      for r in rows])
    lines = [f"# Calibration of {args.countermeasure} on {doc['dataset']}", "",
             f"Selected on {args.holdout} held-out clean test images (excluded from every run's test set).", "",
             *table, "", f"Choice: `{doc['set']}`"]
    write_text_atomic(out / "calibration.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / 'calibration.json'} and calibration.md")
    return 0


if __name__ == "__main__":
    from .cli import run_cli
    run_cli(main, "Rerun the same command to continue: finished grid points are reused and the "
                  "interrupted one resumes.")
