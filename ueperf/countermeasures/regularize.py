"""Counter-overfitting augmentations (seed (a)'s baselines, spec §3.4): ``cutout``, ``mixup``,
``cutmix``, ``randaugment``, ``trivialaugment``, ``autoaugment``, ``gaussian``.

Each acts on the float training batch after crop/flip (and CG when on), through the ops of
:mod:`ueperf.augment.policies`, with per-epoch random streams (``TrainHook.epoch_stream``: a resumed run
repeats them):

==============  ===========================================================================
cutout          a zeroed L×L square per image, L = ``reg.cutout_size`` (DeVries & Taylor)
mixup           x' = λx + (1−λ)x[π], soft labels, λ ~ Beta(α, α) per batch, α = ``reg.mixup_alpha``
cutmix          one box of x[π] pasted per batch with probability ``reg.cutmix_p``, labels by area
randaugment     ``reg.randaugment_n`` ops per image at magnitude ``reg.randaugment_m`` (of 0-30)
trivialaugment  TrivialAugmentWide: one op per image, random magnitude
autoaugment     AutoAugment's CIFAR-10 policy: one of 25 learned sub-policies (two ops) per image
gaussian        Gaussian filter of every training image, σ = ``reg.blur_sigma``, k = ``reg.blur_kernel``
==============  ===========================================================================

``mixup`` and ``cutmix`` give soft labels (B, K) and replace the loss by the soft-label
cross-entropy ``−(1/B) Σ_b Σ_k y'_bk log softmax(f(x'_b))_k``; the trainer then records no
training accuracy (it is undefined for mixed labels). Dropout 0.5 and weight decay, the other
baselines of seed (a), are plain config (``model.dropout``, ``optim.weight_decay``).
"""
from __future__ import annotations

import math
from typing import Any, List, Optional

import torch
import torch.nn.functional as F

from ..augment.policies import (NUM_BINS, auto_augment, cutmix, cutout, gaussian_blur, mixup, rand_augment,
                                trivial_augment)
from ..engine.hooks import TrainHook
from ..errors import require
from ..kernels.augment import norm_consts
from . import COUNTERMEASURES, Countermeasure

