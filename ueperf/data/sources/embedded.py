"""The CIFAR-10 sample shipped inside the package: 2,000 train + 500 test real images.

``ueperf/data/embedded/cifar10_sample.npz`` holds ``train_x`` (2000, 32, 32, 3) uint8,
``train_y`` (2000,) int64, ``test_x`` (500, 32, 32, 3), ``test_y`` (500,), ``classes`` (10,) str,
``train_index``/``test_index`` (indices into the official CIFAR-10 train / test sets) and
``info`` (a JSON string). It is class-balanced (200 per class from the official training
batches, 50 per class from the official test batch: the first images of each class in file
order) and is rebuilt byte for byte by ``scripts/make_embedded_sample.py``. It makes examples,
tests and smoke runs work with no download.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from ...config import DataConfig
from ...errors import DataError
from . import RawData, finalize, register_source

SAMPLE_FILE = "cifar10_sample.npz"


def sample_path() -> Path:
    """Path of the embedded npz (package data next to this package)."""
    return Path(__file__).resolve().parent.parent / "embedded" / SAMPLE_FILE


def load_sample(path: Path) -> RawData:
    """Read an embedded-sample npz (no pickle: every array is a plain dtype)."""
    keys = ("train_x", "train_y", "test_x", "test_y", "classes", "info")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise DataError(f"{path} lacks the arrays {missing}; rebuild it with "
                                f"scripts/make_embedded_sample.py or reinstall ueperf")
            arrs = {k: z[k] for k in keys}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read the embedded sample {path} ({e}); reinstall ueperf or rebuild "
                        f"it with scripts/make_embedded_sample.py") from None
    info = json.loads(str(arrs["info"]))
    return RawData(arrs["train_x"], arrs["train_y"].astype(np.int64), arrs["test_x"],
                   arrs["test_y"].astype(np.int64), [str(c) for c in arrs["classes"]], info)


@register_source("embedded", root=lambda cfg: sample_path())
def embedded(cfg: DataConfig) -> RawData:
    """The embedded CIFAR-10 sample (2,000 train / 500 test, 32 x 32, 10 classes)."""
    path = sample_path()
    if not path.is_file():
        raise DataError(f"the embedded sample {path} is missing (package data not installed?). "
                        f"Reinstall ueperf, or rebuild it with scripts/make_embedded_sample.py "
                        f"from the CIFAR-10 archive.")
    return finalize(load_sample(path), cfg, "embedded")
