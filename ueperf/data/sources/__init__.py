"""Data sources: functions ``fn(cfg: DataConfig) -> RawData`` registered by name in ``SOURCES``.

=============  ==================================================================================
cifar10        official python-pickle CIFAR-10 (folder or ``cifar-10-python.tar.gz``)
cifar100       official python-pickle CIFAR-100 (folder or ``cifar-100-python.tar.gz``), fine labels
svhn           SVHN cropped digits: a folder with the official ``train_32x32.mat``, ``test_32x32.mat``
imagefolder    ``train/<class>/*.jpg`` + ``val/`` (or ``test/``) from a folder or a tar(.gz)
synthetic      procedurally generated, class-dependent images (no files needed)
embedded       2,000 + 500 real CIFAR-10 images shipped inside the package (no files needed)
=============  ==================================================================================

Every source returns uint8 NHWC images and int64 labels and applies the common options itself
(through :func:`finalize`): ``classes`` keeps a subset of the classes (renumbered 0..k-1, e.g.
one half of tiny-imagenet-100 as a prior's source and the other half as the target),
``train_limit``/``test_limit`` keep the first N images in source order, and ``image_size > 0``
resizes (shorter side to S, bicubic, then centre crop S x S).

A source function carries two attributes that :func:`ueperf.data.prepare_dataset` uses for its
cache key: ``fn.root(cfg) -> Path | None`` (where it reads from) and ``fn.key_fields`` (the
extra DataConfig fields that change its output).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from ...config import DataConfig
from ...errors import ConfigError
from ...registry import Registry

# DataConfig fields that change the images of every source (part of the cache key).
COMMON_KEY_FIELDS = ("image_size", "train_limit", "test_limit", "classes")


SOURCES: Registry[Callable[[DataConfig], "RawData"]] = Registry("data source", package=__name__)


@dataclass
class RawData:
    """A source's output, before it becomes a store.

    ``train_x``/``test_x``: (N, H, W, 3) uint8 NHWC; ``train_y``/``test_y``: (N,) int64 in
    [0, len(classes)); ``classes``: class names, index = label; ``info``: JSON-serialisable
    description of where the data came from (recorded in the store manifest).
    """
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: List[str]
    info: Dict[str, Any] = field(default_factory=dict)


def register_source(name: str, *, root: Optional[Callable[[DataConfig], Optional[Path]]] = None,
                    key_fields: Sequence[str] = ()) -> Callable:
    """Register ``fn`` in :data:`SOURCES` and attach its ``root`` resolver and ``key_fields``."""
    def deco(fn: Callable[[DataConfig], RawData]) -> Callable[[DataConfig], RawData]:
        fn.root = root if root is not None else (lambda cfg: None)  # type: ignore[attr-defined]
        fn.key_fields = tuple(key_fields)  # type: ignore[attr-defined]
        return SOURCES.register(name)(fn)
    return deco


def default_root(cfg: DataConfig, name: str) -> Path:
    """``<cache_dir>/sources/<name>``: where a source lives when ``data.root`` is empty."""
    return Path(os.path.expanduser(cfg.cache_dir)) / "sources" / name


def resolve_root(cfg: DataConfig, name: str) -> Path:
    """``data.root`` (``~`` expanded, made absolute) or the source's default root."""
    if cfg.root:
        return Path(os.path.expanduser(cfg.root)).absolute()
    return default_root(cfg, name).absolute()


def resize_array(x: np.ndarray, size: int, desc: str = "resize") -> np.ndarray:
    """Resize (N, H, W, 3) uint8 images to (N, size, size, 3) like the image decoders do."""
    from ._decode import decode_many
    return decode_many(((i, f"image {i}", img) for i, img in enumerate(x)), total=len(x), size=size,
                       desc=desc)


