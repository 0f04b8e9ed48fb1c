"""Build (or reuse) a pretrained prior: ``python -m ueperf.prior --recipe NAME [--set k=v ...]``.

Trains the recipe's model on its dataset — a source disjoint from the target, e.g.
tiny-imagenet-100 at 32 px for CIFAR-10 targets (spec §5: the self-pretrained prior) — and
writes ``prior.pt`` (the model's state dict, torchvision key format: what ``model.pretrained``
and the protections' ``prior`` fields load) and ``prior.json`` (the key, the resolved config,
the final clean accuracy on the source's test split). Priors are cached under
``<data.cache_dir>/priors/<recipe>-<key>/``, keyed by the hash of every config value that changes
the weights: the same command reuses a finished prior, resumes an interrupted one, and a changed
config gets a new folder. Prints the path to pass as ``--set model.pretrained=PATH``.

Example (CIFAR-10 targets)::

    python -m ueperf.prior --recipe tinyimagenet100_resnet18 --set data.root=~/data/tiny-imagenet-100.tar.gz \\
        --set data.image_size=32 --set model.stem=cifar --set train.epochs=30
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

def prior_key(cfg: Any) -> str:
    """12 hex digits of sha256 over the weight-relevant config values (sorted JSON of
    :func:`ueperf.config.result_keys`)."""
    from .config import result_keys
    return hashlib.sha256(json.dumps(result_keys(cfg), sort_keys=True, default=str).encode()).hexdigest()[:12]


def build_prior(cfg: Any, *, progress: bool = True) -> Path:
    """Train ``cfg`` into the prior cache (or reuse / resume it) and return the ``prior.pt`` path."""
    from .files import hold
    key = prior_key(cfg)
    folder = Path(cfg.data.cache_dir).expanduser() / "priors" / f"{cfg.recipe or 'custom'}-{key}"
    with hold(folder, wait_s=24 * 3600, what="prior"):  # a second request for it waits, then reuses it
        return _build_prior_locked(cfg, key, folder, progress)


def _build_prior_locked(cfg: Any, key: str, folder: Path, progress: bool) -> Path:
    from .config import to_dict
    from .countermeasures import build_hooks
    from .engine.trainer import Trainer
    from .files import torch_save_atomic, write_json_atomic
    pt, meta = folder / "prior.pt", folder / "prior.json"
    if pt.exists() and meta.exists() and json.loads(meta.read_text()).get("key") == key:
        if progress:
            print(f"reusing prior {pt} (same config)", file=sys.stderr)
        return pt
    cfg.train.progress = progress
    with Trainer(cfg, hooks=build_hooks(cfg), resume=(folder / "run" / "config.json").exists(),
                 run_dir=folder / "run") as tr:
        summary = tr.fit()
        torch_save_atomic(pt, {k: v.detach().cpu() for k, v in tr.model.state_dict().items()})
    write_json_atomic(meta, {"key": key, "config": to_dict(cfg), "source": summary.get("dataset"),
                             "final_test_acc": summary.get("final_test_acc"), "epochs": summary.get("epochs"),
                             "model": cfg.model.name, "width": cfg.model.width})
    return pt


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ueperf.prior", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", required=True, help="recipe of the prior's training (its dataset = the source)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    from .recipes import build
    cfg = build(args.recipe, args.overrides)
    path = build_prior(cfg, progress=not args.quiet)
    print(f"prior: {path}\nuse it with: --set model.pretrained={path}")
    return 0


if __name__ == "__main__":
    from .cli import run_cli
    run_cli(main, "Rerun the same command to continue: the prior's training resumes from its last checkpoint.")
