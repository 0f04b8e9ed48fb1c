"""Loaders: batches ``(x uint8 (B, H, W, 3), y int64 (B,), idx int64 (B,))`` on the training device.

The default loader keeps the whole split resident on the device (airbench-style): the uint8
images are copied there once, and every batch is an ``index_select`` on the device with indices
from a per-epoch permutation, so an epoch costs no host→device copies and no host syncs. CIFAR-10
is 150 MB and tiny-ImageNet-100 at 64 px is 600 MB, a small share of a modern GPU. On a CPU
device the same code runs with CPU tensors (the CPU twin used by tests and CPU training).

Sharding (the contract in docs/CONTRACTS.md): the permutation of epoch e is
``numpy.random.default_rng([seed, e]).permutation(N)`` (a SeedSequence hash of the pair, so
(seed, e + 1) and (seed + 1, e) are unrelated), computed on the host: the same on every rank, on
every device type, and in the FFCV backend (both use :mod:`ueperf.data.order`), so switching
``data.loader`` does not change a run's data order. Rank r of W takes ``perm[r::W]``.
``set_epoch(e)`` selects the epoch the next iteration runs; each iteration then advances it
by one (as the FFCV backend does), so a loop that never calls it still sees fresh orders.

* ``drop_last=True`` (training): the permutation is first cut to ``W * (N // W)`` so every rank
  gets N // W samples, then each rank drops its last partial batch; every rank runs
  ``(N // W) // B`` steps.
* ``drop_last=False`` (evaluation): ranks get the disjoint strided shards ``perm[r::W]`` (sizes
  differ by at most one), which together cover every sample exactly once; the last batch of a
  rank may be short.

``batch_size`` is per rank (the global batch is ``B * W``).
"""
from __future__ import annotations

import importlib.util
import inspect
from typing import Any, Iterator, Tuple

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .order import epoch_order

BACKENDS = ("auto", "gpu", "cpu", "ffcv")
_COPY_CHUNK = 64 << 20  # bytes per host→device copy when uploading a memory-mapped split


def split_nbytes(split: Any) -> int:
    """Device bytes a resident copy of ``split`` needs: images + labels + one index per sample."""
    n = len(split.y)
    return int(np.prod(split.x.shape)) + 16 * n


