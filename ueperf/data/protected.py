"""Protected stores: write one from a clean store, and re-check it every time it is opened.

A protected store is an ordinary store (:mod:`ueperf.data.store`) with ``kind="protected"``:
``train_x.npy`` holds the published images x' = round(255·clip(x + δ, 0, 1)) (uint8, the clean
shape), ``train_y.npy``, ``test_x.npy`` and ``test_y.npy`` are byte copies of the clean store's,
and the manifest's ``meta`` records how it was made::

    method, config (the resolved method Config), eps, norm, granularity, seed, ratio,
    protected_count, protected_idx (None = every sample; else a packed bit mask, see
    encode_indices), clean_source {path, name, created, data_config}, clean_hashes {file: sha256},
    size {max_abs, mean_abs, max_l2, max_l0, size, limit}, generation_time_s, info, ...

:func:`verify_protected` (run by :func:`open_protected` and by ``prepare_dataset`` whenever it
opens a protected store folder) re-checks, each failure a :class:`DataError` that says what is
wrong and where:

1. the manifest says ``kind == "protected"`` and carries the fields above;
2. the clean source store is found (recorded path, its old location relative to the protected
   store, or ``clean=``) and its array sha256s equal the recorded ``clean_hashes``;
3. labels and the test split are the clean ones (file sha256s equal);
4. every training image stays within the budget after quantisation: per image,
   ``size(x'_i - x_i) <= size_limit(norm, eps)`` (L∞ and L2 in grey levels, L0 in pixels);
5. images outside the protected subset (partial protection) are byte-identical to the clean ones.

Corrupt or truncated array files are caught before all this by ``open_store``'s hash check.

The bound and the sizes are :mod:`ueperf.data.budget`'s, the same the protection runner checks
when it writes the store.
"""
from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np

from ..errors import DataError
from .budget import per_sample_size, size_limit
from .store import SPLITS, Store, is_store, open_store, write_store

PathLike = Union[str, os.PathLike]
ARRAY_FILES = tuple(f"{s}_{p}.npy" for s in SPLITS for p in ("x", "y"))
# Manifest meta keys a protected store must carry for verify_protected to do its checks.
REQUIRED_META = ("method", "eps", "norm", "ratio", "seed", "clean_source", "clean_hashes", "protected_idx")


# ───────────────────────────────────────────── indices ──
def encode_indices(indices: Optional[np.ndarray], n: int) -> Optional[Dict[str, Any]]:
    """The protected subset as a JSON-able dict: a packed bit mask (N/8 bytes) in base64, plus
    its count and sha256. None means every sample is protected. 50,000 samples → 8.4 kB."""
    if indices is None:
        return None
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise DataError(f"protected indices span [{idx.min()}, {idx.max()}] but the set has {n} images")
    mask = np.zeros(n, dtype=bool)
    mask[idx] = True
    packed = np.packbits(mask)
    return {"encoding": "packbits-base64", "n": int(n), "count": int(mask.sum()),
            "sha256": hashlib.sha256(packed.tobytes()).hexdigest(),
            "data": base64.b64encode(packed.tobytes()).decode("ascii")}


def decode_indices(doc: Optional[Mapping[str, Any]], n: int) -> Optional[np.ndarray]:
    """Inverse of :func:`encode_indices`: sorted int64 indices, or None (all protected)."""
    if doc is None:
        return None
    try:
        if doc["encoding"] != "packbits-base64" or int(doc["n"]) != n:
            raise ValueError(f"encoding {doc['encoding']!r} for n={doc['n']}")
        raw = base64.b64decode(doc["data"].encode("ascii"), validate=True)
        if hashlib.sha256(raw).hexdigest() != doc["sha256"]:
            raise ValueError("sha256 mismatch")
        mask = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=n).astype(bool)
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"the protected-subset record (meta.protected_idx) is damaged ({e}); "
                        f"regenerate the protected store") from None
    idx = np.nonzero(mask)[0].astype(np.int64)
    if idx.size != int(doc["count"]):
        raise DataError(f"meta.protected_idx records {doc['count']} samples but its mask holds "
                        f"{idx.size}; regenerate the protected store")
    return idx


