"""The one PGD: every protection (EM: sign=-1, AEP/HYPO/REM-inner: +1/-1) and adversarial
training use this function; the step and projection are the fused kernel of
:mod:`ueperf.kernels.pgd`.

    δ ← Π_ε( δ + sign · α · dir(∇_δ E_t L(f(t(x + δ)), y)) ),   x + δ clipped to [0, 1]

dir = sign(·) for L∞, ·/‖·‖₂ per sample for L2. The expectation over augmentations t (EOT) is a
mean of ``eot`` gradient draws. Only δ receives gradients (``torch.autograd.grad``), so the
model's ``.grad`` buffers are untouched and the model can be in any mode the caller chose.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..kernels.pgd import pgd_step, project
from ..precision import autocast

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
AugmentFn = Callable[[torch.Tensor, Optional[torch.Generator]], torch.Tensor]


def random_start(x: torch.Tensor, *, eps: float, norm: str = "linf",
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A random δ in the ε-ball (uniform per entry for L∞, uniform radius×direction for L2),
    projected so that x + δ ∈ [0, 1]."""
    if norm == "linf":
        d = (torch.rand(x.shape, device=x.device, generator=generator) * 2 - 1) * eps
    elif norm == "l2":
        d = torch.randn(x.shape, device=x.device, generator=generator)
        n = d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        r = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, generator=generator)
        d = d / n * r * eps
    else:
        raise ValueError(f"random_start: norm {norm!r} (linf or l2)")
    return project(d.float(), x.float(), eps=eps, norm=norm)


def pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, delta: Optional[torch.Tensor] = None, *,
        eps: float, alpha: float, steps: int, norm: str = "linf", sign: float = -1.0,
        loss_fn: Optional[LossFn] = None, augment: Optional[AugmentFn] = None, eot: int = 1,
        start: str = "given", generator: Optional[torch.Generator] = None,
        autocast_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Run ``steps`` PGD iterations and return the new δ (float32, same shape as x).

    x:      (B, H, W, 3) float in [0, 1], NHWC (the model sees the channels-last NCHW view).
    y:      (B,) int64 targets of ``loss_fn`` (true labels for EM/HYPO, π(y) for targeted AEP).
    delta:  starting δ (B, H, W, 3), or None with ``start="zero"|"random"``.
    sign:   -1 minimises the loss (error-minimising noise, targeted attacks), +1 maximises it
            (untargeted adversarial examples, adversarial training).
    augment: optional differentiable ``augment(x_nhwc, generator) -> NCHW`` used for EOT; without
            it the model sees ``x + δ`` as is.
    """
    loss_fn = loss_fn or (lambda logits, t: F.cross_entropy(logits.float(), t))
    x = x.float()
    if delta is None or start != "given":
        if start == "random":
            delta = random_start(x, eps=eps, norm=norm, generator=generator)
        elif start in ("zero", "given"):
            delta = torch.zeros_like(x)
        else:
            raise ValueError(f"pgd: start={start!r} (given, zero, random)")
    delta = delta.detach().float().contiguous()
    ac = autocast(x.device, autocast_dtype)
    for _ in range(steps):
        d = delta.requires_grad_(True)
        grad = None
        for _e in range(max(1, eot)):
            xa = x + d
            inp = augment(xa, generator) if augment is not None else xa.permute(0, 3, 1, 2)
            with ac:
                loss = loss_fn(model(inp), y)
            g, = torch.autograd.grad(loss, d)
            grad = g if grad is None else grad + g
        delta = pgd_step(d.detach(), grad, x, alpha=alpha, eps=eps, norm=norm, sign=sign)
    return delta.detach()
