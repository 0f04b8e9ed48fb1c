"""Image squeezes on uint8 images, host side (spec §3.3 ISS; UEraser's JPEG variant, §3.2).

``grayscale_u8``, ``posterize_u8`` and ``jpeg_u8`` transform whole uint8 NHWC numpy arrays once
(image shortcut squeezing of a training set); ``jpeg_batch`` JPEG-codes a float batch on the host
per training step (UEraser-JPEG). Grayscale here is PIL's integer "L" conversion, bit-exact.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

Tensor = torch.Tensor


# ═════════════════════════════════════════════ uint8 NHWC, host side (ISS) ══
def _check_u8(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"{name}: expected uint8 images (N, H, W, 3), got {x.dtype} {x.shape}")
    return x


def grayscale_u8(x: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """PIL's RGB → "L" conversion replicated to 3 channels (ISS Grayscale, spec §3.3), bit-exact:
    ``L = (19595 R + 38470 G + 7471 B + 2^15) >> 16`` (the 0.299/0.587/0.114 weights in 16-bit
    fixed point). (N, H, W, 3) uint8 → same."""
    x = _check_u8(x, "grayscale_u8")
    out = np.empty_like(x)
    w = np.array([19595, 38470, 7471], dtype=np.uint32)
    for s in range(0, x.shape[0], chunk):
        lum = ((x[s:s + chunk].astype(np.uint32) * w).sum(-1) + 0x8000) >> 16
        out[s:s + chunk] = lum.astype(np.uint8)[..., None]
    return out


def posterize_u8(x: np.ndarray, bits: int) -> np.ndarray:
    """Bit-depth reduction (ISS BDR = torchvision RandomPosterize(bits, p=1), spec §3.3): keep
    the top ``bits`` bits, ``x AND (0xFF << (8 − b))``. (N, H, W, 3) uint8 → same."""
    x = _check_u8(x, "posterize_u8")
    if not 1 <= int(bits) <= 8:
        raise ValueError(f"posterize_u8: bits={bits} must be in 1..8")
    return x & np.uint8((0xFF << (8 - int(bits))) & 0xFF)


def _jpeg_one(img: np.ndarray, quality: int) -> np.ndarray:
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def jpeg_batch(x: torch.Tensor, quality, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """JPEG encode + decode of a float batch (B, 3, H, W) in [0, 1] with PIL (UEraser's JPEG
    variant, spec §3.2): pixels are rounded to uint8 first, as an image file would be.
    ``quality``: an int (every image) or an inclusive range (lo, hi) drawn per image from
    ``generator``. Returns float32 (B, 3, H, W) on x's device.

    The one batch op that leaves the device: the uint8 batch goes to the host, through PIL's
    codec, and back (B·H·W·3 bytes each way; JPEG has no batched device codec here)."""
    B = x.shape[0]
    if isinstance(quality, (tuple, list)):
        lo, hi = int(quality[0]), int(quality[1])
        q = torch.randint(lo, hi + 1, (B,), generator=generator, device=x.device).tolist()
    else:
        q = [int(quality)] * B
    if not all(1 <= v <= 100 for v in q):
        raise ValueError(f"jpeg_batch: quality {quality} must be in 1..100")
    u8 = x.detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = np.stack([_jpeg_one(np.ascontiguousarray(u8[i]), q[i]) for i in range(B)]) if B else u8
    return torch.from_numpy(out).to(x.device).permute(0, 3, 1, 2).float().div_(255)


def jpeg_u8(x: np.ndarray, quality: int = 10, *, progress: Optional[bool] = None,
            workers: Optional[int] = None) -> np.ndarray:
    """JPEG encode + decode each image with PIL at ``quality`` (1..95; ISS JPEG-10, spec §3.3:
    PIL's defaults otherwise, i.e. 4:2:0 chroma subsampling). (N, H, W, 3) uint8 → same.

    Runs over a thread pool (PIL's codec releases the GIL) of ``workers`` threads (default: the
    CPU count, at most 8); ``progress`` shows a tqdm bar (default: when N >= 5,000).
    """
    x = _check_u8(x, "jpeg_u8")
    if not 1 <= int(quality) <= 95:
        raise ValueError(f"jpeg_u8: quality={quality} must be in 1..95 (PIL's useful range)")
    n = x.shape[0]
    out = np.empty_like(x)
    if progress is None:
        progress = n >= 5000
    import os
    from concurrent.futures import ThreadPoolExecutor
    workers = max(1, int(workers or min(8, os.cpu_count() or 1)))
    bar = None
    if progress:
        import sys
        from tqdm.auto import tqdm
        bar = tqdm(total=n, desc=f"JPEG-{quality}", unit="img", file=sys.stderr, leave=False)
    chunk = 512

    def run(s: int) -> int:
        for i in range(s, min(n, s + chunk)):
            out[i] = _jpeg_one(x[i], quality)
        return min(n, s + chunk) - s

    try:
        if workers == 1 or n <= chunk:
            for s in range(0, n, chunk):
                done = run(s)
                if bar is not None:
                    bar.update(done)
        else:
            with ThreadPoolExecutor(workers) as pool:
                for done in pool.map(run, range(0, n, chunk)):
                    if bar is not None:
                        bar.update(done)
    finally:
        if bar is not None:
            bar.close()
    return out


__all__ = ["grayscale_u8", "posterize_u8", "jpeg_u8", "jpeg_batch"]
