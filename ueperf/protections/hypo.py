"""HYPO — hypocritical perturbations (Tao et al., NeurIPS 2021; spec §2.6).

Error-minimising noise against a FIXED surrogate f* trained on the clean training set:

    δ_i = argmin_{‖δ‖ ≤ ε} L(f*(x_i + δ), y_i)

i.e. the one PGD (:func:`ueperf.engine.pgd.pgd`) with sign −1 on the true labels, from δ = 0,
no augmentation [code: APBench hypo_poisons.py]. The samples are made "too easy" for a
well-trained model, so a victim trained on them fits the perturbation instead of the image.

Budgets (``preset`` for ℓ∞, ``norm="l2"`` for the Delusive-Adversary variant):

======================  ========  =============  =====================================
setting                 ε         step           source
======================  ========  =============  =====================================
preset=eps8 (default)   8/255     0.8/255        [code: APBench, ISS README]
preset=eps16            16/255    1.6/255        [code: APBench README]; spec §2.6 sensitivity
norm=l2                 0.5       ε/5            [code: TLMichael/Delusive-Adversary]
======================  ========  =============  =====================================

``eps`` / ``step`` left at 0 take the values of this table; set either to override it (an ℓ∞
step left at 0 is ε/10, so ``--set eps=12/255`` steps 1.2/255). 100 steps everywhere [code].
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Tuple

import torch

from ..errors import ConfigError
from . import PROTECTIONS
from .base import Perturbation, ProtectContext, Protection
from .crafting import check_against_surrogate, craft_against_surrogate
from .surrogate import get_surrogate, surrogate_details

_SALT_HYPO = 0x4790  # HYPO's random stream (ProtectContext.generator); unused by zero-start PGD

# ℓ∞ presets: name → (ε, step) in [0,1] pixel units (table in the module docstring).
LINF_PRESETS = {"eps8": (8 / 255, 0.8 / 255), "eps16": (16 / 255, 1.6 / 255)}
L2_EPS = 0.5          # Delusive-Adversary's ℓ2 budget [code]
L2_STEP_FRACTION = 0.2  # step = ε/5 [code: Delusive-Adversary poison.py]
LINF_STEP_FRACTION = 0.1  # step = ε/10: both presets' ratio (0.8/8, 1.6/16) [code]


@dataclass
class HYPOConfig:
    preset: str = "eps8"            # ℓ∞ budget: eps8 (8/255, step 0.8/255) | eps16 (16/255, 1.6/255) [code: APBench]
    eps: float = 0.0                # budget, [0,1] pixel units; 0 = the preset's (ℓ∞) or 0.5 (ℓ2) [code]
    norm: str = "linf"              # norm of the ε-ball: linf [code: APBench] | l2 (ε 0.5, step ε/5) [code: Delusive-Adversary]
    step: float = 0.0               # PGD step, [0,1] pixel units; 0 = ε/10 (ℓ∞) [code] or ε/5 (ℓ2) [code]
    steps: int = 100                # PGD iterations [code: APBench, Delusive-Adversary]
    batch_size: int = 512           # images crafted together [code: APBench]
    surrogate_model: str = "resnet18"  # clean surrogate architecture [code: APBench]; Delusive-Adversary used vgg16
    surrogate_width: float = 1.0    # surrogate channel-width multiplier (1 = published) [code]
    surrogate_epochs: int = 60      # clean surrogate training epochs: the NT recipe of spec §3.0 [ours]

    def budget(self) -> Tuple[float, float]:
        """The resolved (ε, step) in [0,1] pixel units (module docstring table); validates."""
        if self.norm not in ("linf", "l2"):
            raise ConfigError(f"hypo: norm={self.norm!r} is not supported; use linf or l2")
        if self.preset not in LINF_PRESETS:
            raise ConfigError(f"hypo: preset={self.preset!r}: expected one of {', '.join(LINF_PRESETS)} "
                              f"(ℓ∞ budgets 8/255 and 16/255); for the ℓ2 variant set norm=l2")
        if self.eps < 0 or self.step < 0:
            raise ConfigError(f"hypo: eps={self.eps} and step={self.step} must be >= 0 "
                              f"(0 = the preset's value)")
        if self.norm == "l2":
            if self.preset != "eps8":
                raise ConfigError(f"hypo: preset={self.preset!r} is an ℓ∞ budget but norm=l2; set "
                                  f"eps=... for an ℓ2 budget (default 0.5) or norm=linf")
            eps = self.eps or L2_EPS
            return eps, self.step or L2_STEP_FRACTION * eps
        p_eps, p_step = LINF_PRESETS[self.preset]
        if self.eps:  # an explicit ε: its step scales with it unless given too
            return self.eps, self.step or LINF_STEP_FRACTION * self.eps
        return p_eps, self.step or p_step


@PROTECTIONS.register("hypo")
class HYPO(Protection):
    """Hypocritical (error-minimising against a clean surrogate) perturbations."""

    Config = HYPOConfig

    @staticmethod
    def work(cfg: HYPOConfig, n: int, num_classes: int) -> dict:
        """Image passes (forward + backward, ueperf.engine.cost): the clean surrogate's training (when
        it is not cached yet) + every image × PGD steps."""
        return {"passes": n * cfg.surrogate_epochs + n * cfg.steps, "model": cfg.surrogate_model,
                "width": cfg.surrogate_width,
                "what": f"hypo ({cfg.surrogate_epochs}-epoch surrogate unless cached, {cfg.steps} PGD steps)"}

    def generate(self, ctx: ProtectContext) -> Perturbation:
        cfg: HYPOConfig = ctx.cfg
        eps, step = cfg.budget()
        check_against_surrogate("hypo", eps=eps, norm=cfg.norm, steps=cfg.steps, batch_size=cfg.batch_size)
        t0 = time.perf_counter()
        model = get_surrogate(ctx, cfg.surrogate_model, cfg.surrogate_epochs, cfg.surrogate_width, "hypo")
        t_sur = time.perf_counter() - t0
        delta, stats = craft_against_surrogate(
            ctx, model, targets=lambda y: y, sign=-1.0, eps=eps, alpha=step, steps=cfg.steps,
            norm=cfg.norm, batch_size=cfg.batch_size, restarts=1, init="zero", augment=None,
            salt=_SALT_HYPO, desc="hypo", report_targets=False)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        info = {
            "preset": cfg.preset if cfg.norm == "linf" else "l2",
            "eps": eps, "step": step,
            "surrogate": surrogate_details(model, cfg.surrogate_model, cfg.surrogate_width, cfg.surrogate_epochs),
            "surrogate_time_s": t_sur,
            "craft_time_s": time.perf_counter() - t0 - t_sur,
            # the surrogate on clean vs published training images: HYPO makes them easier
            "surrogate_acc_clean": stats["acc_clean"], "surrogate_acc_protected": stats["acc_pert"],
            "surrogate_loss_clean": stats["loss_clean"], "surrogate_loss_protected": stats["loss_pert"],
            "crafted_on_this_rank": stats["crafted"],
        }
        ctx.log({k: v for k, v in info.items() if isinstance(v, (int, float, str))})
        return Perturbation(ctx.gather(delta) if ctx.gather is not None else delta,
                            granularity="sample", norm=cfg.norm, eps=float(eps), info=info)
