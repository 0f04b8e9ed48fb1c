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

This module also holds :func:`craft_against_surrogate`, the batched crafting loop shared with
HYPO (:mod:`ueperf.protections.hypo`), which is the same loop with sign −1 on the true labels.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from ..engine.pgd import pgd
from ..errors import ConfigError
from ..kernels.augment import augment_ref, sample_params
from ..kernels.pgd import project
from . import PROTECTIONS
from .base import Perturbation, ProtectContext, Protection, quantise

INITS = ("randn", "uniform", "zero")
PGD_NORMS = ("linf", "l2")

# Generator salt: AEP's own random stream (ProtectContext.generator).
_SALT_AEP = 0xAE9


# ───────────────────────────────────────────── shared pieces ──
def get_surrogate(ctx: ProtectContext, model_name: str, epochs: int, width: float, method: str) -> torch.nn.Module:
    """The clean-data surrogate from ``ctx.surrogate``, frozen, eval mode, channels-last.

    Its parameters are set to ``requires_grad=False``: crafting differentiates w.r.t. δ only,
    and a frozen model lets autograd skip every weight-gradient kernel.
    """
    if ctx.surrogate is None:
        raise ConfigError(f"{method} crafts against a surrogate trained on the clean data, but this "
                          f"ProtectContext has no `surrogate` provider; run it through "
                          f"`python -m ueperf.protect` (which trains and caches one) or pass "
                          f"ProtectContext(surrogate=...)")
    if int(epochs) < 1:
        raise ConfigError(f"{method}: surrogate_epochs={epochs} must be >= 1 (epochs of clean training)")
    if not float(width) > 0:
        raise ConfigError(f"{method}: surrogate_width={width} must be > 0 (channel-width multiplier, 1 = published)")
    model = ctx.surrogate(model_name, int(epochs), width=float(width))
    model = model.to(ctx.device, memory_format=torch.channels_last).eval()
    model.requires_grad_(False)
    return model


def surrogate_details(model: torch.nn.Module, name: str, width: float, epochs: int) -> Dict[str, object]:
    """What the manifest records about the surrogate: the request, plus the provider's record
    (cache key, clean test accuracy, training time, ...) when it attached one."""
    d: Dict[str, object] = {"model": name, "width": float(width), "epochs": int(epochs)}
    extra = getattr(model, "surrogate_info", None)
    if isinstance(extra, dict):
        d.update({k: v for k, v in extra.items() if k not in ("key_doc", "config")})
    return d


def _gaussian_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """'randn' init [code: adversarial_poisons `_initialize_poison`]: ε·N(0, 1) per entry,
    projected onto the ε-ball (and so that x + δ ∈ [0, 1])."""
    d = torch.randn(x.shape, device=x.device, generator=generator) * eps
    return project(d, x, eps=eps, norm=norm)


