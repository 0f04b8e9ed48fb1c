"""Parallel image decoding into one uint8 NHWC array.

Processes, not threads: for small images (CIFAR, 64 px tiny-ImageNet) most of the ~300 µs per
image is PIL's Python code (header parsing, mode handling), which holds the GIL; a thread pool
measured no faster than a plain loop on 2 cores, while worker processes that write into a
shared memory-mapped scratch file scale with the cores (nothing but job descriptions and tar
member bytes is pickled). Small jobs (< ``PARALLEL_MIN`` images) run in-process, where starting
a pool would cost more than it saves.
"""
from __future__ import annotations

import collections
import io
import os
import struct
import sys
import tempfile
from typing import Any, Iterable, List, Optional, Tuple

import numpy as np

from ...errors import DataError

PARALLEL_MIN = 2048  # images; below this a process pool costs more than it saves
_CHUNK = 256         # images per task: amortises task overhead, keeps the progress bar lively

# Image files the decoders accept (torchvision's ImageFolder list), compared lower-case.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _to_rgb(img: Any) -> Any:
    """Any PIL mode → RGB: grayscale, palette, CMYK, alpha (dropped, as torchvision does), 16-bit."""
    from PIL import Image
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale (PNG/TIFF): PIL's convert would clip at 255; keep the top 8 bits.
        a = np.asarray(img).astype(np.int64)
        a = np.clip(a >> 8, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL warns when converting palette+transparency straight to RGB
    return img.convert("RGB")


def _resize_crop(img: Any, size: int) -> Any:
    """Shorter side to ``size`` (bicubic, antialiased), then the central ``size`` x ``size`` crop."""
    from PIL import Image
    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


# The largest image decoded: 8192 x 8192 (an ImageNet photo is < 0.3 M pixels; PIL's own bomb check
# only warns below 179 M, after which an 11000 x 11000 PNG had cost 1.5 GB).
MAX_PIXELS = 8192 * 8192


def decode_one(name: str, src: Any, size: int = 0) -> np.ndarray:
    """Decode one image to (H, W, 3) uint8; ``src`` is encoded bytes, a file path or an RGB array.

    A corrupt or truncated file is a :class:`DataError` naming ``name`` (truncated files are
    never padded: the caller keeps ``ImageFile.LOAD_TRUNCATED_IMAGES`` False).
    """
    from PIL import Image
    if isinstance(src, np.ndarray):
        img = Image.fromarray(src, "RGB")
    else:
        try:
            img = Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray, memoryview)) else src)
            if img.size[0] * img.size[1] > MAX_PIXELS:  # from the header: nothing decoded yet
                raise DataError(f"image {name} is {img.size[0]}x{img.size[1]} pixels, more than the {MAX_PIXELS:,} "
                                f"ueperf decodes ({3 * MAX_PIXELS / 2**30:.1f} GiB of RGB per image): a crafted "
                                f"file, or a photo to downscale before it joins a dataset")
            if size > 0:
                # JPEG: decode at the smallest DCT scale still >= size per side (much faster
                # for large photos; the bicubic resize below does the rest).
                img.draft("RGB", (size, size))
            img.load()
            img = _to_rgb(img)
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error,
                Image.DecompressionBombError) as e:
            raise DataError(f"cannot decode image {name}: {e}. The file is corrupt, truncated or not "
                            f"an image; replace or delete it and rebuild.") from None
    if size > 0:
        img = _resize_crop(img, size)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:  # defensive: _to_rgb guarantees RGB
        raise DataError(f"image {name} decoded to shape {arr.shape}, expected (H, W, 3)")
    return arr


def _size_error(first: str, first_shape: Tuple[int, ...], name: str, shape: Tuple[int, ...]) -> DataError:
    return DataError(f"images differ in size: {first} is {first_shape[1]}x{first_shape[0]} but {name} "
                     f"is {shape[1]}x{shape[0]} (width x height). A store holds one image size: set "
                     f"data.image_size=<pixels> to resize all images.")


# Worker-process state, set once per worker by _worker_init.
_W: dict = {}


def _worker_init(scratch: str, shape: Tuple[int, ...], size: int, first: str) -> None:
    from PIL import ImageFile
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # truncated files must fail, not be grey-padded
    _W.update(out=np.memmap(scratch, dtype=np.uint8, mode="r+", shape=shape), size=size, first=first)


def _worker_chunk(jobs: List[Tuple[int, str, Any]]) -> int:
    out, size = _W["out"], _W["size"]
    for row, name, src in jobs:
        arr = decode_one(name, src, size)
        if arr.shape != out.shape[1:]:
            raise _size_error(_W["first"], out.shape[1:], name, arr.shape)
        out[row] = arr  # MAP_SHARED: visible to the parent without any copy through a pipe
    return len(jobs)


