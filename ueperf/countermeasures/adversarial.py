"""``at``: PGD adversarial training (Madry et al.; spec §3.1).

    min_θ E_(x,y) max_{‖η‖ ≤ ρ_a} L(f_θ(x + η), y)

The inner max is the engine's one PGD (``sign=+1``, random start, the fused step/projection
kernel) on each augmented batch, with the model in eval mode (BN statistics are not updated by
the attack's forwards) and only η receiving gradients; the outer step then trains on x + η.
Defaults are seed (a)'s setting, "following REM": ρ_a = 4/255, 10 steps of 0.8/255 (spec §3.1;
the EM/ISS repos use 8/255, 10 × 2/255: ``--set at.eps=8/255 at.alpha=2/255``).
Cost: (steps + 1) forward/backward passes per batch instead of 1.
"""
from __future__ import annotations

from typing import Any, List

import torch

from ..engine.hooks import TrainHook
from ..engine.pgd import pgd
from ..errors import ConfigError
from . import COUNTERMEASURES, Countermeasure

SALT_AT = 0xA7


class AdversarialHook(TrainHook):
    def __init__(self, cfg: Any):
        self.c = cfg.at

    def on_batch(self, tr, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor):
        gen = self.epoch_stream(tr, SALT_AT)  # the random starts of epoch e depend on (seed, e, rank) only
        model = tr.model
        was = model.training
        model.eval()
        xn = x.float().permute(0, 2, 3, 1)  # NCHW channels-last → NHWC view, the PGD's layout
        try:
            delta = pgd(model, xn, y, eps=self.c.eps, alpha=self.c.alpha, steps=self.c.steps, norm=self.c.norm,
                        sign=+1.0, start="random", generator=gen, autocast_dtype=tr.autocast_dtype)
        finally:
            model.train(was)
        return (xn + delta).clamp_(0, 1).permute(0, 3, 1, 2).to(x.dtype), y


@COUNTERMEASURES.register("at")
class AT(Countermeasure):
    summary = "PGD adversarial training, ρ 4/255, 10 × 0.8/255 steps (spec §3.1)"
    options = ("at.eps", "at.alpha", "at.steps", "at.norm")

    def check(self, cfg) -> None:
        c = cfg.at
        if c.norm not in ("linf", "l2"):
            raise ConfigError(f"at.norm={c.norm!r}: expected linf or l2")
        if not (c.eps > 0 and c.alpha > 0 and c.steps >= 1):
            raise ConfigError(f"at.eps={c.eps}, at.alpha={c.alpha}, at.steps={c.steps}: ε and the step "
                              f"must be > 0 ([0,1] pixel units, e.g. 4/255) and steps >= 1")
        if cfg.augment.normalize:
            raise ConfigError("at attacks in [0,1] pixel space; set augment.normalize=false")

    def hooks(self, cfg) -> List[TrainHook]:
        return [AdversarialHook(cfg)]