def _start(init: str, x: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    if init == "randn":
        return _gaussian_start(x, eps, norm, generator)
    if init == "uniform":
        from ..engine.pgd import random_start
        return random_start(x, eps=eps, norm=norm, generator=generator)
    return torch.zeros_like(x)


def crop_flip_eot(padding: int, flip: bool) -> Callable[[torch.Tensor, Optional[torch.Generator]], torch.Tensor]:
    """A differentiable ``augment(x_nhwc, generator) -> NCHW`` for :func:`pgd`'s EOT: random
    crop with ``padding`` zero pixels + horizontal flip, fresh parameters at every call."""
    def aug(x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        n, h, w, _ = x.shape
        p = sample_params(n, h, w, padding=padding, flip=flip, generator=generator, device=x.device)
        return augment_ref(x, p)
    return aug


def craft_against_surrogate(
    ctx: ProtectContext, model: torch.nn.Module, *, targets: Callable[[torch.Tensor], torch.Tensor],
    sign: float, eps: float, alpha: float, steps: int, norm: str, batch_size: int,
    restarts: int = 1, init: str = "zero", augment=None, eot: int = 1, salt: int = 0,
    desc: str = "craft", report_targets: bool = True,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Sample-wise PGD against a fixed model, batched over this rank's shard.

    For each batch of ``batch_size`` shard rows (x: (B, H, W, 3) float in [0, 1], t = targets(y)),
    runs ``restarts`` × ``pgd(model, x, t, start, sign=sign, ...)`` and keeps per sample the δ of
    lowest J = −sign·CE(f(x'), t) on the quantised published image x' (no augmentation).

    Returns (δ of the shard rows, float32 (n_shard, H, W, 3) on ctx.device; stats) where stats
    (fractions of the shard; "pert" = measured on the quantised x') are: ``acc_clean``,
    ``acc_pert`` (f(·) = y), ``target_clean``, ``target_pert`` (f(·) = t), ``loss_clean``,
    ``loss_pert`` (mean CE against y), ``objective`` (mean best J). Host syncs: one per batch
    (running rates for ``ctx.log`` and the progress bar; ``report_targets`` adds the target
    rates, pointless when t = y), none inside the PGD.
    """
    dev = ctx.device
    shard = ctx.shard if ctx.shard is not None else torch.arange(ctx.x.shape[0], device=dev)
    shard = shard.to(dev)
    n = int(shard.shape[0])
    H, W, C = ctx.x.shape[1:]
    out = torch.empty((n, H, W, C), dtype=torch.float32, device=dev)
    ac_dtype = torch.bfloat16 if dev.type == "cuda" else None
    ac = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if ac_dtype is not None else None

    def forward(xn: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if ac is not None:
                with ac():
                    return model(xn.permute(0, 3, 1, 2)).float()
            return model(xn.permute(0, 3, 1, 2)).float()

    # Running sums on the device: [acc_clean, acc_pert, tgt_clean, tgt_pert, loss_clean, loss_pert, J]
    sums = torch.zeros(7, dtype=torch.float64, device=dev)
    bar = None
    n_batches = max(1, math.ceil(n / batch_size))
    if ctx.progress and n:
        from tqdm.auto import tqdm
        bar = tqdm(total=n_batches, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)
    for b, s in enumerate(range(0, n, batch_size)):
        idx = shard[s:s + batch_size]
        xb = ctx.x.index_select(0, idx).float().div_(255)
        yb = ctx.y.index_select(0, idx).to(dev)
        tb = targets(yb)
        best = best_j = None
        for r in range(restarts):
            # One stream per (restart, first sample of the batch): same seed → same bytes.
            g = ctx.generator(salt, r, int(idx[0]))  # int(): one sync per batch, not per step
            d0 = _start(init, xb, eps, norm, g)
            d = pgd(model, xb, tb, d0, eps=eps, alpha=alpha, steps=steps, norm=norm, sign=sign,
                    augment=augment, eot=eot, start="given", generator=g, autocast_dtype=ac_dtype)
            j = -sign * F.cross_entropy(forward(quantise(xb, d)), tb, reduction="none")
            if best is None:
                best, best_j = d, j
            else:
                keep = j < best_j
                best = torch.where(keep.view(-1, 1, 1, 1), d, best)
                best_j = torch.where(keep, j, best_j)
        out[s:s + idx.shape[0]] = best
        lc, lp = forward(xb), forward(quantise(xb, best))
        sums += torch.stack([
            (lc.argmax(1) == yb).sum().double(), (lp.argmax(1) == yb).sum().double(),
            (lc.argmax(1) == tb).sum().double(), (lp.argmax(1) == tb).sum().double(),
            F.cross_entropy(lc, yb, reduction="sum").double(), F.cross_entropy(lp, yb, reduction="sum").double(),
            best_j.double().sum()])
        # One host sync per batch (after `steps` PGD iterations): running rates for the log.
        done = s + idx.shape[0]
        v = (sums / done).tolist()
        entry = {"batch": b + 1, "of": n_batches, "acc_clean": v[0], "acc_protected": v[1]}
        if report_targets:
            entry.update(target_clean=v[2], target_protected=v[3])
        ctx.log(entry)
        if bar is not None:
            bar.set_postfix({k: f"{x:.3f}" for k, x in entry.items() if isinstance(x, float)})
            bar.update(1)
    if bar is not None:
        bar.close()
    keys = ("acc_clean", "acc_pert", "target_clean", "target_pert", "loss_clean", "loss_pert", "objective")
    stats = dict(zip(keys, (sums / max(n, 1)).tolist()))
    stats["crafted"] = n
    return out, stats


# ───────────────────────────────────────────── AEP ──
@dataclass
class AEPConfig:
    eps: float = 8 / 255            # budget, [0,1] pixel units [code: adversarial_poisons --eps 8]
    norm: str = "linf"              # linf [code] | l2 (same loop, normalised-gradient steps) [ours]
    targeted: bool = True           # true: to π(y) = (y+1) mod K [code: forgemaster_targeted]; false: maximise CE(y)
    steps: int = 250                # PGD iterations [code: attackiter]
    tau: float = 0.05               # step = τ·ε [code: tau]
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


def validate_common(method: str, *, eps: float, norm: str, steps: int, batch_size: int) -> None:
    if norm not in PGD_NORMS:
        raise ConfigError(f"{method}: norm={norm!r} is not supported; use one of {', '.join(PGD_NORMS)}")
    if not (eps > 0 and math.isfinite(eps)):
        raise ConfigError(f"{method}: eps={eps!r} must be > 0, in [0,1] pixel units (e.g. 8/255)")
    if norm == "linf" and eps > 1:
        raise ConfigError(f"{method}: eps={eps} is over 1 for an ℓ∞ budget in [0,1] pixel units; "
                          f"did you mean {eps:g}/255?")
    if steps < 0:
        raise ConfigError(f"{method}: steps={steps} must be >= 0 (PGD iterations)")
    if batch_size < 1:
        raise ConfigError(f"{method}: batch_size={batch_size} must be >= 1 (images crafted together)")


@PROTECTIONS.register("aep")
class AEP(Protection):
    """Adversarial poisons against a clean surrogate (module docstring)."""

    Config = AEPConfig

    @staticmethod
    def validate(cfg: AEPConfig) -> None:
        validate_common("aep", eps=cfg.eps, norm=cfg.norm, steps=cfg.steps, batch_size=cfg.batch_size)
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
        aug = crop_flip_eot(cfg.crop_padding, cfg.flip) if cfg.paugment else None
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
