"""The uint8 image store: memory-mapped arrays plus a self-describing manifest.

A store is a folder::

    train_x.npy   (N_train, H, W, 3) uint8, NHWC
    train_y.npy   (N_train,) int64, labels in [0, num_classes)
    test_x.npy    (N_test, H, W, 3) uint8
    test_y.npy    (N_test,) int64
    manifest.json format version, name, kind ("clean" | "protected"), split shapes, classes,
                  source description, sha256 of every array file, creation time, ueperf and
                  library versions, and the caller's ``meta`` (resolved config, seeds, ...)

Clean and protected datasets are both stores (``kind`` tells them apart), so every consumer
reads one format. Writes are atomic: everything goes into a hidden temporary sibling folder,
the manifest is written last, and the folder is renamed into place with ``os.replace``; an
interrupted write leaves at most a ``.<name>.tmp-*`` folder, never a folder that opens as a
valid store.
"""
from __future__ import annotations

import datetime
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import DataError
from ..files import atomic_dir, check_seal, seal, seal_key_path, sha256_file, write_text_atomic

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STORE_FILES = (MANIFEST, "train_x.npy", "train_y.npy", "test_x.npy", "test_y.npy")  # what a store folder holds
SPLITS = ("train", "test")
KINDS = ("clean", "protected")

PathLike = Union[str, os.PathLike]


# ───────────────────────────────────────────── types ──
@dataclass(frozen=True)
class Split:
    """One split of a store.

    ``x``: (N, H, W, 3) uint8, NHWC (an ``np.memmap`` when opened from disk);
    ``y``: (N,) int64 labels in [0, num_classes); ``name``: "train" or "test";
    ``store_path``: the store folder it came from (None for in-memory splits).
    """
    x: np.ndarray
    y: np.ndarray
    name: str = ""
    store_path: Optional[Path] = None

    def __len__(self) -> int:
        return int(self.y.shape[0])


class Store:
    """An opened store (see the module docstring). Use :func:`open_store` / :func:`write_store`."""

    def __init__(self, path: Path, manifest: Dict[str, Any], train: Split, test: Split):
        self.path = path
        self.manifest = manifest
        self.train = train
        self.test = test

    @property
    def sealed(self) -> str:
        """``ours`` (written by ueperf with this user's key, unchanged since: opening checked it),
        ``foreign`` (sealed with another key) or ``none`` (no seal: older, or made elsewhere)."""
        return check_seal(self.manifest)

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def classes(self) -> List[str]:
        return list(self.manifest["classes"])

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        """(H, W, C) of every image, pixels."""
        return tuple(self.manifest["image_shape"])  # type: ignore[return-value]

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise KeyError(f"no split {name!r}; splits are {SPLITS}")
        return getattr(self, name)

    def __repr__(self) -> str:
        return (f"Store({str(self.path)!r}, name={self.name!r}, kind={self.kind!r}, "
                f"train={len(self.train)}, test={len(self.test)}, image_shape={self.image_shape}, "
                f"num_classes={self.num_classes})")


# ───────────────────────────────────────────── helpers ──
def _library_versions() -> Dict[str, Optional[str]]:
    # importlib.metadata reads the installed version without importing the (heavy) package.
    from importlib import metadata
    out: Dict[str, Optional[str]] = {"python": sys.version.split()[0], "numpy": np.__version__}
    for dist in ("torch", "pillow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _ueperf_version() -> str:
    from .. import __version__
    return __version__


def _check_split(name: str, pair: Any, num_classes: int, image_shape: Optional[Tuple[int, ...]]
                 ) -> Tuple[np.ndarray, np.ndarray]:
    try:
        x, y = pair
    except (TypeError, ValueError):
        raise DataError(f"write_store: {name} must be a pair (x, y) of arrays") from None
    x = np.asarray(x)
    y = np.asarray(y)
    if x.dtype != np.uint8:
        raise DataError(f"write_store: {name} images have dtype {x.dtype}; the store holds uint8 "
                        f"pixels in [0, 255] (quantise with np.clip(np.rint(x * 255), 0, 255)"
                        f".astype(np.uint8) first)")
    if x.ndim != 4 or x.shape[-1] != 3:
        raise DataError(f"write_store: {name} images have shape {x.shape}; expected (N, H, W, 3) "
                        f"uint8 NHWC (transpose NCHW with x.transpose(0, 2, 3, 1))")
    if image_shape is not None and x.shape[1:] != image_shape:
        raise DataError(f"write_store: {name} images are {x.shape[1:]} but the other split's are "
                        f"{image_shape}; both splits must share one image size")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"write_store: {name} has {x.shape[0]} images but labels of shape {y.shape}; "
                        f"expected ({x.shape[0]},)")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"write_store: {name} labels have dtype {y.dtype}; expected integers")
    y = y.astype(np.int64, copy=False)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"write_store: {name} labels span [{y.min()}, {y.max()}] but there are "
                        f"{num_classes} classes; labels must lie in [0, {num_classes})")
    return x, y