# ───────────────────────────────────────────── helpers ──
def _file_hashes(store: Store) -> Dict[str, str]:
    return {f: store.manifest["files"][f]["sha256"] for f in ARRAY_FILES}


def _short(h: Any) -> str:
    return f"{str(h)[:12]}…"


def _as_store(obj: Union[Store, PathLike], verify: bool) -> Store:
    return obj if isinstance(obj, Store) else open_store(obj, verify=verify)


def _fmt_size(v: float, norm: str) -> str:
    return f"{v:.0f} changed pixels" if norm == "l0" else f"{v:.2f} grey levels ({norm})"


def _check_bound(x_clean: np.ndarray, x_prot: np.ndarray, norm: str, eps: float, where: str,
                 indices: Optional[np.ndarray], fix: str) -> np.ndarray:
    """Per-image sizes; DataError naming the worst image if any exceeds the budget or an image
    outside the protected subset differs from its clean version. ``fix``: what to do next."""
    sizes = per_sample_size(x_clean, x_prot, norm)
    limit = size_limit(norm, eps, int(np.prod(x_clean.shape[1:])))
    if sizes.size and sizes.max() > limit + 1e-9:
        worst = int(np.argmax(sizes))
        n_over = int((sizes > limit + 1e-9).sum())
        raise DataError(f"{where}: training image {worst} is perturbed by {_fmt_size(sizes[worst], norm)} "
                        f"but ε={eps:.6g}{f' ({eps * 255:.4g}/255)' if norm == 'linf' else ''} allows at most "
                        f"{_fmt_size(limit, norm)} "
                        f"({n_over} image(s) over the budget). {fix}")
    if indices is not None:
        outside = np.ones(sizes.shape[0], dtype=bool)
        outside[indices] = False
        changed = np.nonzero(outside & (sizes > 0))[0]
        if changed.size:
            raise DataError(f"{where}: training image {int(changed[0])} is outside the protected subset "
                            f"(ratio < 1) but differs from its clean version ({changed.size} such "
                            f"image(s)). {fix}")
    return sizes


# ───────────────────────────────────────────── write ──
def write_protected(path: PathLike, clean: Store, train_x: np.ndarray, meta: Mapping[str, Any], *,
                    indices: Optional[np.ndarray] = None, overwrite: bool = False,
                    name: Optional[str] = None) -> Store:
    """Write the protected store for ``clean`` with training images ``train_x`` (atomic).

    train_x: (N, H, W, 3) uint8, N and (H, W, 3) those of ``clean.train.x``. meta: at least
    ``method``, ``eps``, ``norm`` (plus whatever describes the run); this function adds
    ``clean_source``, ``clean_hashes``, ``protected_idx``/``protected_count`` and refuses (DataError)
    images outside the budget or changes outside ``indices``. Labels and the test split are
    copied from ``clean`` byte for byte.
    """
    x = np.asarray(train_x)
    if x.dtype != np.uint8 or x.shape != clean.train.x.shape:
        raise DataError(f"write_protected: images are {x.dtype} {x.shape}; expected uint8 "
                        f"{clean.train.x.shape} like the clean store {clean.path}")
    for k in ("method", "eps", "norm"):
        if k not in meta:
            raise DataError(f"write_protected: meta lacks {k!r} (the store must describe its perturbation)")
    n = x.shape[0]
    meta = dict(meta)
    _check_bound(clean.train.x, x, str(meta["norm"]), float(meta["eps"]), f"refusing to write {path}", indices,
                 "The perturbation breaks its own budget: this is a bug in the method that made it")
    cm = clean.manifest
    meta.update(
        clean_source={"path": str(clean.path), "name": cm.get("name"), "created": cm.get("created"),
                      "data_config": cm.get("meta", {}).get("data_config")},
        clean_hashes=_file_hashes(clean),
        protected_idx=encode_indices(indices, n),
        protected_count=int(n if indices is None else len(indices)),
    )
    meta.setdefault("ratio", 1.0)
    meta.setdefault("seed", 0)
    source = {"protected_from": str(clean.path), "clean_name": cm.get("name"),
              "clean_source": cm.get("source", {})}
    return write_store(path, train=(x, clean.train.y), test=(clean.test.x, clean.test.y),
                       classes=clean.classes, meta=meta, overwrite=overwrite, kind="protected",
                       name=name, source=source)


