"""Fingerprints of ueperf's numbers: does a refactor change what the same seeds produce?

    python bench/fingerprints.py --out before.json            # on the old code
    python bench/fingerprints.py --compare before.json        # on the new code: lists what changed

On this machine, one thread, deterministic algorithms: the sha256 of the published bytes of every
registered protection (small budgets on 200 real CIFAR-10 images, class-wise variants included),
and of the per-epoch records (losses, accuracies, learning rates) of a 2-epoch training run with
every registered countermeasure and paradigm on synthetic images. Equal fingerprints mean equal
numbers bit for bit; a float that moves in its last bit changes the fingerprint, so compare runs
of the same machine and library versions only (this is not a cross-machine test).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
from harness import SHARED_DATA  # noqa: E402  (bench/ is on the path: run as a script)

# The protections' small budgets (the contract test's), applied where the Config has the key.
FAST = {
    "em": ["max_rounds=1", "steps=2", "train_steps=1", "width=0.125", "batch_size=200", "train_batch_size=64",
           "eval_batch_size=200"],
    "rem": ["iterations=1", "steps=1", "adv_steps=1", "eot=1", "width=0.125", "batch_size=100", "regen_batch_size=200"],
    "aep": ["steps=2", "surrogate_epochs=1", "surrogate_width=0.125", "batch_size=256"],
    "hypo": ["steps=2", "surrogate_epochs=1", "surrogate_width=0.125", "batch_size=256"],
    "bait": ["prior={prior}", "width=0.125", "passes=1", "inner_steps=1", "steps=2", "regen_steps=2", "batch_size=100",
             "eval_batch_size=200"],
    "ssc": ["prior={prior}", "width=0.125", "max_rounds=1", "train_steps=1", "steps=2", "probe_epochs=1",
            "batch_size=200", "eval_batch_size=200"],
}
VARIANTS = {"em-class": ("em", ["granularity=class"]), "random-class": ("random", ["granularity=class"]),
            "ssc-rgb": ("ssc", ["variant=rgb"])}
SURROGATE = ["model.width=0.125", "train.epochs=1", "train.batch_size=64"]


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()[:16]


def protections(work: Path, data: Path) -> dict:
    import numpy as np
    import torch

    from ueperf.config import DataConfig
    from ueperf.data import prepare_dataset
    from ueperf.models import build_model
    from ueperf.protections import PROTECTIONS
    from ueperf.protections.base import apply
    from ueperf.protections.runner import craft
    clean = prepare_dataset(DataConfig(dataset="cifar10", root=str(data / "cifar-10-subset-python.tar.gz"),
                                       cache_dir=str(work), train_limit=200, test_limit=100))
    torch.manual_seed(0)
    prior = work / "prior.pt"
    torch.save(build_model("resnet18", 10, 32, width=0.125).state_dict(), prior)
    cases = {n: (n, []) for n in PROTECTIONS.names()}
    cases.update(VARIANTS)
    out = {}
    for case, (method, extra) in sorted(cases.items()):
        fields = {f.name for f in dataclasses.fields(PROTECTIONS.get(method).Config)}
        over = [o.replace("{prior}", str(prior)) for o in FAST.get(method, []) if o.split("=", 1)[0] in fields] + extra
        c = craft(method, clean, overrides=over, seed=0, device="cpu", progress=False, cache_dir=work,
                  surrogate_overrides=SURROGATE)
        xp = apply(np.asarray(clean.train.x), np.asarray(clean.train.y), c.pert)
        out[f"protect/{case}"] = sha(xp.tobytes())
        print(f"protect/{case}: {out[f'protect/{case}']}", file=sys.stderr, flush=True)
    return out


def trainings(work: Path) -> dict:
    from ueperf.countermeasures import COUNTERMEASURES, build_hooks
    from ueperf.engine.trainer import train
    from ueperf.paradigms import PARADIGMS
    from ueperf.recipes import build
    base = ["data.synthetic_size=16", "data.synthetic_classes=4", "data.synthetic_train=256", "data.synthetic_test=64",
            "train.epochs=2", "train.batch_size=64", "train.threads=1", "train.progress=false",
            "train.deterministic=true", "acm.subset=64", f"data.cache_dir={work / 'cache'}", f"out_dir={work / 'runs'}"]
    extra = {"st_full": ["train.epochs=3", "st.finetune_epochs=1"], "at": ["at.steps=2"],
             "ueraser": ["ueraser.repeats=2"], "ueraser_max": ["ueraser.repeats=2"]}
    prior = None
    out = {}
    runs = [(cm, "fs") for cm in COUNTERMEASURES.names()] + [("nt", p) for p in PARADIGMS.names() if p != "fs"]
    for cm, par in runs:
        sets = [*base, *extra.get(cm, []), f"name={cm}-{par}"]
        if par != "fs":
            if prior is None:
                import torch

                from ueperf.models import build_model
                torch.manual_seed(0)
                prior = work / "prior16.pt"
                torch.save(build_model("resnet18", 4, 16, width=0.125).state_dict(), prior)
            sets.append(f"model.pretrained={prior}")
        cfg = build("synthetic_smoke", sets, countermeasure=cm, paradigm=par)
        train(cfg, hooks=build_hooks(cfg))
        recs = [json.loads(line) for line in (work / "runs" / f"{cm}-{par}" / "records.jsonl").read_text().splitlines()]
        keep = [{k: v for k, v in r.items() if k not in ("images_per_s", "train_time_s", "elapsed_s", "acm_ms")}
                for r in recs]
        for r in keep:  # ST's per-check records carry the ACM's wall time too: not a number of the run
            if isinstance(r.get("st_checks"), list):
                r["st_checks"] = [{k: v for k, v in c.items() if k != "acm_ms"} for c in r["st_checks"]]
        key = f"train/{cm}/{par}"
        out[key] = sha(json.dumps(keep, sort_keys=True).encode())
        print(f"{key}: {out[key]}", file=sys.stderr, flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="", help="write the fingerprints (JSON) here")
    p.add_argument("--compare", default="", help="a previous --out file: list what differs")
    p.add_argument("--data", default=SHARED_DATA)
    args = p.parse_args(argv)
    import torch
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        fp = {**protections(Path(d), Path(args.data)), **trainings(Path(d))}
    if args.out:
        Path(args.out).write_text(json.dumps(fp, indent=1, sort_keys=True) + "\n")
    if args.compare:
        old = json.loads(Path(args.compare).read_text())
        changed = sorted(k for k in set(old) & set(fp) if old[k] != fp[k])
        only_old, only_new = sorted(set(old) - set(fp)), sorted(set(fp) - set(old))
        print(f"{len(set(old) & set(fp)) - len(changed)} equal, {len(changed)} changed: {changed}; "
              f"only before: {only_old}; only now: {only_new}")
        return 1 if changed else 0
    print(json.dumps(fp, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
