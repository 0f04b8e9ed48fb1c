"""FFCV backend: stream a store split from a ``.beton`` file when it does not fit on the device.

The device-resident loader (``ueperf.data.loaders``) keeps the whole uint8 split on the GPU; for
sets larger than device memory (ImageNet-scale) this backend reads a ``.beton`` file written
once from the store split, decodes it with FFCV's JIT-compiled pipeline in background threads
and copies each batch to the device. The batch contract is the same as every ueperf loader::

    (x uint8 (N, H, W, 3) NHWC, y int64 (N,), idx int64 (N,))   all on `device`

``idx`` is the sample's row in the store split (stored in the beton as its own field, so it
survives any ordering), which is what sample-wise perturbations are indexed by.

Order (CONTRACTS.md, data/): the permutation of epoch ``e`` is a function of ``(seed, e)`` only,
the same on every rank; rank ``r`` of ``world_size`` takes ``perm[r::world_size]``; with
``drop_last`` every rank first keeps ``N // world_size`` samples, so all ranks run the same
number of full batches. FFCV's own orders are not used, for three reasons found in ffcv 1.0.2:

- ``OrderOption.RANDOM`` seeds ``default_rng(seed + epoch)``, so run (seed=s, epoch=e+1) sees
  the same order as run (seed=s+1, epoch=e): runs meant as independent seeds share orders.
  Here the generator is seeded with the pair, ``default_rng([seed, epoch])`` (a SeedSequence
  hash of both), the same permutation as ``ueperf.data.loaders.DeviceLoader``: switching
  ``data.loader`` does not change a run's data order.
- ``distributed=True`` builds ``torch.utils.data.DistributedSampler`` without ``num_replicas``
  and ``rank``, so it needs an initialised ``torch.distributed`` process group (this package
  keeps that in ``ueperf.parallel`` only), and it *pads* each rank with repeated samples
  (``drop_last=False`` is hard-coded) instead of dropping the tail.
- a custom ``TraversalOrder`` passed as ``order=`` is rejected by the constructor
  (``isinstance(order, TraversalOrder)`` on a class), so the order object is installed after
  construction (``loader.traversal_order``), the extension point FFCV's orders use.

No process group is needed for ``world_size > 1``: each rank computes its own slice.

FFCV is optional and imported lazily: importing this module works without it; using it raises
:class:`~ueperf.errors.ConfigError` with the install command.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple, Union

import numpy as np

from ..errors import ConfigError, DataError
from ..files import atomic_write, default_cache_dir, write_json_atomic
from ..parallel import usable_cpus
from .order import epoch_order

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
BETON_FORMAT = "ueperf-ffcv-beton/1"  # version of the sidecar JSON written next to each beton
ENCODINGS = ("raw", "jpg")
_INSTALL_HINT = "pip install ueperf[ffcv] (needs apt libturbojpeg0-dev libopencv-dev)"
_HASH_CHUNK = 8 << 20  # 8 MiB: fingerprinting in-memory splits in bounded slices
_POLL_S = 0.5  # how often a waiting iterator checks that FFCV's producer thread is alive


# ───────────────────────────────────────────── optional import ──
def _ffcv():
    """Import ffcv (and its submodules used here) or raise ConfigError with the install hint."""
    try:
        import ffcv  # noqa: F401
        import ffcv.fields  # noqa: F401
        import ffcv.fields.decoders  # noqa: F401
        import ffcv.loader  # noqa: F401
        import ffcv.transforms  # noqa: F401
        import ffcv.traversal_order.base  # noqa: F401
        import ffcv.writer  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"the FFCV data loader (data.loader=ffcv) needs the ffcv package, which "
                          f"could not be imported ({e}). Install it: {_INSTALL_HINT}, or use "
                          f"data.loader=auto") from None
    return ffcv


def ffcv_available() -> bool:
    """True when ffcv imports (does not raise)."""
    try:
        _ffcv()
    except ConfigError:
        return False
    return True


# ───────────────────────────────────────────── split checks and fingerprint ──
def _check_split(split: Any) -> Tuple[np.ndarray, np.ndarray]:
    x, y = getattr(split, "x", None), getattr(split, "y", None)
    if x is None or y is None:
        raise DataError(f"expected a store split with .x and .y arrays, got {type(split).__name__}")
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise DataError(f"split images must be a uint8 (N, H, W, 3) NHWC array; got "
                        f"{getattr(x, 'dtype', type(x))} {getattr(x, 'shape', '')}")
    y = np.asarray(y)
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"split labels must be integers of shape ({x.shape[0]},); got {y.dtype} {y.shape}")
    if x.shape[0] == 0:
        raise DataError("the split is empty: nothing to write to a beton")
    return x, y.astype(np.int64, copy=False)


def _split_fingerprint(split: Any) -> str:
    """Identifies the split's content, to tell a stale beton from a current one.

    For a split opened from a store: the sha256 of its array files recorded in the store's
    manifest (no image is read). For an in-memory split: sha256 of its bytes.
    """
    x, y = _check_split(split)
    name, store_path = getattr(split, "name", ""), getattr(split, "store_path", None)
    if store_path is not None and name:
        try:
            with open(Path(store_path) / "manifest.json", encoding="utf-8") as f:
                files = json.load(f)["files"]
            hx, hy = files[f"{name}_x.npy"]["sha256"], files[f"{name}_y.npy"]["sha256"]
            return f"store-sha256:{hx}:{hy}"
        except (OSError, ValueError, KeyError, TypeError):
            pass  # not a readable ueperf store: fall back to hashing the arrays
    h = hashlib.sha256()
    h.update(repr((x.shape, str(x.dtype))).encode())
    flat = x.reshape(x.shape[0], -1)
    step = max(1, _HASH_CHUNK // max(1, flat.shape[1]))
    for i in range(0, flat.shape[0], step):
        h.update(np.ascontiguousarray(flat[i:i + step]).data)
    h.update(np.ascontiguousarray(y).data)
    return f"array-sha256:{h.hexdigest()}"


# ───────────────────────────────────────────── beton files ──
def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _describe(split: Any, encoding: str, jpeg_quality: int) -> Dict[str, Any]:
    x, _ = _check_split(split)
    return {"format": BETON_FORMAT, "n": int(x.shape[0]), "image_shape": list(x.shape[1:]),
            "encoding": encoding, "jpeg_quality": int(jpeg_quality) if encoding == "jpg" else None,
            "fields": ["image", "label", "index"], "fingerprint": _split_fingerprint(split)}


def _beton_matches(path: Path, want: Dict[str, Any]) -> bool:
    """True when `path` and its sidecar exist and the sidecar describes the same split/encoding."""
    if not path.is_file():
        return False
    try:
        with open(_sidecar(path), encoding="utf-8") as f:
            have = json.load(f)
    except (OSError, ValueError):
        return False
    keys = ("format", "n", "image_shape", "encoding", "jpeg_quality", "fields", "fingerprint")
    return isinstance(have, dict) and all(have.get(k) == want[k] for k in keys)


class _SplitSamples:
    """Indexable view FFCV's writer reads: sample i = (image HWC uint8, label, index i)."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i):
        return self.x[i], int(self.y[i]), int(i)