# ───────────────────────────────────────────── open + verify ──
def find_clean(store: Store, clean: Union[Store, PathLike, None] = None, *, verify: bool = True) -> Store:
    """The clean store ``store`` was made from: ``clean`` if given, else the recorded path, else
    a folder of the same name where the clean store sat relative to the protected one (a cache
    folder moved as a whole). DataError when none is found."""
    if clean is not None:
        return _as_store(clean, verify)
    src = store.manifest.get("meta", {}).get("clean_source") or {}
    recorded = Path(str(src.get("path", "")))
    candidates = [recorded]
    if recorded.name:
        # default layout: <cache>/<clean store> and <cache>/protected/<protected store>
        candidates += [store.path.parent.parent / recorded.name, store.path.parent / recorded.name]
    for c in candidates:
        if str(c) and is_store(c):
            return open_store(c, verify=verify)
    dc = src.get("data_config") or {}
    how = (f"rebuild it with prepare_dataset(DataConfig(dataset={dc.get('dataset')!r}, "
           f"root={dc.get('root')!r}, ...)) (same data config as recorded in the manifest)" if dc
           else "restore it")
    raise DataError(f"cannot verify the protected store {store.path}: its clean source store "
                    f"{recorded} is missing. {how[0].upper() + how[1:]}, or pass the clean store "
                    f"explicitly (open_protected(path, clean=CLEAN_STORE_PATH))")


def verify_protected(store: Store, clean: Union[Store, PathLike, None] = None, *, verify: bool = True) -> Store:
    """Run the checks of the module docstring on an opened store; returns it unchanged.

    ``verify`` also re-hashes the clean store's files (open_store's check)."""
    where = str(store.path)
    if store.kind != "protected":
        raise DataError(f"{where} is a {store.kind!r} store, not a protected one (its manifest kind "
                        f"is {store.kind!r}); protect it with python -m ueperf.protect first")
    meta = store.manifest.get("meta") or {}
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise DataError(f"{where}: the manifest's meta lacks {missing}; it was not written by "
                        f"ueperf.protect (or by an older version): regenerate it")
    cl = find_clean(store, clean, verify=verify)
    recorded = meta["clean_hashes"]
    have = _file_hashes(cl)
    diff = [f for f in ARRAY_FILES if recorded.get(f) != have[f]]
    if diff:
        f = diff[0]
        raise DataError(f"{where} was made from a different clean dataset: {f} of the clean store "
                        f"{cl.path} has sha256 {_short(have[f])} but the protected store records "
                        f"{_short(recorded.get(f))} ({', '.join(diff)} differ). Pass the clean store "
                        f"it was made from (clean=...), or regenerate the protected store from this one")
    mine = _file_hashes(store)
    for f, what in (("train_y.npy", "training labels"), ("test_x.npy", "test images"),
                    ("test_y.npy", "test labels")):
        if mine[f] != have[f]:
            raise DataError(f"{where}: its {what} ({f}, sha256 {_short(mine[f])}) differ from the clean "
                            f"store's ({_short(have[f])} in {cl.path}); a protected store changes only "
                            f"the training images: regenerate it")
    if store.image_shape != cl.image_shape or len(store.train) != len(cl.train):
        raise DataError(f"{where}: {len(store.train)} training images of {store.image_shape} but the "
                        f"clean store {cl.path} has {len(cl.train)} of {cl.image_shape}")
    _check_claims(store, cl, where)
    idx = decode_indices(meta["protected_idx"], len(store.train))
    sizes = _check_bound(cl.train.x, store.train.x, str(meta["norm"]), float(meta["eps"]), where, idx,
                         "The images were modified after protection: regenerate the store")
    recorded_size = (meta.get("size") or {}).get("size")
    if recorded_size is not None and sizes.size and abs(float(recorded_size) - float(sizes.max())) > 1e-6:
        raise DataError(f"{where}: the manifest says the largest perturbation is {recorded_size:.6g} but the images "
                        f"show {float(sizes.max()):.6g} ({meta['norm']}): the images or the manifest were changed "
                        f"after protection; regenerate the store")
    return store


