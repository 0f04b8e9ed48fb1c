"""AEP — adversarial examples as poisons (Fowl et al., NeurIPS 2021; spec §2.5).

A surrogate f* is trained on the CLEAN training set; every training image then gets an
adversarial perturbation against it, crafted with the one PGD (:func:`ueperf.engine.pgd.pgd`):

    targeted (default):  δ_i = argmin_{‖δ‖∞ ≤ ε} E_A L(f*(A(x_i + δ)), π(y_i)),  π(y) = (y+1) mod K
                         → PGD with sign −1 on the targets π(y)
    untargeted:          δ_i = argmax_{‖δ‖∞ ≤ ε} E_A L(f*(A(x_i + δ)), y_i)
                         → PGD with sign +1 on the true labels

A is the differentiable training augmentation (random crop + flip through
:func:`ueperf.kernels.augment.augment_ref`, fresh parameters every step: ``paugment`` [code]).
The published images keep their TRUE labels; a victim that fits them learns the features of
π(y) as "y" and fails on clean test data.

Restarts [code]: run the PGD ``restarts`` times from independent Gaussian starts and keep, per
sample, the δ of lowest objective J = −sign·L(f*(x'), t) measured on the quantised image
x' = round(255·clip(x + δ, 0, 1))/255 that will actually be published (no augmentation).

The batched crafting loop (:func:`ueperf.protections.crafting.craft_against_surrogate`) is shared
with HYPO (:mod:`ueperf.protections.hypo`): the same loop with sign −1 on the true labels.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..augment.eot import eot_augment
from ..errors import ConfigError
from . import PROTECTIONS
from .base import Perturbation, ProtectContext, Protection
from .crafting import INITS, check_against_surrogate, craft_against_surrogate
from .surrogate import get_surrogate, surrogate_details


# Generator salt: AEP's own random stream (ProtectContext.generator).
_SALT_AEP = 0xAE9


# ───────────────────────────────────────────── AEP ──
@dataclass
class AEPConfig:
    eps: float = 8 / 255            # budget, [0,1] pixel units [code: adversarial_poisons --eps 8]
    norm: str = "linf"              # linf [code] | l2 (same loop, normalised-gradient steps) [ours]
    targeted: bool = True           # true: to π(y) = (y+1) mod K [code: forgemaster_targeted]; false: maximise CE(y)
    steps: int = 250                # PGD iterations [code: attackiter]
    tau: float = 0.05               # PGD step as a fraction of ε: step = τ·ε [code: tau]
    restarts: int = 1               # PGD runs, lowest objective kept per sample; 1 for speed [paper: README], 8 [code]
    init: str = "randn"             # start: randn (ε·N(0,1) projected) [code] | uniform | zero
    paugment: bool = True           # EOT over random crop + flip while crafting [code: paugment]
    eot: int = 1                    # augmentation draws averaged per step [code: one draw per step]
    crop_padding: int = 4           # paugment crop, pixels: the victim's RandomCrop(32, 4) of spec §3.0 [ours]
    flip: bool = True               # paugment horizontal flip, p = 0.5 [code]
    batch_size: int = 512           # images crafted together [code: poison batch 512]
    surrogate_model: str = "resnet18"  # surrogate architecture, trained on clean data [code]
    surrogate_width: float = 1.0    # surrogate channel-width multiplier (1 = published) [code]
    surrogate_epochs: int = 40      # clean surrogate training epochs [code: ConservativeStrategy]


@PROTECTIONS.register("aep")
class AEP(Protection):
    """Adversarial poisons: targeted (default) or untargeted PGD against a surrogate trained on clean data.

    Details and sources: the module docstring.
    """

    Config = AEPConfig

    @staticmethod
    def work(cfg: AEPConfig, n: int, num_classes: int) -> dict:
        """Image passes (forward + backward, ueperf.engine.cost): the clean surrogate's training (when
        it is not cached yet) + every image × PGD steps × restarts × EOT draws."""
        passes = n * cfg.surrogate_epochs + n * cfg.steps * cfg.restarts * max(1, cfg.eot)
        return {"passes": passes, "model": cfg.surrogate_model, "width": cfg.surrogate_width,
                "what": f"aep ({cfg.surrogate_epochs}-epoch surrogate unless cached, {cfg.steps} PGD steps)"}

    @staticmethod
    def validate(cfg: AEPConfig) -> None:
        check_against_surrogate("aep", eps=cfg.eps, norm=cfg.norm, steps=cfg.steps, batch_size=cfg.batch_size)
        if not cfg.tau > 0:
            raise ConfigError(f"aep: tau={cfg.tau} must be > 0 (step = tau·eps)")
        if cfg.restarts < 1:
            raise ConfigError(f"aep: restarts={cfg.restarts} must be >= 1 (1 = fast, 8 = the paper's code)")
        if cfg.init not in INITS:
            raise ConfigError(f"aep: init={cfg.init!r}: expected one of {', '.join(INITS)}")
        if cfg.eot < 1:
            raise ConfigError(f"aep: eot={cfg.eot} must be >= 1 (augmentation draws per step)")
        if cfg.crop_padding < 0:
            raise ConfigError(f"aep: crop_padding={cfg.crop_padding} must be >= 0 pixels")

    def generate(self, ctx: ProtectContext) -> Perturbation:
        cfg: AEPConfig = ctx.cfg
        self.validate(cfg)
        K = int(ctx.num_classes)
        if cfg.targeted and K < 2:
            raise ConfigError("aep: targeted=true needs at least 2 classes (π(y) = (y+1) mod K); "
                              "set targeted=false")
        t0 = time.perf_counter()
        model = get_surrogate(ctx, cfg.surrogate_model, cfg.surrogate_epochs, cfg.surrogate_width, "aep")
        t_sur = time.perf_counter() - t0
        if cfg.targeted:
            targets, sign = (lambda y: (y + 1) % K), -1.0   # descend CE of π(y)
        else:
            targets, sign = (lambda y: y), +1.0             # ascend CE of y
        aug = eot_augment(1, crop_padding=cfg.crop_padding, flip=cfg.flip) if cfg.paugment else None
        alpha = cfg.tau * cfg.eps
        delta, stats = craft_against_surrogate(
            ctx, model, targets=targets, sign=sign, eps=cfg.eps, alpha=alpha, steps=cfg.steps,
            norm=cfg.norm, batch_size=cfg.batch_size, restarts=cfg.restarts, init=cfg.init,
            augment=aug, eot=cfg.eot, salt=_SALT_AEP, desc="aep", report_targets=cfg.targeted)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        info = {
            "mode": "targeted" if cfg.targeted else "untargeted",
            "target_map": "(y+1) mod K" if cfg.targeted else "none",
            "step": alpha,
            "surrogate": surrogate_details(model, cfg.surrogate_model, cfg.surrogate_width, cfg.surrogate_epochs),
            "surrogate_time_s": t_sur,
            "craft_time_s": time.perf_counter() - t0 - t_sur,
            # surrogate accuracy (true labels) and targeted success (f = π(y)) on clean vs published images
            "surrogate_acc_clean": stats["acc_clean"], "surrogate_acc_protected": stats["acc_pert"],
            "target_rate_clean": stats["target_clean"], "target_rate_protected": stats["target_pert"],
            "surrogate_loss_clean": stats["loss_clean"], "surrogate_loss_protected": stats["loss_pert"],
            "objective": stats["objective"], "crafted_on_this_rank": stats["crafted"],
        }
        if not cfg.targeted:  # π = identity: "target" rates are the accuracies, not worth a key
            for k in ("target_rate_clean", "target_rate_protected"):
                info.pop(k)
        ctx.log({k: v for k, v in info.items() if isinstance(v, (int, float, str))})
        return Perturbation(ctx.gather(delta) if ctx.gather is not None else delta,
                            granularity="sample", norm=cfg.norm, eps=float(cfg.eps), info=info)