# ───────────────────────────────────────────── write ──
def write_store(path: PathLike, train: Tuple[Any, Any], test: Tuple[Any, Any],
                classes: Sequence[str], meta: Optional[Mapping[str, Any]] = None, *,
                overwrite: bool = False, kind: str = "clean", name: Optional[str] = None,
                source: Optional[Mapping[str, Any]] = None) -> Store:
    """Write a store atomically and return it opened (memory-mapped).

    ``train``/``test``: ``(x, y)`` with x (N, H, W, 3) uint8 NHWC and y (N,) integer labels in
    [0, len(classes)). ``meta``: JSON-serialisable dict kept verbatim in the manifest (resolved
    config, seeds, perturbation description, ...). ``source``: description of where the images
    came from. ``name`` defaults to the folder name. With ``overwrite=False`` an existing folder
    at ``path`` is a :class:`DataError`; with ``overwrite=True`` it is replaced (the old folder
    is moved aside first, so the path always holds either the old or the new store).
    """
    path = Path(path).expanduser().absolute()
    if kind not in KINDS:
        raise DataError(f"write_store: kind={kind!r}; expected one of {KINDS}")
    classes = [str(c) for c in classes]
    if not classes:
        raise DataError("write_store: classes is empty; pass the class names (index = label)")
    tx, ty = _check_split("train", train, len(classes), None)
    ex, ey = _check_split("test", test, len(classes), tx.shape[1:])
    if path.exists() and not overwrite:
        raise DataError(f"{path} already exists; pass overwrite=True to replace it, or delete it "
                        f"(rm -r '{path}')")
    try:
        meta_json = json.loads(json.dumps(dict(meta or {})))
        source_json = json.loads(json.dumps(dict(source or {})))
    except (TypeError, ValueError) as e:
        raise DataError(f"write_store: meta/source must be JSON-serialisable ({e})") from None
    try:
        with atomic_dir(path, replace=overwrite) as tmp:
            files: Dict[str, Dict[str, Any]] = {}
            for fname, arr in (("train_x.npy", tx), ("train_y.npy", ty), ("test_x.npy", ex), ("test_y.npy", ey)):
                fpath = tmp / fname
                with open(fpath, "wb") as f:
                    np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
                    f.flush()
                    os.fsync(f.fileno())
                files[fname] = {"sha256": sha256_file(fpath), "bytes": fpath.stat().st_size,
                                "shape": list(arr.shape), "dtype": str(arr.dtype)}
            manifest = {
                "format_version": FORMAT_VERSION,
                "name": name or path.name,
                "kind": kind,
                "splits": {"train": {"n": int(tx.shape[0]), "x_shape": list(tx.shape)},
                           "test": {"n": int(ex.shape[0]), "x_shape": list(ex.shape)}},
                "image_shape": list(tx.shape[1:]),
                "classes": classes,
                "num_classes": len(classes),
                "source": source_json,
                "files": files,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "ueperf_version": _ueperf_version(),
                "libraries": _library_versions(),
                "meta": meta_json,
            }
            manifest["seal"] = seal(manifest)  # this user's key: a later edit of the manifest is caught
            # Manifest last: its presence is what makes a folder a store.
            write_text_atomic(tmp / MANIFEST, json.dumps(manifest, indent=2))
    except FileExistsError as e:  # another process finished the same store first
        raise DataError(f"{path} was created by another process while this one was writing it; "
                        f"open it with open_store, or delete it and retry") from e
    return open_store(path, verify=False)


# ───────────────────────────────────────────── open ──
def _fix(path: Path) -> str:
    return (f"The store is damaged or was written by something else: delete the folder "
            f"(rm -r '{path}') and rebuild it (prepare_dataset rebuilds cached stores).")


