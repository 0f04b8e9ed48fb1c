"""Image shortcut squeezing (Liu et al., ICML 2023; spec §3.3): ``iss_gray``, ``iss_jpeg``, ``iss_bdr``.

One deterministic compression of every **training** image, applied once before the loaders are
built (and so before crop/flip, as the repo's ``aug_train``); the clean test images are never
touched. On uint8 (N, H, W, 3) images, via :mod:`ueperf.augment.squeeze`:

- ``iss_gray``: ``L = 0.299 R + 0.587 G + 0.114 B`` (PIL "L", bit-exact), replicated to 3
  channels — best against low-frequency / colour shortcuts (EM, REM, LSP);
- ``iss_jpeg``: PIL JPEG encode + decode at ``iss.jpeg_quality`` (10) — best against
  high-frequency shortcuts (AR, TAP/AEP, OPS);
- ``iss_bdr``: bit-depth reduction to ``iss.bits`` (2) bits per channel, ``x AND (0xFF << (8 − b))``
  (torchvision RandomPosterize(b, p=1)).

Training is the standard recipe (spec §3.3 = §3.0: SGD 0.1, cosine, 60 epochs, batch 128), so
these countermeasures set no defaults. Because they act on the uint8 images, they work with
``augment.normalize`` either way and combine with any batch-level countermeasure.
"""
from __future__ import annotations

import sys
from typing import Any, List, Optional

import numpy as np

from ..augment.squeeze import grayscale_u8, jpeg_u8, posterize_u8
from ..engine.hooks import TrainHook
from ..errors import ConfigError
from . import COUNTERMEASURES, Countermeasure


def squeeze(x: np.ndarray, kind: str, cfg: Any, progress: Optional[bool] = None) -> np.ndarray:
    """The ISS transform ``kind`` (gray | jpeg | bdr) of uint8 images (N, H, W, 3) under
    ``cfg.iss``; same shape and dtype."""
    if kind == "gray":
        return grayscale_u8(x)
    if kind == "jpeg":
        return jpeg_u8(x, cfg.iss.jpeg_quality, progress=progress)
    if kind == "bdr":
        return posterize_u8(x, cfg.iss.bits)
    raise ConfigError(f"ISS kind {kind!r}: expected gray, jpeg or bdr")


class ISSHook(TrainHook):
    def __init__(self, cfg: Any, kind: str):
        self.cfg = cfg
        self.kind = kind
        self.change = None  # mean |x' − x| over the training images, [0,1] pixel units

    def transform_train_images(self, tr, x: np.ndarray) -> np.ndarray:
        show = bool(tr.cfg.train.progress and tr.ctx.is_main and len(x) >= 5000)
        if show:
            print(f"ISS ({self.kind}): compressing {len(x)} training images once", file=sys.stderr, flush=True)
        out = squeeze(x, self.kind, self.cfg, progress=show)
        # A one-off summary of how much the squeeze changed the data (cheap next to the transform).
        step = max(1, len(x) // 1000)
        self.change = float(np.abs(out[::step].astype(np.int16) - np.asarray(x[::step], dtype=np.int16)).mean() / 255)
        return out

    def on_epoch_end(self, tr, record) -> None:
        if self.change is not None:
            record["iss_mean_change"] = self.change


class _ISSBase(Countermeasure):
    kind = ""
    records = ("iss_mean_change",)

    def check(self, cfg) -> None:
        c = cfg.iss
        if self.kind == "jpeg" and not (isinstance(c.jpeg_quality, int) and 1 <= c.jpeg_quality <= 95):
            raise ConfigError(f"iss.jpeg_quality={c.jpeg_quality}: must be an integer in 1..95 "
                              f"(PIL's JPEG quality; ISS uses 10)")
        if self.kind == "bdr" and not (isinstance(c.bits, int) and 1 <= c.bits <= 8):
            raise ConfigError(f"iss.bits={c.bits}: must be an integer in 1..8 bits per channel "
                              f"(8 = unchanged; APBench uses 2)")
        if cfg.data.loader == "ffcv":
            raise ConfigError(f"{self.name} rewrites the training images in memory, which the FFCV loader "
                              f"cannot read; use data.loader=auto")

    def hooks(self, cfg) -> List[TrainHook]:
        return [ISSHook(cfg, self.kind)]


@COUNTERMEASURES.register("iss_gray")
class ISSGray(_ISSBase):
    summary = "ISS grayscale: training images converted to luma once (spec §3.3)"
    kind = "gray"


@COUNTERMEASURES.register("iss_jpeg")
class ISSJpeg(_ISSBase):
    summary = "ISS JPEG: training images JPEG-compressed once at quality iss.jpeg_quality = 10 (spec §3.3)"
    kind = "jpeg"
    options = ("iss.jpeg_quality",)


@COUNTERMEASURES.register("iss_bdr")
class ISSBdr(_ISSBase):
    summary = "ISS bit-depth reduction: training images posterized once to iss.bits = 2 bits (spec §3.3)"
    kind = "bdr"
    options = ("iss.bits",)
