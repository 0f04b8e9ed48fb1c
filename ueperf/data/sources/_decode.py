"""Parallel image decoding (PIL in a thread pool) into one preallocated uint8 NHWC array.

Threads rather than processes: Pillow releases the GIL while it decodes, converts and
resamples, so threads scale over cores without pickling images between processes; tar members
are read sequentially by the calling thread and handed to the pool as bytes.
"""
from __future__ import annotations

import collections
import io
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Optional, Tuple

import numpy as np

from ...errors import DataError

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


def decode_many(jobs: Iterable[Tuple[int, str, Any]], *, total: int, size: int = 0,
                desc: str = "decode", workers: Optional[int] = None) -> np.ndarray:
    """Decode ``total`` images from ``jobs`` (an iterable of ``(row, name, src)``) in a thread pool.

    Returns (total, H, W, 3) uint8 with job ``(row, ...)`` at ``out[row]``; every row in
    [0, total) must come exactly once (jobs may arrive in any order, e.g. tar member order). With ``size > 0`` every image is resized to
    ``size`` x ``size`` (see :func:`_resize_crop`); with ``size == 0`` all images must share
    the first image's size, otherwise a :class:`DataError` names two files that differ and
    says to set ``data.image_size``. At most ``4 * workers`` images are in flight, so
    streaming sources (tar members) never hold more than that in memory besides the output.
    """
    from PIL import ImageFile
    from tqdm.auto import tqdm

    from . import num_workers
    workers = workers or num_workers()
    window = 4 * workers
    out: Optional[np.ndarray] = None
    first_name = ""
    pending: collections.deque = collections.deque()
    count = 0

    def drain() -> None:
        nonlocal out, first_name
        name, fut, j = pending.popleft()
        arr = fut.result()
        if out is None:
            out = np.empty((total,) + arr.shape, dtype=np.uint8)
            first_name = name
        elif arr.shape != out.shape[1:]:
            raise DataError(f"images differ in size: {first_name} is {out.shape[2]}x{out.shape[1]} "
                            f"but {name} is {arr.shape[1]}x{arr.shape[0]} (width x height). A store "
                            f"holds one image size: set data.image_size=<pixels> to resize all images.")
        out[j] = arr
        bar.update(1)

    # A truncated file must fail loudly, not decode as grey padding; restore the caller's setting.
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="ueperf-decode") as ex, \
                tqdm(total=total, desc=desc, unit="img", disable=None, leave=False, smoothing=0.1) as bar:
            try:
                for row, name, src in jobs:
                    if count >= total:
                        raise RuntimeError(f"decode_many: more than total={total} jobs")
                    pending.append((name, ex.submit(decode_one, name, src, size), row))
                    count += 1
                    while len(pending) >= window:
                        drain()
                while pending:
                    drain()
            except BaseException:
                for _, fut, _ in pending:
                    fut.cancel()
                raise
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved
    if count != total:
        raise DataError(f"{desc}: expected {total} images but read {count}; the source changed "
                        f"while it was being read. Run again.")
    if out is None:  # total == 0
        return np.empty((0, size, size, 3), dtype=np.uint8)
    return out