def _mp_context() -> Any:
    import multiprocessing as mp
    # fork where it is safe (Linux): no re-import of the caller's __main__ (spawn would re-run an
    # unguarded script) and no start-up cost; workers only use numpy and PIL. spawn elsewhere.
    if sys.platform.startswith("linux"):
        return mp.get_context("fork")
    return mp.get_context("spawn")


def decode_many(jobs: Iterable[Tuple[int, str, Any]], *, total: int, size: int = 0,
                desc: str = "decode", workers: Optional[int] = None,
                parallel_min: int = PARALLEL_MIN) -> np.ndarray:
    """Decode ``total`` images from ``jobs`` (an iterable of ``(row, name, src)``).

    ``src`` is encoded bytes, a file path or an (H, W, 3) uint8 array (see :func:`decode_one`).
    Returns (total, H, W, 3) uint8 with job ``(row, ...)`` at ``out[row]``; every row in
    [0, total) must come exactly once (jobs may arrive in any order, e.g. tar member order).
    With ``size > 0`` every image is resized to ``size`` x ``size`` (see :func:`_resize_crop`);
    with ``size == 0`` all images must share the first one's size, otherwise a
    :class:`DataError` names two files that differ and says to set ``data.image_size``.

    ``workers`` processes (default: the usable CPUs) decode when ``total >= parallel_min``; at
    most ``2 * workers`` chunks of jobs are in flight, so a streaming source (tar members) holds
    only those in memory besides the output.
    """
    from PIL import ImageFile
    from tqdm.auto import tqdm

    from ...parallel import usable_cpus
    workers = workers or usable_cpus()
    it = iter(jobs)
    first_job = next(it, None)
    if first_job is None:
        if total:
            raise DataError(f"{desc}: expected {total} images but read none; the source changed "
                            f"while it was being read. Run again.")
        return np.empty((0, size, size, 3), dtype=np.uint8)
    row0, name0, src0 = first_job
    count = 1
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # restored below: the caller's setting is theirs
    try:
        img0 = decode_one(name0, src0, size)
        shape = (total,) + img0.shape
        with tqdm(total=total, desc=desc, unit="img", disable=None, leave=False, smoothing=0.1) as bar:
            bar.update(1)
            if total < parallel_min or workers < 2:
                out = np.empty(shape, dtype=np.uint8)
                out[row0] = img0
                for row, name, src in it:
                    arr = decode_one(name, src, size)
                    if arr.shape != img0.shape:
                        raise _size_error(name0, img0.shape, name, arr.shape)
                    out[row] = arr
                    count += 1
                    bar.update(1)
            else:
                out, n = _decode_parallel(it, shape, size, name0, row0, img0, workers, bar)
                count += n
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved
    if count != total:
        raise DataError(f"{desc}: expected {total} images but read {count}; the source changed "
                        f"while it was being read. Run again.")
    return out


def _decode_parallel(it: Iterable[Tuple[int, str, Any]], shape: Tuple[int, ...], size: int, name0: str,
                     row0: int, img0: np.ndarray, workers: int, bar: Any) -> Tuple[np.ndarray, int]:
    """Process-pool half of :func:`decode_many`; returns (output in RAM, jobs decoded here)."""
    from concurrent.futures import ProcessPoolExecutor
    fd, scratch = tempfile.mkstemp(prefix="ueperf-decode-", suffix=".u8")
    os.close(fd)
    count = 0
    try:
        mm = np.memmap(scratch, dtype=np.uint8, mode="w+", shape=shape)
        mm[row0] = img0
        pending: collections.deque = collections.deque()
        with ProcessPoolExecutor(workers, mp_context=_mp_context(), initializer=_worker_init,
                                 initargs=(scratch, shape, size, name0)) as ex:
            try:
                chunk: List[Tuple[int, str, Any]] = []
                for job in it:
                    chunk.append(job)
                    if len(chunk) == _CHUNK:
                        pending.append(ex.submit(_worker_chunk, chunk))
                        count += len(chunk)
                        chunk = []
                        while len(pending) >= 2 * workers:
                            bar.update(pending.popleft().result())
                if chunk:
                    pending.append(ex.submit(_worker_chunk, chunk))
                    count += len(chunk)
                while pending:
                    bar.update(pending.popleft().result())
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise
        out = np.array(mm)  # into RAM, so the scratch file can go
        del mm
    finally:
        try:
            os.unlink(scratch)
        except OSError:
            pass
    return out, count
