"""The standard training augmentation pipeline: what the trainer does to every batch.

crop (zero padding) + horizontal flip, optionally CG (colour jitter + random grayscale, spec §3.4)
and normalisation, from uint8 NHWC on the device to a float (N, 3, H, W) channels-last batch in
one pass of the fused kernel (:mod:`ueperf.kernels.augment`: Triton on CUDA, its torch reference
elsewhere). Field meanings and units are :class:`ueperf.config.AugmentConfig`'s.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..errors import ConfigError
from ..kernels.augment import AugmentParams, augment, check_jitter, check_prob, norm_consts, sample_params


class Augmenter:
    """Training augmentation built from AugmentConfig's fields (see ``ueperf.config``).

    ``Augmenter(...)(x_u8)`` = :func:`sample_params` + :func:`augment`; colour jitter and random
    grayscale are active only when ``cg`` is True (spec §3.4); normalisation only when
    ``normalize``. Field meanings and units are AugmentConfig's.
    """

    def __init__(
        self,
        crop_padding: int = 4,
        flip: bool = True,
        cg: bool = False,
        jitter_p: float = 0.8,
        jitter: Sequence[float] = (0.4, 0.4, 0.4, 0.1),
        gray_p: float = 0.2,
        normalize: bool = False,
        mean: Sequence[float] = (0.4914, 0.4822, 0.4465),
        std: Sequence[float] = (0.2470, 0.2435, 0.2616),
    ):
        if int(crop_padding) < 0:
            raise ConfigError(f"augment.crop_padding={crop_padding} must be >= 0 pixels")
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
        self.cg = bool(cg)
        self.jitter_p = check_prob("jitter_p", jitter_p)
        self.jitter = check_jitter(jitter)
        self.gray_p = check_prob("gray_p", gray_p)
        self.normalize = bool(normalize)
        norm = norm_consts(mean, std)
        self.mean, self.std = norm
        self._identity = {}  # (n, device) → identity AugmentParams, reused across eval batches

    @classmethod
    def from_config(cls, cfg) -> "Augmenter":
        """From an AugmentConfig (or any object with the same attribute names)."""
        names = ("crop_padding", "flip", "cg", "jitter_p", "jitter", "gray_p", "normalize",
                 "mean", "std")
        return cls(**{k: getattr(cfg, k) for k in names if hasattr(cfg, k)})

    def _norm(self):
        return (self.mean, self.std) if self.normalize else (None, None)

    def sample(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> AugmentParams:
        """Parameters for batch ``x`` (N, H, W, 3), drawn on x's device."""
        N, H, W = x.shape[0], x.shape[1], x.shape[2]
        return sample_params(
            N, H, W, padding=self.crop_padding, flip=self.flip,
            jitter=self.jitter if self.cg else None,
            jitter_p=self.jitter_p if self.cg else 0.0,
            gray_p=self.gray_p if self.cg else 0.0,
            generator=generator, device=x.device,
        )

    def __call__(
        self,
        x: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        out_dtype: torch.dtype = torch.float32,
        params: Optional[AugmentParams] = None,
    ) -> torch.Tensor:
        """Augment a training batch (N, H, W, 3) → (N, 3, H, W) channels-last ``out_dtype``.
        Pass ``params`` to reuse draws (e.g. the same augmentation for x and x + δ)."""
        if params is None:
            params = self.sample(x, generator)
        mean, std = self._norm()
        return augment(x, params, mean=mean, std=std, out_dtype=out_dtype)

    def eval_transform(self, x: torch.Tensor,
                       out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Test batches: /255, this augmenter's normalisation, channels-last; no randomness."""
        key = (int(x.shape[0]), x.device)
        params = self._identity.get(key)
        if params is None:
            params = self._identity[key] = AugmentParams.identity(x.shape[0], device=x.device)
        mean, std = self._norm()
        return augment(x, params, mean=mean, std=std, out_dtype=out_dtype)

    def __repr__(self) -> str:
        return (f"Augmenter(crop_padding={self.crop_padding}, flip={self.flip}, cg={self.cg}, "
                f"jitter_p={self.jitter_p}, jitter={self.jitter}, gray_p={self.gray_p}, "
                f"normalize={self.normalize})")
