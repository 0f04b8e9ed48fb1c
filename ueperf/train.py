"""Train a model: ``python -m ueperf.train --recipe NAME --set key=value ...``.

The same command runs under ``torchrun --nproc_per_node=N -m ueperf.train`` (DDP by default;
DeepSpeed with ``--set parallel.backend=deepspeed``). Every run writes a new folder under
``out_dir`` (default ``runs/``): ``runs/<recipe>``, then ``runs/<recipe>-2``, ``-3``, ... on later
runs, so a command can be rerun as it is; ``--set name=NAME`` writes exactly ``runs/NAME``.
``--resume`` continues an interrupted run from its last checkpoint: the latest run of the recipe
(or of ``name``) with the same command plus ``--resume``, or a given folder with ``--resume RUN_DIR``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ueperf.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="demo", help="recipe name (default: demo, the embedded sample)")
    p.add_argument("--dataset", default="", metavar="NAME|STORE",
                   help="training data: a registered dataset or a (protected) store folder; the test "
                        "set is the clean one (same as --set data.dataset=...)")
    p.add_argument("--countermeasure", default="", metavar="NAME[+NAME]",
                   help="countermeasure(s) to train with, e.g. st_full, at, iss_gray, st_cg+cutout "
                        "(default nt; --list countermeasures)")
    p.add_argument("--paradigm", default="", metavar="NAME",
                   help="training paradigm: fs, lp, pf<k> (pf1-pf4 on a ResNet, up to pf11 on vit_small), ft "
                        "(all but fs need --set model.pretrained=PATH)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=0.05 (repeatable)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue an interrupted run: the same command plus --resume (continues the "
                        "latest run of the recipe, or of --set name=NAME), or --resume RUN_DIR to use "
                        "that run's saved config")
    p.add_argument("--list", choices=["recipes", "models", "datasets", "countermeasures", "paradigms", "keys"],
                   help="list registered names with a one-line description, or every config key with "
                        "its type, default, unit and meaning (keys), and exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .config import apply_overrides, dumps
    from .recipes import build

    if args.list:  # one line per name or key, with what it is (ueperf.listing)
        from .listing import format_keys, format_registered, run_config_keys
        print(format_keys(run_config_keys()) if args.list == "keys" else format_registered(args.list))
        return 0

    from .countermeasures import build_hooks
    from .engine.trainer import Trainer, load_run_config
    run_dir = None
    if isinstance(args.resume, str):
        run_dir = args.resume
        cfg = load_run_config(run_dir)  # already resolved: the countermeasure's defaults are in it
        apply_overrides(cfg, args.overrides)
    else:
        cfg = build(args.recipe, args.overrides, countermeasure=args.countermeasure, dataset=args.dataset,
                    paradigm=args.paradigm)
    hooks = build_hooks(cfg)  # validates the countermeasure config before anything is written
    if args.print_config:
        print(dumps(cfg))
        return 0
    from .cli import set_interrupt_hint
    # the run folder is printed first (rank 0), also with train.progress=false: where the outputs go
    with Trainer(cfg, hooks=hooks, resume=bool(args.resume), run_dir=run_dir, announce=True) as tr:
        set_interrupt_hint(f"Continue the run with: {resume_command(tr.run_dir)}")
        summary = tr.fit()
    if int(os.environ.get("RANK", "0")) == 0:
        acc = summary.get("final_test_acc")
        print(json.dumps({k: summary[k] for k in ("final_test_acc", "mean_images_per_s", "total_time_s")}))
        print(f"done: clean test accuracy {100 * acc:.2f}% after {summary['epochs']} epochs; "
              f"outputs in {summary['run_dir']}/ (config.json, records.jsonl, checkpoint.pt, "
              f"summary.json, curves.png)" if acc is not None else f"done; outputs in {summary['run_dir']}")
    return 0


def resume_command(run_dir) -> str:
    """The command that continues the run in ``run_dir`` (under torchrun: the same process count)."""
    import shlex
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launcher = (f"torchrun --nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', world)} -m ueperf.train"
                if world > 1 else "python3 -m ueperf.train")
    return f"{launcher} --resume {shlex.quote(str(run_dir))}"


_INTERRUPTED = "Continue the run with the same command plus --resume."

if __name__ == "__main__":
    from .cli import run_cli
    run_cli(main, _INTERRUPTED)


def _console() -> None:
    """Entry point of the ``ueperf-train`` console script."""
    from .cli import run_cli
    run_cli(main, _INTERRUPTED)