def _load_manifest(path: Path) -> Dict[str, Any]:
    if not path.exists():
        raise DataError(f"no store at {path}: the folder does not exist. Build one with "
                        f"prepare_dataset (data.dataset=<source name>) or check the path.")
    if not path.is_dir():
        raise DataError(f"{path} is a file, not a store folder (a store is a folder holding "
                        f"manifest.json and train_x.npy, train_y.npy, test_x.npy, test_y.npy)")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise DataError(f"{path} is not a valid store: {MANIFEST} is missing (an interrupted write "
                        f"or not a store folder). {_fix(path)}")
    try:
        with open(mpath, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot parse {mpath}: {e}. {_fix(path)}") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{mpath} does not hold a JSON object. {_fix(path)}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(f"{mpath} has format_version {version!r}; this ueperf reads version "
                        f"{FORMAT_VERSION}. Rebuild the store with this version of ueperf.")
    required = ("name", "kind", "classes", "num_classes", "image_shape", "files", "splits")
    missing = [k for k in required if k not in manifest]
    if missing:
        raise DataError(f"{mpath} lacks the keys {missing}. {_fix(path)}")
    try:
        check_seal(manifest)
    except ValueError:
        raise DataError(f"{mpath} was edited after ueperf wrote it (its seal, made with your key "
                        f"{seal_key_path()}, does not match its content): nothing in this store can be trusted. "
                        f"{_fix(path)}") from None
    return manifest


def open_store(path: PathLike, verify: bool = True) -> Store:
    """Open a store folder; images are memory-mapped read-only, labels loaded into memory.

    Checks, each failure a :class:`DataError` naming the file: the manifest is present and
    parseable; every array file is present and readable as .npy; shapes and dtypes match the
    manifest; labels lie in [0, num_classes); and with ``verify=True`` each file's sha256
    matches the manifest (reads every byte once: ~0.1-0.5 s per 150 MB).
    """
    path = Path(path).expanduser().absolute()
    manifest = _load_manifest(path)
    files = manifest["files"]
    num_classes = int(manifest["num_classes"])
    arrays: Dict[str, np.ndarray] = {}
    for split in SPLITS:
        for part in ("x", "y"):
            fname = f"{split}_{part}.npy"
            fpath = path / fname
            entry = files.get(fname)
            if entry is None:
                raise DataError(f"{path / MANIFEST} has no entry for {fname}. {_fix(path)}")
            if not fpath.is_file():
                raise DataError(f"{fpath} is missing. {_fix(path)}")
            if verify:
                digest = sha256_file(fpath)
                if digest != entry.get("sha256"):
                    raise DataError(f"{fpath} does not match its sha256 in the manifest (file "
                                    f"changed or corrupt: {digest[:12]}… vs {str(entry.get('sha256'))[:12]}…). "
                                    f"{_fix(path)}")
            try:
                # Images stay on disk (page cache); labels are small and read fully.
                arr = np.load(fpath, mmap_mode="r" if part == "x" else None, allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                raise DataError(f"cannot read {fpath} as a .npy array ({e}); the file is truncated "
                                f"or corrupt. {_fix(path)}") from None
            if list(arr.shape) != list(entry.get("shape", [])) or str(arr.dtype) != entry.get("dtype"):
                raise DataError(f"{fpath} holds {arr.dtype} {tuple(arr.shape)} but the manifest says "
                                f"{entry.get('dtype')} {tuple(entry.get('shape', []))}. {_fix(path)}")
            arrays[fname] = arr
    splits = {}
    for split in SPLITS:
        x, y = arrays[f"{split}_x.npy"], arrays[f"{split}_y.npy"]
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3 or y.dtype != np.int64 \
                or y.shape != (x.shape[0],) or list(x.shape[1:]) != list(manifest["image_shape"]):
            raise DataError(f"{path}: {split} split has x {x.dtype} {x.shape}, y {y.dtype} {y.shape}; "
                            f"expected uint8 (N, H, W, 3) with H, W, 3 = {manifest['image_shape']} "
                            f"and int64 (N,). {_fix(path)}")
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(f"{path / (split + '_y.npy')}: labels span [{y.min()}, {y.max()}] but "
                            f"the manifest has {num_classes} classes. {_fix(path)}")
        splits[split] = Split(x=x, y=y, name=split, store_path=path)
    return Store(path, manifest, splits["train"], splits["test"])


def is_store(path: PathLike) -> bool:
    """True when ``path`` is a folder holding a manifest (a store, valid or not)."""
    p = Path(path).expanduser()
    return p.is_dir() and (p / MANIFEST).is_file()