def write_beton(split: Any, path: PathLike, *, overwrite: bool = False, encoding: str = "raw",
                jpeg_quality: int = 90, num_workers: Optional[int] = None,
                page_size: Optional[int] = None) -> Path:
    """Write `split` (``.x`` uint8 (N, H, W, 3), ``.y`` int64 (N,)) to an FFCV ``.beton`` file.

    Fields: ``image`` (RGBImageField; ``encoding="raw"`` stores the uint8 pixels, lossless;
    ``"jpg"`` JPEG-compresses at `jpeg_quality`, lossy: it changes a protected image's δ, so use
    it for clean data or with that in mind), ``label`` (IntField), ``index`` (IntField, the row
    in the split). A sidecar ``<path>.json`` records the split's fingerprint and the encoding.

    Atomic: the beton is written to a temporary sibling and renamed into place; an interrupted
    write never leaves a file at `path`. FFCV's writer shows a tqdm progress bar (to stderr).
    With ``overwrite=False`` an existing beton that matches the split is kept and returned; one
    that does not match (or has no sidecar) is a :class:`DataError`.
    ``num_workers``: writer processes (default: the cores this process may use).
    Returns the path.
    """
    if encoding not in ENCODINGS:
        raise ConfigError(f"write_beton: encoding={encoding!r}; expected one of {ENCODINGS}")
    if encoding == "jpg" and not 1 <= int(jpeg_quality) <= 100:
        raise ConfigError(f"write_beton: jpeg_quality={jpeg_quality}; expected 1..100")
    ffcv = _ffcv()
    x, y = _check_split(split)
    path = Path(path).expanduser().absolute()
    want = _describe(split, encoding, jpeg_quality)
    if path.exists() and not overwrite:
        if _beton_matches(path, want):
            return path
        raise DataError(f"{path} already exists but was not written from this split with "
                        f"encoding={encoding!r} (its sidecar {_sidecar(path).name} is missing or "
                        f"differs); pass overwrite=True to replace it, or delete it")
    path.parent.mkdir(parents=True, exist_ok=True)
    workers = num_workers if num_workers and num_workers > 0 else usable_cpus()
    fields = {
        "image": ffcv.fields.RGBImageField(write_mode=encoding, jpeg_quality=jpeg_quality),
        "label": ffcv.fields.IntField(),
        "index": ffcv.fields.IntField(),
    }
    kwargs = {} if page_size is None else {"page_size": int(page_size)}
    log.info("writing FFCV beton %s: %d images %s, %s", path, x.shape[0], tuple(x.shape[1:]), encoding)

    def write(tmp: Path) -> None:
        writer = ffcv.writer.DatasetWriter(str(tmp), fields, num_workers=workers, **kwargs)
        # FFCV forks `workers` processes that read the (memory-mapped) arrays; the tqdm bar
        # counts samples written.
        writer.from_indexed_dataset(_SplitSamples(x, y))
        # Old sidecar first: a crash between the two renames leaves a beton without a sidecar,
        # which is treated as unknown (rewritten), never as matching.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_sidecar(path))

    atomic_write(path, write)
    write_json_atomic(_sidecar(path), {**want, "ffcv_version": _ffcv_version()})
    return path


