"""Data: sources → uint8 store → device-resident loaders.

::

    source (cifar10, cifar100, svhn, imagefolder, synthetic, embedded)  ueperf.data.sources.SOURCES
        │  fn(DataConfig) -> RawData (uint8 NHWC + int64 labels + info)
        ▼
    store folder: train/test .npy arrays + manifest.json (atomic)    ueperf.data.store
        │  prepare_dataset(cfg) builds it once under cache_dir, keyed by the source and config
        ▼
    loader: (x uint8 NHWC, y int64, idx int64) on the device          ueperf.data.loaders

``import ueperf.data`` imports numpy only; torch is imported when a loader is first used
(``make_loader``/``DeviceLoader`` are resolved lazily).
"""
from __future__ import annotations

from typing import Any

from .prepare import prepare_dataset
from .sources import SOURCES, RawData
from .store import Split, Store, open_store, write_store

_LAZY = {"make_loader": "loaders", "DeviceLoader": "loaders"}


def __getattr__(name: str) -> Any:
    # PEP 562: the loaders need torch; import them only when asked for.
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["prepare_dataset", "open_store", "write_store", "make_loader", "DeviceLoader", "SOURCES",
           "RawData", "Split", "Store"]
