"""Protect a dataset: ``python -m ueperf.protect --method NAME --dataset SOURCE|STORE [options]``.

Writes a protected store (uint8 images of the clean shape, test split unchanged, a manifest that
records the method, its resolved config, ε, norm, seed, ratio, surrogate, clean-data hashes,
generation time and the measured perturbation size) plus ``grid.png`` inside it, and prints where
it is. Train on it with ``python -m ueperf.train --set data.dataset=<store>``.

Examples::

    python -m ueperf.protect --method em --dataset cifar10 --root ~/data
    python -m ueperf.protect --method random --dataset ~/.cache/ueperf/cifar10-0123abcd4567 --ratio 0.4
    python -m ueperf.protect --method em --dataset cifar10 --set eps=16/255 --set granularity=class
    torchrun --nproc_per_node=8 -m ueperf.protect --method em --dataset cifar10   # sharded by sample
    python -m ueperf.protect --list                       # the registered methods
    python -m ueperf.protect --list keys --method em      # em's --set keys: type, default, unit, meaning
    python -m ueperf.protect export STORE OUT_DIR         # PNG ImageFolder: OUT_DIR/{train,test}/<class>/<index>.png
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import List, Optional, Sequence


# ───────────────────────────────────────────── parsers ──
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ueperf.protect", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", help="protection method (see --list)")
    p.add_argument("--dataset", help="registered source name (cifar10, cifar100, svhn, imagefolder, embedded, "
                                     "synthetic) or a clean store folder")
    p.add_argument("--root", default="", help="where the source lives (folder or archive); default: the source's own")
    p.add_argument("--data", dest="data_sets", action="append", default=[], metavar="KEY=VALUE",
                   help="DataConfig override for a source, e.g. --data train_limit=1000 (repeatable)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="method config override, e.g. --set eps=16/255 (repeatable; see --print-config)")
    p.add_argument("--surrogate-set", dest="surrogate_sets", action="append", default=[], metavar="KEY=VALUE",
                   help="RunConfig override for every surrogate the method trains, e.g. model.width=0.5")
    p.add_argument("--ratio", type=float, default=1.0, help="fraction of training images protected, in (0, 1] (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random number of the method (default 0)")
    p.add_argument("--out", default=None, help="output store folder (default: <cache-dir>/protected/<method>-<dataset>-<key>)")
    p.add_argument("--cache-dir", default=None, help="stores and surrogates cache (default: ~/.cache/ueperf)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at the output path")
    p.add_argument("--no-grid", action="store_true", help="do not write grid.png")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--list", nargs="?", const="methods", choices=["methods", "keys"],
                   help="list the registered protection methods, or (--list keys --method NAME) the method's "
                        "config keys with type, default, unit and meaning, and exit")
    p.add_argument("--print-config", action="store_true", help="print the method's resolved config and exit")
    return p


def build_export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ueperf.protect export",
                                description="Write a store as a PNG ImageFolder tree: OUT_DIR/train/<class>/<index>.png "
                                            "and OUT_DIR/test/<class>/<index>.png (atomic: temp folder + rename).")
    p.add_argument("store", help="store folder (protected or clean)")
    p.add_argument("out_dir", help="output folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


# ───────────────────────────────────────────── export ──
def _folder_name(name: str) -> str:
    """A class name as a safe folder name (no separators, no leading dot)."""
    s = re.sub(r"[\\/\x00-\x1f:*?\"<>|]+", "_", str(name)).strip().lstrip(".")
    return s or "_"


def export_imagefolder(store_path: os.PathLike, out_dir: os.PathLike, *, overwrite: bool = False,
                       progress: bool = True, workers: Optional[int] = None) -> Path:
    """Write every image of the store as ``out_dir/{train,test}/<class>/<index>.png`` (lossless,
    so the PNG pixels are the store's bytes) plus ``ueperf_export.json`` (the store's manifest and
    the label → folder map). Built in a hidden sibling folder and renamed into place; an existing
    folder is replaced only with ``overwrite`` and only when it is an export (never the store itself,
    its clean source, or a folder holding other files)."""
    from .data.protected import find_clean, open_any
    from .files import check_replaceable, hold

    store = open_any(store_path)
    inputs = [store.path] + ([find_clean(store, verify=False).path] if store.kind == "protected" else [])
    out = check_replaceable(out_dir, overwrite=overwrite, what="export", marker=EXPORT_MANIFEST,
                            allowed=(EXPORT_MANIFEST, "train", "test"), inputs=inputs)
    lock = hold(out, what="export folder", hint="another export is writing it: wait, or choose another folder")
    try:
        return _export(store, out, overwrite, progress, workers)
    finally:
        lock.release()


EXPORT_MANIFEST = "ueperf_export.json"


def _export(store, out: Path, overwrite: bool, progress: bool, workers: Optional[int]) -> Path:
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from PIL import Image

    from .files import atomic_dir, write_json_atomic
    folders: List[str] = []
    for c in store.classes:
        f = _folder_name(c)
        while f in folders:  # two names that sanitise alike: keep them apart
            f += "_"
        folders.append(f)
    with atomic_dir(out, replace=overwrite) as tmp:
        jobs = []
        for split in (store.train, store.test):
            width = max(1, len(str(max(len(split) - 1, 0))))
            for f in folders:
                (tmp / split.name / f).mkdir(parents=True, exist_ok=True)
            labels = split.y
            jobs += [(split, i, tmp / split.name / folders[int(labels[i])] / f"{i:0{width}d}.png")
                     for i in range(len(split))]

        def save(job) -> None:
            split, i, path = job
            Image.fromarray(np.asarray(split.x[i])).save(path, format="PNG")  # (H, W, 3) uint8 → RGB

        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(jobs), desc=f"export {out.name}", unit="img", file=sys.stderr)
        # PIL's zlib work releases the GIL: a thread pool gives a few times the single-core speed.
        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            for _ in pool.map(save, jobs, chunksize=256):
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        write_json_atomic(tmp / EXPORT_MANIFEST, {
            "store": str(store.path), "kind": store.kind, "label_folders": folders,
            "layout": "<split>/<class folder>/<sample index>.png", "manifest": store.manifest})
    return out


def export_main(argv: Sequence[str]) -> int:
    args = build_export_parser().parse_args(list(argv))
    out = export_imagefolder(args.store, args.out_dir, overwrite=args.overwrite, progress=not args.quiet)
    n = sum(1 for _ in out.rglob("*.png"))
    print(f"exported {n} PNG images to {out}/ (train/<class>/<index>.png, test/<class>/<index>.png)")
    return 0


# ───────────────────────────────────────────── protect ──
def _list_methods() -> str:
    from .listing import format_registered
    return format_registered("protections")


def _eps_text(norm: str, eps: float) -> str:
    if norm == "l0":
        return f"l0 ε={eps:g} px"
    return f"{norm} ε={eps * 255:.4g}/255" if norm == "linf" else f"{norm} ε={eps:.4g}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "export":
        return export_main(argv[1:])
    args = build_parser().parse_args(argv)
    from .config import DataConfig, apply_overrides
    from .errors import ConfigError

    if args.list == "keys":
        if not args.method:
            raise ConfigError("--list keys lists one method's config keys: add --method NAME (see --list)")
        from .listing import format_keys, method_config_keys
        print(format_keys(method_config_keys(args.method, args.overrides)))
        return 0
    if args.list:
        print(_list_methods())
        return 0
    if not args.method:
        raise ConfigError("--method is required (e.g. --method em); see --list for the methods")
    from .protections.runner import generate_protected, resolve_config
    if args.print_config:
        import dataclasses
        _, cfg = resolve_config(args.method, args.overrides)
        print(json.dumps(dataclasses.asdict(cfg), indent=2))
        return 0
    if not args.dataset:
        raise ConfigError("--dataset is required: a source name (cifar10, ...) with --root, or a clean store folder")
    resolve_config(args.method, args.overrides)  # bad method / --set: fail before touching data or devices
    if not (0.0 < args.ratio <= 1.0):
        raise ConfigError(f"--ratio {args.ratio}: must be in (0, 1] (the fraction of training images protected)")
    if args.seed < 0:
        raise ConfigError(f"--seed {args.seed}: seed={args.seed}: must be >= 0")

    from . import parallel
    from .data import prepare_dataset
    dist = parallel.init("auto", args.device)
    try:
        dcfg = DataConfig(dataset=args.dataset, root=args.root)
        if args.cache_dir:
            dcfg.cache_dir = args.cache_dir
        try:
            apply_overrides(dcfg, args.data_sets)
        except ConfigError as e:
            raise ConfigError(f"--data: {e}") from None
        clean = prepare_dataset(dcfg, rank=dist.rank)
        store = generate_protected(
            args.method, clean, overrides=args.overrides, ratio=args.ratio, seed=args.seed, out=args.out,
            device=dist.device, progress=not args.quiet, cache_dir=args.cache_dir or dcfg.cache_dir,
            surrogate_overrides=args.surrogate_sets, overwrite=args.overwrite, grid=not args.no_grid, dist=dist)
        if dist.is_main:
            _report(store)
    except BaseException:
        parallel.shutdown(dist, failed=True)
        raise
    parallel.shutdown(dist)
    return 0


def _report(store) -> None:
    m = store.manifest["meta"]
    size = m["size"]
    n = len(store.train)
    print(json.dumps({"store": str(store.path), "method": m["method"], "eps": m["eps"], "norm": m["norm"],
                      "ratio": m["ratio"], "seed": m["seed"], "protected": m["protected_count"],
                      "max_abs": size["max_abs"], "mean_abs": size["mean_abs"], "size": size["size"],
                      "limit": size["limit"], "generation_time_s": m["generation_time_s"],
                      "warnings": m.get("warnings", [])}))
    unit = "pixels" if m["norm"] == "l0" else "grey levels"
    grid = store.path / "grid.png"
    print(f"protected store: {store.path}\n"
          f"  {m['method']} ({m.get('granularity')}-wise, {_eps_text(m['norm'], m['eps'])}), seed {m['seed']}: "
          f"{m['protected_count']}/{n} training images protected (ratio {m['ratio']:g})\n"
          f"  measured size: {size['size']:.4g} {unit} (limit {size['limit']:.4g}); max |x'-x| = "
          f"{size['max_abs']} grey levels, mean {size['mean_abs']:.3f}\n"
          f"  generated in {m['generation_time_s']:.1f} s on {m['device']}"
          + (f" ({m['world_size']} processes)" if m.get("world_size", 1) > 1 else "") + "\n"
          + (f"  grid: {grid}\n" if grid.exists() else "")
          + "".join(f"  warning: {w}\n" for w in m.get("warnings", []))
          + f"  train on it: python3 -m ueperf.train --set {shlex.quote(f'data.dataset={store.path}')}")


# Rerunning the command reuses what was finished: a trained surrogate is cached, a half-trained one resumes.
_INTERRUPTED = ("Rerun the same command to continue: a surrogate it finished training is reused and a "
                "half-trained one resumes; the crafting itself starts over.")

if __name__ == "__main__":
    from .cli import run_cli
    run_cli(main, _INTERRUPTED)


def _console() -> None:
    """Entry point of a ``ueperf-protect`` console script."""
    from .cli import run_cli
    run_cli(main, _INTERRUPTED)