def _ffcv_version() -> Optional[str]:
    from importlib import metadata
    try:
        return metadata.version("ffcv")  # ffcv.__version__ says 0.0.3rc1 in the 1.0.2 release
    except metadata.PackageNotFoundError:
        return None


def default_beton_path(split: Any, *, encoding: str = "raw", cache_dir: Optional[PathLike] = None) -> Path:
    """Where a split's beton lives when none is given.

    ``<store>/ffcv/<split>.beton`` (``<split>-jpg.beton`` for JPEG) when the split comes from a
    store whose folder is writable; otherwise under `cache_dir` (default
    ``$UEPERF_CACHE_DIR`` or ``~/.cache/ueperf``) in ``ffcv/<key>/``, `key` a hash of the split's
    fingerprint, so read-only stores and in-memory splits get a stable private location.
    """
    name = getattr(split, "name", "") or "split"
    fname = f"{name}.beton" if encoding == "raw" else f"{name}-{encoding}.beton"
    store_path = getattr(split, "store_path", None)
    if store_path is not None:
        folder = Path(store_path).expanduser().absolute() / "ffcv"
        if _writable_dir(folder):
            return folder / fname
    root = Path(cache_dir or default_cache_dir()).expanduser()
    key = hashlib.sha256(_split_fingerprint(split).encode()).hexdigest()[:16]
    return root.absolute() / "ffcv" / key / fname


def _writable_dir(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


@contextlib.contextmanager
def _file_lock(path: Path):
    """Exclusive advisory lock on ``<path>.lock``: under torchrun every rank builds a loader
    at once, and only one of them should write a missing beton while the others wait."""
    import fcntl
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path.with_name(path.name + ".lock"), "a+")
    except OSError:  # a read-only folder: nobody can write the beton there, so nothing to guard
        yield
        return
    with f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# ───────────────────────────────────────────── order ──