def _upload_images(x: Any, device: torch.device) -> torch.Tensor:
    """(N, H, W, 3) uint8 (numpy / memmap / tensor) → contiguous tensor on ``device``."""
    if isinstance(x, torch.Tensor):
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise DataError(f"loader: images must be uint8 (N, H, W, 3), got {x.dtype} {tuple(x.shape)}")
        return x.to(device).contiguous()
    x = np.asarray(x) if not isinstance(x, np.ndarray) else x
    if x.dtype != np.uint8 or x.ndim != 4:
        raise DataError(f"loader: images must be uint8 (N, H, W, 3), got {x.dtype} {x.shape}")
    out = torch.empty(x.shape, dtype=torch.uint8, device=device)
    if device.type == "cpu":
        out.numpy()[...] = x  # one pass from the memory map into the resident copy
        return out
    # Chunked: a memory-mapped split never needs a second full copy in host memory.
    row = max(1, int(np.prod(x.shape[1:])))
    step = max(1, _COPY_CHUNK // row)
    for s in range(0, x.shape[0], step):
        out[s:s + step].copy_(torch.from_numpy(np.array(x[s:s + step])))
    return out


class DeviceLoader:
    """Whole split resident on a device; batches gathered there (see the module docstring).

    ``split``: anything with ``.x`` (N, H, W, 3) uint8 and ``.y`` (N,) int labels (a store
    :class:`~ueperf.data.store.Split`, or numpy arrays / tensors). ``device``: where batches
    are delivered. ``storage_device``: where the split lives (default: ``device``); with a CPU
    storage and a CUDA device, batches are gathered on the host into pinned memory and copied
    asynchronously (the streaming fallback when the split does not fit on the GPU).
    """

    def __init__(self, split: Any, batch_size: int, *, device: Any, shuffle: bool, drop_last: bool,
                 seed: int, rank: int = 0, world_size: int = 1, storage_device: Any = None):
        if batch_size < 1:
            raise ConfigError(f"loader: batch_size={batch_size}, must be at least 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"loader: rank={rank}, world_size={world_size}: need 0 <= rank < world_size")
        self.device = torch.device(device)
        self.storage_device = torch.device(storage_device) if storage_device is not None else self.device
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), bool(shuffle), bool(drop_last)
        if seed < 0:
            raise ConfigError(f"loader: seed={seed}: the data order needs a seed >= 0")
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch = 0
        y = split.y
        y = y.to(torch.int64) if isinstance(y, torch.Tensor) else torch.from_numpy(np.asarray(y, dtype=np.int64))
        if y.dim() != 1 or y.shape[0] != split.x.shape[0]:
            raise DataError(f"loader: {split.x.shape[0]} images but labels of shape {tuple(y.shape)}")
        self.x = _upload_images(split.x, self.storage_device)
        self.y = y.to(self.storage_device)
        self.n = int(y.shape[0])
        w = self.world_size
        if self.drop_last:
            self.per_rank = self.n // w
            self.num_batches = self.per_rank // self.batch_size
        else:
            self.per_rank = len(range(self.rank, self.n, w))
            self.num_batches = -(-self.per_rank // self.batch_size)
        self._stream = self.storage_device != self.device

    @property
    def num_samples(self) -> int:
        """Samples this rank yields per epoch."""
        return self.num_batches * self.batch_size if self.drop_last else self.per_rank

    def set_epoch(self, epoch: int) -> None:
        """Run epoch ``epoch``'s order on the next iteration (same on every rank)."""
        if epoch < 0:
            raise ConfigError(f"set_epoch({epoch}): epochs are >= 0")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices in ``epoch``, (per_rank,) int64 on the storage device."""
        order = torch.from_numpy(epoch_order(self.n, shuffle=self.shuffle, seed=self.seed, epoch=epoch,
                                             rank=self.rank, world_size=self.world_size,
                                             drop_last=self.drop_last).copy())
        if self.storage_device.type == "cuda":
            # One small copy per epoch, from pinned memory so it does not block the host.
            return order.pin_memory().to(self.storage_device, non_blocking=True)
        return order.to(self.storage_device)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = self.order(self.epoch)  # eagerly, at iter(): the next iter() runs the next epoch
        self.epoch += 1
        return self._batches(order)

    def _batches(self, order: torch.Tensor) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        b = self.batch_size
        for i in range(self.num_batches):
            idx = order[i * b:(i + 1) * b]
            x = self.x.index_select(0, idx)
            y = self.y.index_select(0, idx)
            if self._stream:
                if self.device.type == "cuda":
                    x, y, idx = x.pin_memory(), y.pin_memory(), idx.pin_memory()
                x = x.to(self.device, non_blocking=True)
                y = y.to(self.device, non_blocking=True)
                idx = idx.to(self.device, non_blocking=True)
            yield x, y, idx

    def __repr__(self) -> str:
        return (f"DeviceLoader(n={self.n}, batch_size={self.batch_size}, device={self.device}, "
                f"storage={self.storage_device}, shuffle={self.shuffle}, drop_last={self.drop_last}, "
                f"rank={self.rank}/{self.world_size}, batches={self.num_batches})")


def ffcv_available() -> bool:
    """True when the ``ffcv`` package is installed (checked without importing it)."""
    return importlib.util.find_spec("ffcv") is not None


def _ffcv_loader(split: Any, batch_size: int, **kw: Any) -> Any:
    try:
        from .ffcv_loader import FFCVLoader  # optional backend, imported only when asked for
    except ImportError as e:
        raise DataError(f"data.loader=ffcv is unavailable ({e}). Install it with "
                        f"pip install 'ueperf[ffcv]', or use data.loader=auto|gpu|cpu.") from None
    # Where the split lives, for loaders that take it as arguments (others read it off the split).
    params = inspect.signature(FFCVLoader).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key, value in (("store_path", getattr(split, "store_path", None)),
                       ("split_name", getattr(split, "name", "") or None)):
        if value is not None and (takes_any or key in params):
            kw.setdefault(key, value)
    return FFCVLoader(split, batch_size, **kw)


def make_loader(split: Any, batch_size: int, *, device: Any, shuffle: bool, drop_last: bool, seed: int,
                rank: int = 0, world_size: int = 1, backend: str = "auto",
                max_memory_fraction: float = 0.5, **kwargs: Any) -> Any:
    """A loader for ``split`` yielding ``(x, y, idx)`` on ``device`` (see the module docstring).

    ``backend`` (``data.loader``):

    * ``gpu``: split resident on the CUDA ``device`` (a ConfigError on other devices);
    * ``cpu``: split resident in host memory, batches gathered there and copied to ``device``;
    * ``ffcv``: :class:`ueperf.data.ffcv_loader.FFCVLoader` (optional package), which also gets
      ``store_path``/``split_name`` when the split comes from a store, and ``**kwargs``;
    * ``auto``: resident on ``device`` when it is not CUDA, or when the split needs at most
      ``max_memory_fraction`` of the GPU's free memory (the rest is left to the model); else
      ffcv if installed; else a DataError that lists the options.

    ``**kwargs`` are passed to the FFCV loader only.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"data.loader={backend!r}: expected one of {', '.join(BACKENDS)}")
    device = torch.device(device)
    common = dict(device=device, shuffle=shuffle, drop_last=drop_last, seed=seed, rank=rank,
                  world_size=world_size)
    if backend == "ffcv":
        return _ffcv_loader(split, batch_size, **common, **kwargs)
    if backend == "gpu":
        if device.type != "cuda":
            raise ConfigError(f"data.loader=gpu needs a CUDA device but the device is {device}; "
                              f"use data.loader=auto (or cpu)")
        return DeviceLoader(split, batch_size, **common)
    if backend == "cpu":
        return DeviceLoader(split, batch_size, storage_device="cpu", **common)
    if device.type != "cuda":
        return DeviceLoader(split, batch_size, **common)
    need = split_nbytes(split)
    free, _total = torch.cuda.mem_get_info(device)
    if need <= max_memory_fraction * free:
        return DeviceLoader(split, batch_size, **common)
    if ffcv_available():
        return _ffcv_loader(split, batch_size, **common, **kwargs)
    raise DataError(f"the {getattr(split, 'name', '') or 'data'} split needs {need / 2**30:.1f} GiB on "
                    f"{device} but only {free / 2**30:.1f} GiB are free (auto keeps it under "
                    f"{max_memory_fraction:.0%} of free memory). Options: data.loader=gpu to keep it "
                    f"resident anyway, data.loader=cpu to stream batches from host memory (slower), "
                    f"data.loader=ffcv after pip install 'ueperf[ffcv]', or a smaller "
                    f"data.image_size / data.train_limit.")
