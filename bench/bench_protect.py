"""Generation time of every registered protection method on CIFAR-10-sized synthetic data.

    python bench/bench_protect.py                                  # CPU: 256 images, small caps
    python bench/bench_protect.py --device cuda --n 50000          # one GPU, CIFAR-10 size
    python bench/bench_protect.py --methods em,rem --n 50000 --set rem.iterations=500

Data: the ``synthetic`` source's learnable class-dependent 32×32 images (``--n`` × 32 × 32 × 3
uint8, ``--classes`` classes), resident on the device as a :class:`ProtectContext` gets them.
Each method runs with its spec defaults (``Config()``) except: ``--width`` for methods whose
config has a surrogate ``width`` (default 1 on GPU = the published model, 0.125 on CPU), the CPU
caps below (so a CPU run ends in minutes), and ``--set METHOD.FIELD=VALUE`` overrides. Methods
that ask for a clean-trained surrogate (``ctx.surrogate``) get one trained by the engine's
trainer on the same data; its training time is reported apart (``surrogate_s``) and is not in
``generate_s``, since the real CLI caches surrogates by config hash. ``--surrogate-epochs`` caps
its epochs (default: none on GPU, 1 on CPU).

Reported per method: ``generate_s`` (wall time of ``generate``, CUDA-synchronised), images/s,
the ratio to ``em`` when em ran, and the method's own round/iteration counts from
``Perturbation.info``. The issue's targets on one H100: sample-wise EM on 50,000 images in
<= 120 s, REM within 20x of it. Results go to ``bench/results/protect_<hardware>_<date>.{csv,md}``
(appended when the file exists).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import re
import sys
import tempfile
import time
import typing
from pathlib import Path

import torch

from harness import hardware_name, sync  # noqa: E402  (bench/ is on the path: run as a script)

# Caps for a CPU run (fields that exist in a method's Config only); --set overrides them.
CPU_CAPS = {"max_rounds": 2, "iterations": 4, "regen_batch_size": 256}
INFO_KEYS = ("rounds", "iterations", "surrogate_acc", "stopped")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def parse_sets(items):
    """['em.max_rounds=3', ...] → {'em': {'max_rounds': '3'}}."""
    from ueperf.errors import ConfigError
    out = {}
    for it in items or []:
        key, sep, val = it.partition("=")
        meth, dot, field = key.partition(".")
        if not sep or not dot:
            raise ConfigError(f"--set {it!r}: expected METHOD.FIELD=VALUE, e.g. em.max_rounds=3")
        out.setdefault(meth.strip(), {})[field.strip()] = val.strip()
    return out


def method_config(cls, dev, width, sets):
    """The method's default Config with the bench's width, CPU caps and --set overrides."""
    from ueperf.config import _coerce
    from ueperf.errors import ConfigError
    cfg = cls.Config()
    names = {f.name for f in dataclasses.fields(cfg)}
    hints = typing.get_type_hints(type(cfg))
    if "width" in names:
        cfg.width = width
    if dev.type == "cpu":
        for k, v in CPU_CAPS.items():
            if k in names:
                setattr(cfg, k, min(getattr(cfg, k), v))
    for k, v in sets.items():
        if k not in names:
            raise ConfigError(f"--set {k}={v}: {cls.__name__}.Config has no field {k!r} "
                              f"(fields: {', '.join(sorted(names))})")
        setattr(cfg, k, _coerce(v, hints[k], k))
    return cfg


class SurrogateTrainer:
    """``ctx.surrogate``: a model trained on the clean bench data with the engine's trainer,
    cached per request, its training time summed in ``seconds``."""

    def __init__(self, store, dev, cap, width):
        self.store, self.dev, self.cap, self.width = store, dev, cap, width
        self.cache, self.seconds = {}, 0.0

    def __call__(self, model_name, epochs, **overrides):
        from ueperf.config import RunConfig, apply_overrides
        from ueperf.engine.trainer import Trainer
        key = (model_name, epochs, tuple(sorted(overrides.items())))
        if key in self.cache:
            return self.cache[key]
        cfg = RunConfig()
        cfg.model.name, cfg.model.width = model_name, self.width
        cfg.train.epochs = min(int(epochs), self.cap) if self.cap else int(epochs)
        cfg.train.progress, cfg.train.device = False, str(self.dev)
        sections = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                    if dataclasses.is_dataclass(getattr(cfg, f.name))}
        dotted = []
        for k, v in overrides.items():
            if "." not in k:  # bare field name: the section that has it
                k = next((f"{s}.{k}" for s, sec in sections.items()
                          if k in {f.name for f in dataclasses.fields(sec)}), k)
            dotted.append(f"{k}={','.join(map(str, v)) if isinstance(v, (tuple, list)) else v}")
        apply_overrides(cfg, dotted)
        sync(self.dev)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            tr = Trainer(cfg, store=self.store, run_dir=d).setup()
            tr.fit()
            model = tr.model.eval()
            tr.close()
        sync(self.dev)
        self.seconds += time.perf_counter() - t0
        self.cache[key] = model
        return model


def run_method(name, args, dev, x, y, classes, store, sets):
    from ueperf.protections import PROTECTIONS
    from ueperf.protections.base import ProtectContext
    cls = PROTECTIONS.get(name)
    cfg = method_config(cls, dev, args.width, sets.get(name, {}))
    sur = SurrogateTrainer(store, dev, args.surrogate_epochs, args.width)
    n = x.shape[0]
    ctx = ProtectContext(x=x, y=y, num_classes=len(classes), classes=classes, cfg=cfg, seed=args.seed,
                         device=dev, shard=torch.arange(n, device=dev), progress=args.progress,
                         surrogate=sur, gather=lambda d: d, broadcast=lambda t, src=0: t)
    sync(dev)
    t0 = time.perf_counter()
    pert = cls().generate(ctx)
    sync(dev)
    total = time.perf_counter() - t0
    gen = total - sur.seconds
    changed = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
               if getattr(cfg, f.name) != getattr(cls.Config(), f.name)}
    row = {"method": name, "n": n, "generate_s": round(gen, 3), "images_per_s": round(n / max(gen, 1e-9), 1),
           "surrogate_s": round(sur.seconds, 2), "granularity": pert.granularity,
           "settings": " ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in changed.items()) or "defaults"}
    for k in INFO_KEYS:
        if k in pert.info:
            v = pert.info[k]
            row[k] = round(v, 4) if isinstance(v, float) else v
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="", help="comma-separated names (default: every registered method)")
    ap.add_argument("--n", type=int, default=None, help="training images (default 50000 on GPU, 256 on CPU)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--size", type=int, default=32, help="image side, px")
    ap.add_argument("--width", type=float, default=None, help="surrogate width (default 1 on GPU, 0.125 on CPU)")
    ap.add_argument("--surrogate-epochs", type=int, default=None,
                    help="cap on clean-surrogate epochs (default: none on GPU, 1 on CPU)")
    ap.add_argument("--set", action="append", default=[], metavar="METHOD.FIELD=VALUE")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--progress", action="store_true", help="show the methods' progress bars")
    ap.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()

    from ueperf.data.sources.synthetic import generate
    from ueperf.data.store import write_store
    from ueperf.protections import PROTECTIONS

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(args.device)
    gpu = dev.type == "cuda"
    if gpu:
        torch.backends.cudnn.benchmark = True
    args.n = args.n or (50000 if gpu else 256)
    args.width = args.width if args.width is not None else (1.0 if gpu else 0.125)
    if args.surrogate_epochs is None and not gpu:
        args.surrogate_epochs = 1
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] or PROTECTIONS.names()
    sets = parse_sets(args.set)

    x_np, y_np = generate(args.n, args.classes, args.size, 0)
    classes = [f"class{k}" for k in range(args.classes)]
    x = torch.from_numpy(x_np).to(dev)
    y = torch.from_numpy(y_np).to(dev)
    hw = hardware_name(dev)
    date = datetime.date.today().isoformat()
    print(f"hardware: {hw}; torch {torch.__version__}; {args.n} x {args.size}x{args.size}x3 synthetic images, "
          f"{args.classes} classes; surrogate width {args.width}", flush=True)

    rows = []
    with tempfile.TemporaryDirectory() as d:
        store = write_store(Path(d) / "bench", train=(x_np, y_np), test=(x_np[:256], y_np[:256]),
                            classes=classes, meta={"source": "bench_protect synthetic"})
        for name in methods:
            row = run_method(name, args, dev, x, y, classes, store, sets)
            rows.append(row)
            print(f"  {name}: {row['generate_s']:.2f} s ({row['images_per_s']:.0f} images/s)", flush=True)
            if gpu:
                torch.cuda.empty_cache()
    em = next((r["generate_s"] for r in rows if r["method"] == "em"), None)
    for r in rows:
        r["vs_em"] = round(r["generate_s"] / em, 2) if em else ""

    cols = ["method", "n", "generate_s", "images_per_s", "vs_em", "surrogate_s", "granularity",
            "rounds", "iterations", "surrogate_acc", "stopped", "settings"]
    table = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        table.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    print("\n".join(table))

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"protect_{slug(hw)}_{date}"
    new_csv = not stem.with_suffix(".csv").exists()
    with open(stem.with_suffix(".csv"), "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["date", "hardware", "torch"] + cols)
        if new_csv:
            w.writeheader()
        for r in rows:
            w.writerow({"date": date, "hardware": hw, "torch": torch.__version__,
                        **{c: r.get(c, "") for c in cols}})
    new_md = not stem.with_suffix(".md").exists()
    with open(stem.with_suffix(".md"), "a") as f:
        if new_md:
            f.write(f"# Protection generation time — {hw}, {date}\n\n")
        f.write(f"torch {torch.__version__}; `{' '.join(sys.argv)}`; {args.n} synthetic "
                f"{args.size}x{args.size} images, {args.classes} classes; one run per method "
                f"(wall time of generate(), surrogate training excluded).\n\n")
        f.write("\n".join(table) + "\n\n")
    print(f"wrote {stem.with_suffix('.csv')} and {stem.with_suffix('.md')}")


if __name__ == "__main__":
    main()
