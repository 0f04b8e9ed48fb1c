#!/usr/bin/env python3
"""Build ``ueperf/data/embedded/cifar10_sample.npz`` (the ``embedded`` data source).

Takes the first 200 images of each class from the official CIFAR-10 training batches
(data_batch_1..5, in file order) and the first 50 of each class from ``test_batch``, keeping
file order, and writes them with the official indices they have in CIFAR-10. Any copy of the
official python-pickle CIFAR-10 that holds enough images works: the full archive or the
project's 5,438-image subset ``cifar-10-subset-python.tar.gz`` (whose batches are byte-exact
prefixes of the official ones, so both give the same sample). Without ``--source`` the subset is
looked for in ``$UEPERF_SHARED_DATA``, else in ``../shared/data`` beside the repository.

The npz is a zip of .npy files written with fixed timestamps and deflate level 9 (what
``np.savez_compressed`` writes, minus its wall-clock timestamps), so running this script
again gives the same bytes (for the same zlib).

    python scripts/make_embedded_sample.py                 # rebuild from the subset (see above)
    python scripts/make_embedded_sample.py --check         # verify the shipped file is identical
    python scripts/make_embedded_sample.py --source PATH   # CIFAR-10 folder or .tar.gz
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ueperf.data.sources.cifar import load_cifar  # noqa: E402
from ueperf.data.sources.embedded import sample_path  # noqa: E402

TRAIN_PER_CLASS = 200
TEST_PER_CLASS = 50
_BATCH_ROWS = 10000  # rows per official CIFAR-10 batch: batch b row r is official index (b-1)·10000 + r


def default_source() -> Path:
    shared = os.environ.get("UEPERF_SHARED_DATA")
    base = Path(shared) if shared else REPO.parent / "shared" / "data"
    return base / "cifar-10-subset-python.tar.gz"


def first_per_class(y: np.ndarray, per_class: int, num_classes: int) -> np.ndarray:
    """Indices of the first ``per_class`` samples of each class, in ascending (file) order."""
    keep = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(num_classes)])
    counts = np.bincount(y[keep], minlength=num_classes)
    if (counts < per_class).any():
        raise SystemExit(f"the source has too few images for {per_class} per class: {counts.tolist()}")
    return np.sort(keep)


def official_index(batches: dict, names: list) -> np.ndarray:
    """Official CIFAR-10 index of every row of the concatenated ``names`` batches."""
    out = []
    for b, name in enumerate(names):
        out.append(b * _BATCH_ROWS + np.arange(batches[name]["n"], dtype=np.int64))
    return np.concatenate(out)


def build(source: Path) -> dict:
    raw = load_cifar(source, "cifar10")
    k = len(raw.classes)
    tr = first_per_class(raw.train_y, TRAIN_PER_CLASS, k)
    te = first_per_class(raw.test_y, TEST_PER_CLASS, k)
    train_names = [f"data_batch_{i}" for i in range(1, 6)]
    info = {
        "description": (f"CIFAR-10 sample shipped with ueperf: {TRAIN_PER_CLASS}/class from the "
                        f"official training batches and {TEST_PER_CLASS}/class from test_batch "
                        f"(first images of each class in file order)"),
        "dataset": "cifar10", "source": "embedded",
        "train_per_class": TRAIN_PER_CLASS, "test_per_class": TEST_PER_CLASS,
        "built_from": source.name,
        "builder": "scripts/make_embedded_sample.py",
    }
    return {
        "train_x": raw.train_x[tr], "train_y": raw.train_y[tr].astype(np.int64),
        "test_x": raw.test_x[te], "test_y": raw.test_y[te].astype(np.int64),
        "classes": np.array(raw.classes),
        "train_index": official_index(raw.info["batches"], train_names)[tr],
        "test_index": official_index(raw.info["batches"], ["test_batch"])[te],
        "info": np.array(json.dumps(info, sort_keys=True)),
    }


def npz_bytes(arrays: dict) -> bytes:
    """A deterministic compressed npz: fixed member order, timestamps and compression level."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for key, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(arr), allow_pickle=False)
            zi = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            zi.external_attr = 0o644 << 16
            zf.writestr(zi, member.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return buf.getvalue()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, default=None,
                   help="CIFAR-10 folder or .tar.gz in the official python layout (default: "
                        "cifar-10-subset-python.tar.gz in $UEPERF_SHARED_DATA or ../shared/data)")
    p.add_argument("--out", type=Path, default=sample_path(), help="output npz (default: the packaged file)")
    p.add_argument("--check", action="store_true", help="do not write; exit 1 if --out differs")
    args = p.parse_args(argv)
    source = args.source or default_source()
    if not source.exists():
        raise SystemExit(f"CIFAR-10 source {source} not found; pass --source PATH or set UEPERF_SHARED_DATA")
    data = npz_bytes(build(source))
    digest = hashlib.sha256(data).hexdigest()
    if args.check:
        same = args.out.is_file() and args.out.read_bytes() == data
        print(f"{args.out}: {'identical' if same else 'DIFFERS'} (rebuilt sha256 {digest})")
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({len(data) / 1e6:.2f} MB, sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
