"""Expectation over transformation: differentiable augmentation for the one PGD.

A protection that must survive the victim's augmentation crafts against E_t L(f(t(x + δ)), y)
(spec §2.2 REM, §2.5 AEP's ``paugment``, §2.10 BAIT's ``outer_eot``, §2.12 the -T variants). The
one PGD (:func:`ueperf.engine.pgd.pgd`) takes an ``augment(x, generator)`` callable; this module
makes the callables:

    x (B, H, W, 3) float in [0, 1]  ↦  t_1(x) ‖ … ‖ t_J(x)   (J·B, 3, H, W) channels-last

with J = ``samples`` independent draws of random crop (``crop_padding`` px of zero padding) +
horizontal flip, and with ``cg`` the CG colour jitter + grayscale of spec §3.4. Draw j occupies
rows [jB, (j+1)B), so the J draws are folded into one batch (one forward of J·B images instead of
J forwards of B); pair it with a loss that repeats the targets J times
(:func:`ueperf.protections.crafting.folded_ce`). Through :func:`ueperf.kernels.augment.augment_ref`,
so gradients reach x.

``global_batch`` / ``rows`` make the draws independent of how a batch is sharded across ranks:
the parameters are drawn for all ``samples × global_batch`` rows of the GLOBAL mini-batch (the
same generator use on every rank) and each rank applies the rows of its own samples (``rows``:
their positions in the global batch).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..config import AugmentConfig
from ..kernels.augment import augment_ref, sample_params

CG = AugmentConfig()  # the CG distribution of spec §3.4: jitter (0.4, 0.4, 0.4, 0.1) w.p. 0.8, gray w.p. 0.2

Augment = Callable[[torch.Tensor, Optional[torch.Generator]], torch.Tensor]


def eot_augment(samples: int = 1, *, cg: bool = False, crop_padding: int = 4, flip: bool = True,
                global_batch: Optional[int] = None, rows: Optional[torch.Tensor] = None) -> Augment:
    """The EOT augmentation of the module docstring: ``fn(x, generator)``."""
    J = int(samples)
    sel = None
    if rows is not None:  # the J draws of this rank's rows inside the J·global_batch draws
        sel = (torch.arange(J, device=rows.device).view(-1, 1) * int(global_batch) + rows.view(1, -1)).flatten()

    def fn(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        n = J * (int(global_batch) if global_batch is not None else x.shape[0])
        params = sample_params(n, x.shape[1], x.shape[2], padding=crop_padding, flip=flip,
                               jitter=CG.jitter if cg else None, jitter_p=CG.jitter_p if cg else 0.0,
                               gray_p=CG.gray_p if cg else 0.0, generator=generator, device=x.device)
        xr = x.repeat(J, 1, 1, 1) if J > 1 else x
        return augment_ref(xr, params if sel is None else params.index(sel))

    return fn