def _check_claims(store: Store, clean: Store, where: str) -> None:
    """The manifest's claims against each other: the budget recorded with the perturbation (``eps``,
    ``norm``) must be the one the method's recorded config asks for (where the config states one:
    HYPO's ``eps=0`` means its preset), and the clean source's provenance (the hash of the archive it
    was built from) must be the clean store's."""
    meta = store.manifest.get("meta") or {}
    cfg = meta.get("config") or {}
    fix = "the manifest was edited after protection (or the store was made elsewhere): regenerate it"
    c_eps, c_norm = cfg.get("eps"), cfg.get("norm")
    if isinstance(c_norm, str) and c_norm != meta.get("norm"):
        raise DataError(f"{where}: the perturbation is recorded as {meta.get('norm')} but the method's config says "
                        f"norm={c_norm}; {fix}")
    if isinstance(c_eps, (int, float)) and c_eps > 0 and abs(float(c_eps) - float(meta["eps"])) > 1e-9 * max(1.0, c_eps):
        raise DataError(f"{where}: the budget is recorded as eps={meta['eps']:.6g} but the method's config says "
                        f"eps={c_eps:.6g}; {fix}")
    mine = ((store.manifest.get("source") or {}).get("clean_source") or {}).get("root_sha256")
    theirs = (clean.manifest.get("source") or {}).get("root_sha256")
    if mine and theirs and mine != theirs:
        raise DataError(f"{where}: made from a clean store built from an archive with sha256 {_short(mine)}, but "
                        f"{clean.path} was built from {_short(theirs)}; {fix}")


def check_kind(store: Store) -> Store:
    """A store whose manifest says ``clean`` but records a protection (method, clean source) had its
    kind edited: refuse it (it would be trained on as clean data)."""
    meta = store.manifest.get("meta") or {}
    src = store.manifest.get("source") or {}
    if store.kind == "clean" and ("method" in meta or "clean_source" in meta or "protected_from" in src):
        raise DataError(f"{store.path}: its manifest says kind 'clean' but it records a protection "
                        f"(method {meta.get('method')!r}, made from {src.get('protected_from') or meta.get('clean_source')}): "
                        f"its kind was edited; delete it, or restore kind 'protected'")
    return store


def open_protected(path: PathLike, clean: Union[Store, PathLike, None] = None, *, verify: bool = True) -> Store:
    """Open a protected store and run :func:`verify_protected` on it (DataError on any failure)."""
    return verify_protected(open_store(path, verify=verify), clean, verify=verify)


def open_any(path: PathLike, verify: bool = True) -> Store:
    """Open a store folder of either kind; a protected one is verified against its clean source, a
    clean one against a protection record (:func:`check_kind`)."""
    st = open_store(path, verify=verify)
    return verify_protected(st, verify=verify) if st.kind == "protected" else check_kind(st)


def protected_indices(store: Store) -> Optional[np.ndarray]:
    """The training indices a protected store covers (None = all)."""
    return decode_indices(store.manifest.get("meta", {}).get("protected_idx"), len(store.train))


__all__ = ["encode_indices", "decode_indices", "write_protected", "check_kind",
           "find_clean", "verify_protected", "open_protected", "open_any", "protected_indices"]
