"""``prepare_dataset(cfg)``: the store for a :class:`DataConfig`, built once and cached.

``cfg.dataset`` is either a store folder (opened as is; a protected store is verified against its
clean source, see :mod:`ueperf.data.protected`) or a source name (see
:mod:`ueperf.data.sources`). A source's store lives at ``<cache_dir>/<source>-<key12>`` where
the key is the sha256 of: the source name, the store format and builder versions, the resolved
source root with a fingerprint of it (size and mtime of the file, or of every file under the
folder), and the DataConfig fields that change the images (``image_size``, limits, and the
source's own fields). Any change to those builds a new store; the same config reuses it.

Several processes (DDP ranks) may call this at once: only the main one builds (``is_main``,
default ``rank == 0``); the others wait for the manifest to appear. If the main process fails it
leaves ``.<store>.error`` beside the store, and the waiting ones raise its message instead of
waiting out their timeout. No torch.distributed is involved, so it works before (or without)
a process group.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from ..config import DataConfig
from ..errors import DataError
from ..files import clean_leftovers, hold, sha256_file, write_text_atomic
from .sources import COMMON_KEY_FIELDS, SOURCES
from .store import FORMAT_VERSION, Store, is_store, open_store, write_store
from .protected import open_any

# Bump when a source's output for the same inputs changes (invalidates every cached store).
BUILDER_VERSION = 1


def _fingerprint(root: Optional[Path]) -> Any:
    """(size, mtime_ns) of a file root; of every file under a folder root; None if missing."""
    if root is None or not root.exists():
        return None
    if root.is_file():
        st = root.stat()
        return [st.st_size, st.st_mtime_ns]
    # Every file's (relative path, size, mtime): catches added, removed, replaced and edited
    # files; ~0.3 s for tiny-imagenet-100's 55,000 files (scandir: no per-file path joins).
    h = hashlib.sha256()
    n = 0
    stack = [("", str(root))]
    while stack:
        rel, path = stack.pop()
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            r = f"{rel}/{e.name}" if rel else e.name
            try:
                if e.is_symlink():  # never followed here (a loop, or a link out of the root): its target names it
                    h.update(f"{r}\0->{os.readlink(e.path)}\n".encode())
                    continue
                if e.is_dir():
                    stack.append((r, e.path))
                    continue
                st = e.stat()
            except OSError:  # vanished file: not data
                continue
            h.update(f"{r}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            n += 1
    return [n, h.hexdigest()]


def cache_key(cfg: DataConfig, name: str) -> Tuple[str, Dict[str, Any]]:
    """(hex sha256, the JSON document it hashes) for source ``name`` under ``cfg``."""
    fn = SOURCES.get(name)
    root = fn.root(cfg)
    fields = COMMON_KEY_FIELDS + tuple(fn.key_fields)
    doc = {"source": name, "format_version": FORMAT_VERSION, "builder_version": BUILDER_VERSION,
           "root": str(root) if root is not None else None, "root_fingerprint": _fingerprint(root),
           "config": {f: getattr(cfg, f) for f in fields}}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest(), doc


def store_path_for(cfg: DataConfig, name: str, key: Optional[str] = None) -> Path:
    """Where the cached store of source ``name`` under ``cfg`` lives (whether built or not)."""
    key = key or cache_key(cfg, name)[0]
    return Path(os.path.expanduser(cfg.cache_dir)).absolute() / f"{name}-{key[:12]}"


def _error_marker(path: Path) -> Path:
    return path.parent / f".{path.name}.error"


def _wait_for(cfg: DataConfig, name: str, path: Path, root_existed: bool, timeout_s: float,
              poll_s: float, verify: bool, key: str) -> Store:
    """Non-main process: wait until the main one has a store at ``path`` that may be served for
    ``key`` (it builds or rebuilds it), then open it."""
    start = time.time()
    while True:
        if is_store(path):
            st, _ = _open_cached(path, key, verify=False)  # cheap poll; hashes checked once, below
            if st is not None:
                return open_store(path, verify=verify)
        marker = _error_marker(path)
        if marker.is_file() and marker.stat().st_mtime >= start - 1.0:
            raise DataError(f"the main process failed to build {path}: "
                            f"{marker.read_text('utf-8', 'replace').strip()}")
        if time.time() - start > timeout_s:
            raise DataError(f"timed out after {timeout_s:.0f} s waiting for the main process to "
                            f"build {path}. Check its log; build the store first with one process "
                            f"(python -c 'from ueperf.data import prepare_dataset; ...') and rerun.")
        time.sleep(poll_s)
        if not root_existed:  # the main process may be downloading the source: key changes
            key = cache_key(cfg, name)[0]
            path = store_path_for(cfg, name, key)


def _cached_problem(st: Store, key: str) -> Optional[str]:
    """Why the cached store ``st`` may not be served for cache key ``key`` (None: it may): the user's
    ueperf must have written it (its seal is ours) for this very key, as a clean store."""
    if st.sealed != "ours":
        return (f"it carries no seal of yours ({st.sealed}): it was edited, written by an older ueperf, or by "
                f"someone with another key (a lab sharing a cache folder sets UEPERF_SEAL_KEY to one key file)")
    if (st.manifest.get("meta") or {}).get("cache_key") != key or st.kind != "clean":
        return "it was not built for this data config (cache key or kind differ)"
    return None


def _open_cached(path: Path, key: str, verify: bool) -> Tuple[Optional[Store], str]:
    """(the cached clean store at ``path``, opened with its hashes checked, "") or (None, why it may not
    be served). A store that cannot be opened or fails its hashes is not served either: the cache
    holds nothing the source cannot give again, so the main process rebuilds it under its lock."""
    try:
        st = open_store(path, verify=verify)
        why = _cached_problem(st, key)
    except DataError as e:
        st, why = None, f"it cannot be opened ({e})"
    return (st, "") if why is None else (None, why)


def prepare_dataset(cfg: DataConfig, *, rank: int = 0, is_main: Optional[bool] = None,
                    verify: bool = True, wait_timeout_s: float = 3600.0, poll_s: float = 0.5) -> Store:
    """Open or build the store for ``cfg`` (see module docstring) and return it.

    ``rank``/``is_main``: only the main process (default: rank 0) builds; pass ``is_main``
    explicitly when each node has its own cache folder (local rank 0 builds). ``verify``:
    check the sha256 of every array file when opening (the build itself is trusted). A cached
    store that may not be served (not sealed by this user, built for another key, damaged) is
    rebuilt in place, with a warning saying why.
    """
    main = (rank == 0) if is_main is None else bool(is_main)
    ds = str(cfg.dataset)
    as_path = Path(os.path.expanduser(ds))
    if is_store(as_path):
        return open_any(as_path, verify=verify)  # a protected store is re-checked against its clean source
    if os.sep in ds or (os.altsep and os.altsep in ds) or ds.startswith(("~", ".")):
        # Meant as a store folder: open_store says what is wrong with it.
        return open_any(as_path, verify=verify)
    fn = SOURCES.get(ds)  # ConfigError naming the known sources when unknown
    root = fn.root(cfg)
    root_existed = root is None or root.exists()
    key, doc = cache_key(cfg, ds)
    path = store_path_for(cfg, ds, key)
    if not main:
        return _wait_for(cfg, ds, path, root_existed, wait_timeout_s, poll_s, verify, key)
    if is_store(path):
        st, _ = _open_cached(path, key, verify)
        if st is not None:
            return st

    # One builder per store: another process building the same one (same key) is waited for and
    # its store reused; the leftovers of a killed build are removed first; a cached store that may
    # not be served is replaced.
    with hold(path, wait_s=wait_timeout_s, what="data store"):
        replace = False
        if is_store(path):
            st, why = _open_cached(path, key, verify)  # again: a process we waited for may have rebuilt it
            if st is not None:
                return st
            print(f"warning: rebuilding the cached store {path}: {why}", file=sys.stderr)
            replace = True
        clean_leftovers(path)
        return _build(cfg, ds, fn, root, root_existed, key, doc, path, verify, replace)


def _build(cfg: DataConfig, ds: str, fn: Any, root: Any, root_existed: bool, key: str, doc: Dict[str, Any],
           path: Path, verify: bool, replace: bool = False) -> Store:
    marker = _error_marker(path)
    marker.unlink(missing_ok=True)
    try:
        raw = fn(cfg)
        if not root_existed:  # downloaded during the build: key it by what is there now
            key, doc = cache_key(cfg, ds)
            path = store_path_for(cfg, ds, key)
        source = dict(raw.info)
        source.update(root=doc["root"], root_fingerprint=doc["root_fingerprint"])
        if root is not None and root.is_file():
            source["root_sha256"] = sha256_file(root)  # the source data's own hash, for provenance
        meta = {"data_config": dataclasses.asdict(cfg), "cache_key": key, "cache_key_doc": doc}
        try:
            return write_store(path, train=(raw.train_x, raw.train_y), test=(raw.test_x, raw.test_y),
                               classes=raw.classes, meta=meta, kind="clean", name=ds, source=source,
                               overwrite=replace)
        except DataError:
            if is_store(path):  # another process built the same store first: use it
                return open_store(path, verify=verify)
            raise
    except BaseException as e:
        try:
            # atomic: a waiting rank polls for the marker and must never read it half-written
            write_text_atomic(marker, f"{type(e).__name__}: {e}")
        except OSError:
            pass
        raise