def check_common(cfg: DataConfig) -> None:
    """ConfigError for negative ``train_limit``/``test_limit``/``image_size`` (before any work)."""
    for key in ("train_limit", "test_limit", "image_size"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"data.{key}={getattr(cfg, key)}: expected 0 (all / native size) or a "
                              f"positive number")


def select_classes(spec: str, classes: Sequence[str]) -> List[int]:
    """The original label indices that ``data.classes`` keeps, in their new label order.

    ``spec``: "A:B" (labels A..B-1), or comma-separated class names (as the source names them,
    e.g. wnids or CIFAR's "airplane"). ConfigError for an empty, reversed, out-of-range or unknown
    selection, naming what exists."""
    spec = str(spec).strip()
    K = len(classes)
    if ":" in spec:
        a, _, b = spec.partition(":")
        try:
            lo, hi = int(a or 0), int(b or K)
        except ValueError:
            raise ConfigError(f"data.classes={spec!r}: a range is 'A:B' with integer label indices "
                              f"(e.g. 0:50)") from None
        if not 0 <= lo < hi <= K:
            raise ConfigError(f"data.classes={spec!r}: needs 0 <= A < B <= {K} (the source has {K} classes)")
        return list(range(lo, hi))
    names = [c.strip() for c in spec.split(",") if c.strip()]
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in names if c not in index]
    if not names or unknown or len(set(names)) != len(names):
        shown = ", ".join(list(classes)[:12]) + (", ..." if K > 12 else "")
        raise ConfigError(f"data.classes={spec!r}: expected 'A:B' or distinct class names of the source"
                          + (f"; unknown: {unknown}" if unknown else "") + f" (its classes: {shown})")
    return [index[c] for c in names]


def _keep_classes(raw: RawData, spec: str) -> None:
    keep = select_classes(spec, raw.classes)
    new = np.full(len(raw.classes), -1, dtype=np.int64)
    new[keep] = np.arange(len(keep))
    for split in ("train", "test"):
        y = np.asarray(getattr(raw, f"{split}_y"), dtype=np.int64)
        rows = np.nonzero(new[y] >= 0)[0]
        setattr(raw, f"{split}_x", getattr(raw, f"{split}_x")[rows])
        setattr(raw, f"{split}_y", new[y[rows]])
    raw.classes = [raw.classes[i] for i in keep]
    raw.info["class_subset"] = {"spec": spec, "original_labels": keep}


def finalize(raw: RawData, cfg: DataConfig, desc: str = "") -> RawData:
    """Apply ``classes`` (subset, renumbered), ``train_limit``/``test_limit`` (first N in source
    order) and ``image_size``.

    Idempotent: a source that already selected classes, limited or resized (imagefolder does all
    three before decoding, to save work) passes through unchanged.
    """
    check_common(cfg)
    if str(cfg.classes).strip() and "class_subset" not in raw.info:
        _keep_classes(raw, cfg.classes)
    for attr, limit in (("train", cfg.train_limit), ("test", cfg.test_limit)):
        if limit > 0:
            setattr(raw, f"{attr}_x", getattr(raw, f"{attr}_x")[:limit])
            setattr(raw, f"{attr}_y", getattr(raw, f"{attr}_y")[:limit])
    s = cfg.image_size
    if s > 0:
        for attr in ("train_x", "test_x"):
            x = getattr(raw, attr)
            if x.shape[1:3] != (s, s):
                setattr(raw, attr, resize_array(x, s, desc=f"{desc} {attr[:-2]} resize".strip()))
    raw.train_y = np.ascontiguousarray(raw.train_y, dtype=np.int64)
    raw.test_y = np.ascontiguousarray(raw.test_y, dtype=np.int64)
    raw.train_x = np.ascontiguousarray(raw.train_x)
    raw.test_x = np.ascontiguousarray(raw.test_x)
    return raw


__all__ = ["SOURCES", "RawData", "register_source", "default_root", "resolve_root", "check_common",
           "finalize", "resize_array", "select_classes", "COMMON_KEY_FIELDS"]
