"""SVHN (Street View House Numbers), cropped digits, in the official MATLAB files.

``data.root`` is a folder holding ``train_32x32.mat`` and ``test_32x32.mat`` from
http://ufldl.stanford.edu/housenumbers/ (the folder torchvision's ``SVHN`` keeps them in; default
``<cache_dir>/sources/svhn``). With ``data.download=true`` the files missing there are fetched
through the CIFAR source's download (atomic, md5-checked against the published sums before
anything reads them).

Each file holds ``X``, (32, 32, 3, N) uint8 with ``X(:, :, :, i)`` image i as rows x columns x
RGB, and ``y``, (N, 1) double with labels 1..10 where 10 is the digit 0. Images become uint8 NHWC,
labels 0..9 (10 → 0) with class names "0".."9", so a label is its digit: 73,257 training and
26,032 test images. The files are MATLAB v5 (compressed); :mod:`._mat5` reads them, so scipy is
not needed. ``extra_32x32.mat`` (531,131 more, easier, training images) is not part of the
``svhn`` source; Python callers can append it with ``load_svhn(root, extra=True)``.

Provenance: the store manifest's source records, per file read, its sha256 and size, and whether
it was downloaded (md5 checked) or found in place.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Set, Tuple

import numpy as np

from ...config import DataConfig
from ...errors import DataError
from ...files import sha256_file
from . import RawData, finalize, register_source, resolve_root
from ._mat5 import read_mat5
from .cifar import download

URL = "http://ufldl.stanford.edu/housenumbers/"
# split → (file name, md5 published for the official file; torchvision lists the same sums)
FILES: Dict[str, Tuple[str, str]] = {
    "train": ("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
    "test": ("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
    "extra": ("extra_32x32.mat", "a93ce644f1a588dc4d68dda5feec44a7"),
}
CLASSES = [str(d) for d in range(10)]


def _locate(root: Path, splits: List[str], download_ok: bool) -> Tuple[Dict[str, Path], Set[str]]:
    """(split → file path, the splits downloaded now) for ``splits`` under ``root``."""
    wanted = " and ".join(FILES[s][0] for s in splits)
    if root.is_file():
        raise DataError(f"data.root={root} is a file; for SVHN it is the folder holding {wanted} "
                        f"(set data.root={root.parent})")
    paths = {s: root / FILES[s][0] for s in splits}
    missing = [s for s in splits if not paths[s].is_file()]
    if missing and not download_ok:
        names = ", ".join(FILES[s][0] for s in missing)
        where = f"{root} lacks {names}" if root.is_dir() else f"{root} does not exist"
        raise DataError(f"SVHN not found: {where}. Put the official files {wanted} ({URL}) in {root}, "
                        f"set data.root to the folder that holds them, or set data.download=true to "
                        f"fetch them (md5-checked).")
    for s in missing:
        name, md5 = FILES[s]
        download(URL + name, paths[s], md5, what=name,
                 alternative=f"or set data.root to the folder holding {wanted}")
    return paths, set(missing)


def read_split(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """One official SVHN file → (x (N, H, W, 3) uint8 NHWC, y (N,) int64 digits 0..9)."""
    v = read_mat5(path, ("X", "y"))
    X, y = v.pop("X"), v.pop("y")
    if X.dtype != np.uint8 or X.ndim != 4 or X.shape[2] != 3:
        raise DataError(f"{path}: 'X' is {X.dtype} {X.shape}; an SVHN file holds X as (32, 32, 3, N) uint8 "
                        f"(H, W, RGB, image); use the official file")
    n = X.shape[3]
    if y.size != n or (y.ndim == 2 and 1 not in y.shape) or y.ndim > 2:
        raise DataError(f"{path}: {n} images in 'X' but 'y' has shape {y.shape}; expected ({n}, 1)")
    y = y.reshape(-1)
    if n and (not np.all(np.isfinite(y)) or not np.all(y == np.round(y)) or y.min() < 1 or y.max() > 10):
        bad = y[~(np.isfinite(y) & (y == np.round(y)) & (y >= 1) & (y <= 10))][:5]
        raise DataError(f"{path}: 'y' holds labels outside 1..10 (e.g. {bad.tolist()}); SVHN labels are 1..10 "
                        f"with 10 for the digit 0. Use the official file.")
    labels = y.astype(np.int64) % 10  # 10 (the digit 0) → 0; 1..9 stay
    # Column-major (H, W, C, N): image i is X[:, :, :, i] as rows x columns x RGB → NHWC, one copy.
    x = np.ascontiguousarray(X.transpose(3, 0, 1, 2))
    return x, labels


def load_svhn(root: Path, download_ok: bool = False, extra: bool = False) -> RawData:
    """SVHN from the folder ``root`` (see the module docstring); ``extra`` appends
    ``extra_32x32.mat`` to the training set (after the official training images)."""
    root = Path(root)
    splits = ["train", "test"] + (["extra"] if extra else [])
    paths, downloaded = _locate(root, splits, download_ok)
    parts: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    files: Dict[str, Dict[str, Any]] = {}
    for s in splits:
        parts[s] = read_split(paths[s])
        files[FILES[s][0]] = {"split": s, "images": int(parts[s][1].shape[0]),
                              "sha256": sha256_file(paths[s]), "bytes": paths[s].stat().st_size,
                              "md5_checked": s in downloaded}
    shapes = {s: parts[s][0].shape[1:] for s in splits}
    if len(set(shapes.values())) > 1:
        raise DataError(f"SVHN files in {root} hold images of different sizes ({shapes}); use the official "
                        f"*_32x32.mat files")
    train_x, train_y = parts.pop("train")
    if extra:
        ex, ey = parts.pop("extra")
        train_x, train_y = np.concatenate([train_x, ex]), np.concatenate([train_y, ey])
        del ex, ey
    test_x, test_y = parts.pop("test")
    info = {"description": f"SVHN cropped digits (official MATLAB files) from {root}", "source": "svhn",
            "format": "svhn-mat", "files": files, "labels": "official 1..10 with 10 → 0 (label = digit)",
            "extra": bool(extra)}
    return RawData(train_x, train_y, test_x, test_y, list(CLASSES), info)


@register_source("svhn", root=lambda cfg: resolve_root(cfg, "svhn"))
def svhn(cfg: DataConfig) -> RawData:
    """SVHN cropped digits: 73,257 train + 26,032 test, 32 x 32, 10 classes (label = digit).

    ``train_limit``/``test_limit`` keep the first N images in file order.
    """
    return finalize(load_svhn(resolve_root(cfg, "svhn"), cfg.download), cfg, "svhn")
