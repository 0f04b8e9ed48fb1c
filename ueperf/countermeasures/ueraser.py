"""UEraser (Qin et al., ICCV-W AROW 2023; spec §3.2): ``ueraser_lite``, ``ueraser``, ``ueraser_max``.

Augmentation policy U, per image, after the crop/flip of the standard recipe (lafeat/ueraser
``ueraser.py``, kornia ops rebuilt in :mod:`ueperf.augment.policies`):

    x ← PlasmaBrightness(roughness U[0.3, 0.7], intensity U[0.5, 1.0], p = ueraser.plasma_p)
    x ← PlasmaContrast(roughness U[0.3, 0.7], p = ueraser.plasma_p)
    x ← ChannelShuffle(p = ueraser.shuffle_p)
    x ← TrivialAugmentWide(x)

Loss ("adversarial augmentation") with R = ``ueraser.repeats`` copies: tile the batch R times
(copy r of image b at row r·B + b), augment every copy independently, and train on

    L = (1/B) Σ_b max_r CE(f(U_r(x_b)), y_b)

R = 1 is plain training on U(x). Variants: ``ueraser_lite`` R = 1 always; ``ueraser`` R for the
first ``ueraser.repeat_epochs`` epochs, then 1; ``ueraser_max`` R in every epoch. The cost of an
epoch with R > 1 is R forward/backward passes per image. Each epoch record carries
``ueraser_repeats`` (the R it used). Defaults: the repo README (200 epochs, SGD 0.1, momentum
0.9, p = 0.5; spec §3.2, §7.12).

JPEG variant (``ueraser.jpeg``): ``append`` = JPEG at ``ueraser.jpeg_quality`` (10) after U (the
UEraser repo); ``prepend`` = JPEG at a quality drawn per image from {10..100} before U (APBench,
used for AR/TAP poisons). Training needs no gradient through it, so it is the plain codec
(:func:`ueperf.augment.squeeze.jpeg_batch`: a host round trip per batch).
"""
from __future__ import annotations

from typing import Any, List, Optional

import torch
import torch.nn.functional as F

from ..augment.policies import channel_shuffle, plasma_brightness, plasma_contrast, trivial_augment
from ..augment.squeeze import jpeg_batch
from ..engine.hooks import TrainHook
from ..errors import require
from ..config import set_default
from .regularize import PixelSpace
from . import COUNTERMEASURES, Countermeasure

SALT_UERASER = 0x0E5A
JPEG_MODES = ("none", "append", "prepend")
PREPEND_QUALITY = (10, 100)  # APBench's random JPEG quality range [code; spec §3.2]
EPOCHS = 200  # total epochs of every variant [code: lafeat/ueraser README; spec §3.2]


def ueraser_policy(x: torch.Tensor, *, plasma_p: float = 0.5, shuffle_p: float = 0.5,
                   generator: Optional[torch.Generator] = None, jpeg: str = "none",
                   jpeg_quality: int = 10) -> torch.Tensor:
    """U(x) for a batch (B, 3, H, W) in [0, 1], every image with its own draws (module docstring),
    with the JPEG variant ``jpeg`` (none | append | prepend). Returns float32 (B, 3, H, W) in [0, 1]."""
    x = x.float()
    if jpeg == "prepend":
        x = jpeg_batch(x, PREPEND_QUALITY, generator=generator)
    x = _policy(x, plasma_p, shuffle_p, generator)
    return jpeg_batch(x, jpeg_quality) if jpeg == "append" else x