def _make_order(ffcv, loader, fn):
    """An ffcv TraversalOrder whose epoch-e order is ``fn(e)`` (uint64, as ffcv's own orders)."""

    class _ContractOrder(ffcv.traversal_order.base.TraversalOrder):
        def sample_order(self, epoch: int):
            return fn(epoch).astype(np.uint64)

    return _ContractOrder(loader)


# ───────────────────────────────────────────── loader ──
class FFCVLoader:
    """Batches ``(x uint8 (B, H, W, 3), y int64 (B,), idx int64 (B,))`` on `device` from a beton.

    Same interface as ``ueperf.data.loaders.DeviceLoader``: ``set_epoch(e)`` picks the epoch
    whose order the next ``iter()`` runs (default: 0, then one more per completed ``iter()``),
    ``len()`` is batches per epoch on this rank. Order: see :func:`epoch_order`.

    ``beton_path``: the beton to read; written from `split` when missing (a beton there that was
    written from other data is a :class:`DataError`). Default: :func:`default_beton_path`, a
    cache this loader owns, rewritten when stale (the store changed). Concurrent ranks writing
    the same beton serialise on a file lock.
    ``num_workers``: FFCV decode threads (default: this process's cores divided among the
    processes on this node, ``$LOCAL_WORLD_SIZE``). Note that FFCV sets numba's thread count
    and calls ``torch.set_num_threads(num_workers)``; the loader restores torch's count in the
    calling thread after each call into FFCV.
    ``os_cache``: read through the OS page cache (FFCV's default, best when the beton fits in
    RAM or several processes read it); False uses FFCV's process cache.
    ``batches_ahead``: batches FFCV prepares in advance.

    Each yielded batch is a fresh tensor (a device-side copy). FFCV reuses ``batches_ahead + 2``
    output buffers, so without the copy a batch held past the next iteration would be
    overwritten under the caller; one copy of a uint8 batch is small next to a training step.
    """

    def __init__(self, split: Any, batch_size: int, *, device: Any = "cpu", shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1,
                 beton_path: Optional[PathLike] = None, num_workers: Optional[int] = None,
                 encoding: str = "raw", jpeg_quality: int = 90, os_cache: bool = True,
                 batches_ahead: int = 3, non_blocking: bool = True,
                 cache_dir: Optional[PathLike] = None):
        import torch

        ffcv = _ffcv()
        x, _ = _check_split(split)
        n = int(x.shape[0])
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size={batch_size}: must be >= 1")
        if int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
            raise ConfigError(f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size")
        if int(seed) < 0:
            raise ConfigError(f"seed={seed}: the loader's order needs a non-negative seed")
        if encoding not in ENCODINGS:
            raise ConfigError(f"encoding={encoding!r}; expected one of {ENCODINGS}")
        self.split = split
        self.n = n
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch = 0
        if num_workers is None or num_workers < 1:
            local = int(os.environ.get("LOCAL_WORLD_SIZE") or self.world_size)
            num_workers = max(1, usable_cpus() // max(1, local))
        self.num_workers = int(num_workers)

        per_rank = len(range(self.rank, (self.world_size * (n // self.world_size)) if self.drop_last else n,
                             self.world_size))
        self._len = per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)
        if self._len == 0:
            raise ConfigError(f"batch_size={self.batch_size} with drop_last=True leaves no batch: rank "
                              f"{self.rank} of {self.world_size} has {per_rank} of the {n} samples; "
                              f"lower the batch size")

        # ── the beton ──
        owned = beton_path is None
        path = (default_beton_path(split, encoding=encoding, cache_dir=cache_dir) if owned
                else Path(beton_path).expanduser().absolute())
        want = _describe(split, encoding, jpeg_quality)
        with _file_lock(path):
            if not _beton_matches(path, want):
                if path.exists() and not owned:
                    raise DataError(f"beton_path={path} exists but was not written from this split "
                                    f"with encoding={encoding!r}; delete it, pass another path, or "
                                    f"leave beton_path unset to use the managed cache")
                # one rank writes (the others wait on the lock), so it may use every core
                write_beton(split, path, overwrite=True, encoding=encoding, jpeg_quality=jpeg_quality)
        self.beton_path = path

        # ── FFCV loader: decoder → torch tensor → device, per field ──
        dec, tr = ffcv.fields.decoders, ffcv.transforms
        dev = self.device

        def scalar():  # IntDecoder gives (B, 1) int64; Squeeze(1), not Squeeze(): B=1 must stay (1,)
            return [dec.IntDecoder(), tr.ToTensor(), tr.Squeeze(1), tr.ToDevice(dev, non_blocking)]

        pipelines = {
            "image": [dec.SimpleRGBImageDecoder(), tr.ToTensor(), tr.ToDevice(dev, non_blocking)],
            "label": scalar(),
            "index": scalar(),
        }
        threads = torch.get_num_threads()
        try:
            # SEQUENTIAL + distributed=False here; the order object is replaced just below.
            self._loader = ffcv.loader.Loader(
                str(path), batch_size=self.batch_size, num_workers=self.num_workers,
                os_cache=bool(os_cache), order=ffcv.loader.OrderOption.SEQUENTIAL, distributed=False,
                seed=self.seed, pipelines=pipelines, drop_last=self.drop_last,
                batches_ahead=int(batches_ahead))
        finally:
            torch.set_num_threads(threads)
        if self._loader.reader.num_samples != n:
            raise DataError(f"{path} holds {self._loader.reader.num_samples} samples but the split "
                            f"has {n}; delete the beton so it is rewritten")
        self._loader.traversal_order = _make_order(ffcv, self._loader, self._order)
        # ffcv's __len__ and its per-epoch slice `order[:len * batch_size]` read this.
        self._loader.first_traversal_order = self._order(0).astype(np.uint64)
        assert len(self._loader) == self._len, (len(self._loader), self._len)

    def _order(self, epoch: int) -> np.ndarray:
        return epoch_order(self.n, shuffle=self.shuffle, seed=self.seed, epoch=epoch, rank=self.rank,
                           world_size=self.world_size, drop_last=self.drop_last)

    def set_epoch(self, epoch: int) -> None:
        """Use epoch `epoch`'s order for the next iteration."""
        if int(epoch) < 0:
            raise ConfigError(f"set_epoch({epoch}): epochs are >= 0")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[Tuple[Any, Any, Any]]:
        import torch

        self._loader.next_epoch = self.epoch  # ffcv asks the order for sample_order(next_epoch)
        self.epoch += 1
        threads = torch.get_num_threads()
        it = iter(self._loader)  # starts FFCV's producer thread (an ffcv EpochIterator)
        torch.set_num_threads(threads)
        try:
            while True:
                item = self._next_item(it)
                if item is None:  # the producer's end-of-epoch marker
                    break
                slot, (x, y, idx) = item
                # As EpochIterator.__next__: on CUDA, wait for the copy stream of this slot.
                stream = it.cuda_streams[slot]
                if stream is not None:
                    it.current_stream.wait_stream(stream)
                yield x.clone(), y.clone(), idx.clone()
        finally:
            it.close()  # stops the producer thread when the caller breaks out early

    def _next_item(self, it):
        """The producer's next queue item, or DataError if its thread died.

        FFCV's own ``__next__`` blocks on the queue forever when the producer thread raised
        (for instance ``Squeeze()`` on a batch of one); polling with a timeout and checking the
        thread turns that hang into an error.
        """
        import queue

        while True:
            try:
                return it.output_queue.get(timeout=_POLL_S)
            except queue.Empty:
                if it.is_alive():
                    continue
            try:  # the thread has ended: everything it put is in the queue now
                return it.output_queue.get_nowait()
            except queue.Empty:
                raise DataError(f"FFCV's loader thread stopped with an error while reading "
                                f"{self.beton_path} (its traceback is printed above). If the beton "
                                f"is damaged, delete it (and its .json) so it is rewritten.") from None

    def __repr__(self) -> str:
        return (f"FFCVLoader({str(self.beton_path)!r}, n={self.n}, batch_size={self.batch_size}, "
                f"device={self.device}, shuffle={self.shuffle}, drop_last={self.drop_last}, "
                f"rank={self.rank}/{self.world_size}, workers={self.num_workers})")