SALTS = {"cutout": 0xC07, "mixup": 0x31C, "cutmix": 0xC31, "randaugment": 0x2A4, "trivialaugment": 0x7A4,
         "autoaugment": 0xA7A}


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``−Σ_k t_k log softmax(z)_k``; logits (B, K), target (B, K) rows
    summing to 1. Computed in float32."""
    return -(target.float() * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


class PixelSpace:
    """Pixel-space ops (posterize, solarize, plasma, ...) under ``augment.normalize``: the batch
    arrives normalised, ``(x − mean) / std`` per channel; :meth:`to_pixels` takes it back to
    [0, 1] (clamped: crop, flip and CG keep pixels in [0, 1], so the clamp only absorbs float
    rounding), the op runs there, and :meth:`from_pixels` normalises its output again. Without
    normalisation both are the identity. So an op sees the same pixels whether or not the recipe
    normalises (the fast victim does), and the model sees them as the recipe expects."""

    def __init__(self, cfg: Any):
        a = cfg.augment
        self.norm = norm_consts(a.mean, a.std) if a.normalize else None

    def _consts(self, x: torch.Tensor):
        mean, std = self.norm
        shape = (1, -1, 1, 1)  # NCHW (a channels-last view)
        return (torch.tensor(mean, dtype=torch.float32, device=x.device).view(shape),
                torch.tensor(std, dtype=torch.float32, device=x.device).view(shape))

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is None:
            return x
        mean, std = self._consts(x)
        return (x.float() * std + mean).clamp_(0.0, 1.0)

    def from_pixels(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is None:
            return x
        mean, std = self._consts(x)
        return (x.float() - mean) / std


class BatchAugmentHook(TrainHook):
    """Applies ``fn(hook, trainer, x, y, generator) -> (x, y)`` to every training batch; a
    ``pixel_space`` op runs on [0, 1] pixels also when the recipe normalises (:class:`PixelSpace`)."""

    def __init__(self, cfg: Any, name: str, fn, soft_labels: bool = False, pixel_space: bool = False):
        self.cfg = cfg
        self.name = name
        self.fn = fn
        self.soft_labels = soft_labels
        self.pixels = PixelSpace(cfg) if pixel_space else None

    def on_batch(self, tr, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor):
        gen = self.epoch_stream(tr, SALTS[self.name]) if self.name in SALTS else None  # (seed, epoch, rank)
        xin = self.pixels.to_pixels(x) if self.pixels is not None else x
        out, y = self.fn(self, tr, xin, y, gen)
        if self.pixels is not None:
            out = self.pixels.from_pixels(out)
        return out.to(x.dtype).contiguous(memory_format=torch.channels_last), y

    def loss(self, tr, logits: torch.Tensor, y: torch.Tensor) -> Optional[torch.Tensor]:
        if self.soft_labels and y.dim() == 2:
            return soft_cross_entropy(logits, y)
        return None


def _num_classes(tr) -> int:
    return int(tr.num_classes)


class _RegBase(Countermeasure):
    pixel_space = False  # True: the op works on [0,1] pixels (run there under augment.normalize: PixelSpace)
    soft_labels = False

    def _checks(self, cfg) -> list:
        return []

    def check(self, cfg) -> None:
        require(self._checks(cfg))

    @staticmethod
    def apply(hook, tr, x, y, gen):
        raise NotImplementedError

    def hooks(self, cfg) -> List[TrainHook]:
        return [BatchAugmentHook(cfg, self.name, type(self).apply, soft_labels=self.soft_labels,
                                 pixel_space=self.pixel_space)]


@COUNTERMEASURES.register("cutout")
class Cutout(_RegBase):
    summary = "Cutout: a zeroed reg.cutout_size² square per training image (spec §3.4)"
    options = ("reg.cutout_size",)

    # With augment.normalize the hole is 0 in normalised units, i.e. the dataset mean colour —
    # what DeVries & Taylor's code does (cutout after normalisation); so normalisation is allowed.
    def _checks(self, cfg):
        return [(cfg.reg.cutout_size >= 1, f"reg.cutout_size={cfg.reg.cutout_size}: must be >= 1 pixel")]

    @staticmethod
    def apply(hook, tr, x, y, gen):
        return cutout(x, hook.cfg.reg.cutout_size, generator=gen), y


def _alpha_ok(v: float) -> bool:
    return math.isfinite(v) and v > 0


@COUNTERMEASURES.register("mixup")
class Mixup(_RegBase):
    summary = "Mixup: convex pairs of images and labels, λ ~ Beta(1, 1) (spec §3.4)"
    options = ("reg.mixup_alpha",)
    replaces_loss = True
    soft_labels = True

    def _checks(self, cfg):
        return [(_alpha_ok(cfg.reg.mixup_alpha), f"reg.mixup_alpha={cfg.reg.mixup_alpha}: must be > 0 "
                                                 f"(Beta(α, α) shape)")]

    @staticmethod
    def apply(hook, tr, x, y, gen):
        return mixup(x, y, _num_classes(tr), hook.cfg.reg.mixup_alpha, generator=gen)


@COUNTERMEASURES.register("cutmix")
class CutMix(_RegBase):
    summary = "CutMix: a box from another image pasted per batch (p 0.5), labels by area (spec §3.4)"
    options = ("reg.cutmix_alpha", "reg.cutmix_p")
    replaces_loss = True
    soft_labels = True

    def _checks(self, cfg):
        r = cfg.reg
        return [(_alpha_ok(r.cutmix_alpha), f"reg.cutmix_alpha={r.cutmix_alpha}: must be > 0 (Beta(α, α) shape)"),
                (0 <= r.cutmix_p <= 1, f"reg.cutmix_p={r.cutmix_p}: a probability, must be in [0, 1]")]

    @staticmethod
    def apply(hook, tr, x, y, gen):
        r = hook.cfg.reg
        return cutmix(x, y, _num_classes(tr), r.cutmix_alpha, p=r.cutmix_p, generator=gen)


@COUNTERMEASURES.register("randaugment")
class RandAugment(_RegBase):
    summary = "RandAugment: reg.randaugment_n = 2 ops per image at magnitude reg.randaugment_m = 9 (spec §3.4)"
    options = ("reg.randaugment_n", "reg.randaugment_m")
    pixel_space = True

    def _checks(self, cfg):
        r = cfg.reg
        return [(r.randaugment_n >= 1, f"reg.randaugment_n={r.randaugment_n}: must be >= 1 op per image"),
                (0 <= r.randaugment_m < NUM_BINS,
                 f"reg.randaugment_m={r.randaugment_m}: magnitude bin must be in 0..{NUM_BINS - 1}")]

    @staticmethod
    def apply(hook, tr, x, y, gen):
        r = hook.cfg.reg
        return rand_augment(x, n=r.randaugment_n, m=r.randaugment_m, generator=gen), y


@COUNTERMEASURES.register("trivialaugment")
class TrivialAugment(_RegBase):
    summary = "TrivialAugmentWide: one random op at a random magnitude per image (spec §3.4)"
    pixel_space = True

    @staticmethod
    def apply(hook, tr, x, y, gen):
        return trivial_augment(x, generator=gen), y


@COUNTERMEASURES.register("autoaugment")
class AutoAugment(_RegBase):
    summary = "AutoAugment, CIFAR-10 policy: one of 25 learned two-op sub-policies per image (spec §3.4)"
    pixel_space = True

    @staticmethod
    def apply(hook, tr, x, y, gen):
        return auto_augment(x, generator=gen), y


@COUNTERMEASURES.register("gaussian")
class Gaussian(_RegBase):
    summary = "Gaussian filter of every training image, σ reg.blur_sigma = 1 px, 3×3 (spec §3.4)"
    options = ("reg.blur_sigma", "reg.blur_kernel")

    # A normalised blur commutes with per-channel normalisation, so augment.normalize is allowed.
    def _checks(self, cfg):
        r = cfg.reg
        return [(math.isfinite(r.blur_sigma) and r.blur_sigma > 0, f"reg.blur_sigma={r.blur_sigma}: must be > 0 pixels"),
                (r.blur_kernel >= 1 and r.blur_kernel % 2 == 1,
                 f"reg.blur_kernel={r.blur_kernel}: must be an odd number of pixels (e.g. 3)")]

    @staticmethod
    def apply(hook, tr, x, y, gen):
        r = hook.cfg.reg
        return gaussian_blur(x, r.blur_sigma, r.blur_kernel), y