def _policy(x: torch.Tensor, plasma_p: float, shuffle_p: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    x = plasma_brightness(x, roughness=(0.3, 0.7), intensity=(0.5, 1.0), p=plasma_p, generator=generator)
    x = plasma_contrast(x, roughness=(0.3, 0.7), p=plasma_p, generator=generator)
    x = channel_shuffle(x, p=shuffle_p, generator=generator)
    return trivial_augment(x, generator=generator)


class UEraserHook(TrainHook):
    """Augments every batch with U (R copies when R > 1) and, when R > 1, replaces the loss by
    the max over the copies."""

    def __init__(self, cfg: Any, variant: str):
        self.c = cfg.ueraser
        self.variant = variant
        self._gen_epoch: Optional[int] = None
        self._r = 1  # copies in the batch now in flight
        self.pixels = PixelSpace(cfg)  # U works on [0,1] pixels, also when the recipe normalises

    def repeats_at(self, epoch: int) -> int:
        """R in epoch ``epoch`` (0-based)."""
        if self.variant == "lite":
            return 1
        if self.variant == "max":
            return int(self.c.repeats)
        return int(self.c.repeats) if epoch < self.c.repeat_epochs else 1

    def on_batch(self, tr, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor):
        gen = self.epoch_stream(tr, SALT_UERASER)  # the draws of epoch e depend on (seed, e, rank) only
        R = self.repeats_at(tr.epoch)
        self._r = R
        if R > 1:
            x = x.repeat(R, 1, 1, 1)
            y = y.repeat(R) if y.dim() == 1 else y.repeat(R, 1)
        out = ueraser_policy(self.pixels.to_pixels(x), plasma_p=self.c.plasma_p, shuffle_p=self.c.shuffle_p,
                             generator=gen, jpeg=self.c.jpeg, jpeg_quality=self.c.jpeg_quality)
        out = self.pixels.from_pixels(out)
        return out.to(x.dtype).contiguous(memory_format=torch.channels_last), y

    def loss(self, tr, logits: torch.Tensor, y: torch.Tensor) -> Optional[torch.Tensor]:
        R = self._r
        if R <= 1:
            return None  # plain cross-entropy on U(x)
        per = F.cross_entropy(logits.float(), y, reduction="none")  # (R·B,)
        return per.view(R, -1).amax(dim=0).mean()

    def on_epoch_end(self, tr, record) -> None:
        record["ueraser_repeats"] = self.repeats_at(tr.epoch)


class _UEraserBase(Countermeasure):
    variant = "standard"
    options = ("ueraser.repeats", "ueraser.repeat_epochs", "ueraser.plasma_p", "ueraser.shuffle_p", "ueraser.jpeg",
               "ueraser.jpeg_quality")
    records = ("ueraser_repeats",)

    def configure(self, cfg, user=frozenset()) -> None:
        set_default(cfg, user, "train.epochs", EPOCHS)
        set_default(cfg, user, "optim.lr", 0.1)        # [code: README]
        set_default(cfg, user, "optim.momentum", 0.9)  # [code: README]

    def check(self, cfg) -> None:
        c = cfg.ueraser
        bad = [(c.repeats >= 1, f"ueraser.repeats={c.repeats}: must be >= 1 (R augmented copies per image; "
                                f"the repo uses 5)"),
               (c.repeat_epochs >= 0, f"ueraser.repeat_epochs={c.repeat_epochs}: must be >= 0 epochs"),
               (0 <= c.plasma_p <= 1, f"ueraser.plasma_p={c.plasma_p}: a probability, must be in [0, 1]"),
               (0 <= c.shuffle_p <= 1, f"ueraser.shuffle_p={c.shuffle_p}: a probability, must be in [0, 1]"),
               (c.jpeg in JPEG_MODES, f"ueraser.jpeg={c.jpeg!r}: expected one of {', '.join(JPEG_MODES)} "
                                      f"(append = the UEraser repo's JPEG-10, prepend = APBench's random quality)"),
               (isinstance(c.jpeg_quality, int) and 1 <= c.jpeg_quality <= 100,
                f"ueraser.jpeg_quality={c.jpeg_quality}: an integer JPEG quality in 1..100 (the repo uses 10)")]
        require(bad)

    def hooks(self, cfg) -> List[TrainHook]:
        return [UEraserHook(cfg, self.variant)]


@COUNTERMEASURES.register("ueraser_lite")
class UEraserLite(_UEraserBase):
    summary = "UEraser-Lite: plasma + channel shuffle + TrivialAugment on every image, R = 1 (spec §3.2)"
    variant = "lite"


@COUNTERMEASURES.register("ueraser")
class UEraser(_UEraserBase):
    summary = "UEraser: max-loss over R = 5 augmented copies for the first 60 epochs, then R = 1 (spec §3.2)"
    variant = "standard"
    replaces_loss = True


@COUNTERMEASURES.register("ueraser_max")
class UEraserMax(_UEraserBase):
    summary = "UEraser-Max: max-loss over R = 5 augmented copies in every epoch (spec §3.2)"
    variant = "max"
    replaces_loss = True
