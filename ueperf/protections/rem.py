"""REM — robust error-minimising noise (Fu et al., ICLR 2022), spec §2.2, and REM-T (§2.12).

Objective (sample-wise, defensive radius ρ_u, adversarial radius ρ_a, augmentations t ∼ T)::

    min_θ Σ_i  min_{‖δ^u_i‖ ≤ ρ_u}  E_t  max_{‖δ^a_i‖ ≤ ρ_a}  L(f_θ(t(x_i + δ^u_i) + δ^a_i), y_i)

so the noise stays error-minimising even for an exploiter who trains adversarially.

Algorithm (S = ``iterations`` steps, batch ``batch_size``):

1. draw a batch; lr = 0.1 · 0.1^⌊s / 2000⌋;
2. **defensive noise** for the batch: the one PGD with ``sign=-1``, random start in the ρ_u ball,
   ``steps`` = 10 iterations of step ``alpha`` = 1.6/255, where the gradient at δ^u is that of the
   first-order surrogate: for each of J = ``eot`` draws t_j, x_d = t_j(clip(x + δ^u)), an inner
   adversarial point x_a = x_d + δ^a with δ^a = PGD_{ρ_a}(x_d) (the one PGD with ``sign=+1``,
   ``adv_steps`` = 10 iterations of ``adv_alpha`` = 0.8/255, random start, model frozen), and

       ∇_{δ^u} Σ_j L(f(x_d + sg(δ^a)), y)        (sg = stop-gradient: δ^a held fixed),

   i.e. g = ∇_{x_a} L at the adversarial point back-propagated through t_j to δ^u — the
   repository's ⟨x_d, g⟩ trick. It is the one PGD with an ``augment`` callable that applies
   t_j and adds the detached adversarial offset. The J draws are folded into the batch (one
   forward of J·B images, the inner attack included), which keeps a GPU busy;
3. one **adversarial-training** SGD step of the surrogate on t(x + δ^u) + δ^a (crop + flip, a
   fresh PGD_{ρ_a} with the model in eval mode, then the step in train mode);
4. after S steps, **regenerate** δ^u for every sample (this rank's ``ctx.shard``) with the final
   surrogate, same PGD, in batches of ``regen_batch_size``; ``ctx.gather`` returns the full δ.

The per-step δ^u of 2. only feeds the surrogate's training: every published δ comes from the
final regeneration, so it is not stored (the repository keeps an int8 copy that it then overwrites).

**REM-T** (``eot_cg=True``): the EOT distribution T adds the CG colour jitter and grayscale of
spec §3.4 to crop + flip (in steps 2 and 4); the surrogate's training step keeps crop + flip.

Several processes: the S steps run identically on every rank (same seed, same batches; each rank
would otherwise need every other rank's batch noise), after which every rank loads rank 0's
weights (``ctx.broadcast``); only the final regeneration is sharded. Multi-GPU speed-up therefore
applies to step 4 only.

Shapes and units: δ is float32 (N, H, W, 3) in [0, 1] pixel units on ``ctx.device``; images
stay uint8 on the device. On CUDA the model runs in bf16 autocast and channels-last memory.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ..augment.eot import eot_augment
from ..engine.pgd import pgd
from ..errors import ConfigError
from ..precision import autocast, autocast_dtype
from . import PROTECTIONS
from .base import Perturbation, ProtectContext, Protection, to_model
from .crafting import (BatchStream, check_common, folded_ce, fresh_model, progress_bar, sgd_step, sync_model,
                       to_float)

SALT_INIT, SALT_BATCHES, SALT_NOISE, SALT_TRAIN_AUG = 0x2E0, 0x2E1, 0x2E2, 0x2E3


@dataclass
class REMConfig:
    eps: float = 8 / 255            # ρ_u, defensive budget, [0,1] pixel units [code: gen_rem.sh rem8-4]
    norm: str = "linf"              # linf | l2 (both radii use it) [code: linf]
    model: str = "resnet18"         # surrogate architecture, CIFAR variant [code]
    width: float = 1.0              # surrogate channel-width multiplier (1 = published) [ours]
    iterations: int = 5000          # S: noise-update + adversarial-training steps [code]
    batch_size: int = 128           # images per step [code]
    regen_batch_size: int = 512     # images per batch of the final regeneration [ours: per-sample math is batch-independent]
    lr: float = 0.1                 # surrogate SGD learning rate at step 0 [code]
    lr_decay: float = 0.1           # lr factor every lr_decay_every steps [code]
    lr_decay_every: int = 2000      # surrogate steps between lr decays [code]
    momentum: float = 0.9           # surrogate SGD momentum [code]
    weight_decay: float = 5e-4      # surrogate SGD weight decay [code]
    grad_clip: float = 0.0          # surrogate global grad-norm clip (0 = off) [code: none]
    steps: int = 10                 # defensive PGD iterations [code]
    alpha: float = 1.6 / 255        # defensive PGD step, [0,1] pixel units [code]
    adv_eps: float = 4 / 255        # ρ_a, adversarial radius used while crafting [code: rem8-4]
    adv_steps: int = 10             # inner adversarial PGD iterations [code]
    adv_alpha: float = 0.8 / 255    # inner adversarial PGD step [code]
    eot: int = 5                    # J: EOT draws of t per defensive step [code: --samp-num 5]
    eot_cg: bool = False            # REM-T: CG jitter + grayscale inside the EOT [paper (a) §2.12]
    crop_padding: int = 4           # t: random-crop zero padding, px [code: CIFAR transform]
    log_every: int = 100            # steps between progress/log updates (host syncs) [ours]


def _check(cfg: REMConfig) -> None:
    check_common(cfg, "rem")
    if cfg.steps < 1:
        raise ConfigError(f"rem.steps={cfg.steps}: the defensive PGD needs >= 1 iteration")
    if not (cfg.adv_eps >= 0 and math.isfinite(cfg.adv_eps)) or cfg.adv_steps < 0 or not cfg.adv_alpha >= 0:
        raise ConfigError(f"rem: adv_eps={cfg.adv_eps}, adv_steps={cfg.adv_steps}, adv_alpha={cfg.adv_alpha} "
                          f"must be >= 0 (adv_eps = 0 or adv_steps = 0 turns REM into EM with EOT)")
    for f in ("iterations", "crop_padding"):
        if getattr(cfg, f) < 0:
            raise ConfigError(f"rem.{f}={getattr(cfg, f)}: must be >= 0")
    for f in ("regen_batch_size", "lr_decay_every", "log_every"):
        if getattr(cfg, f) < 1:
            raise ConfigError(f"rem.{f}={getattr(cfg, f)}: must be >= 1")


def _adversarial(model, x_nhwc: torch.Tensor, y: torch.Tensor, cfg: REMConfig, generator, ac) -> torch.Tensor:
    """δ^a = PGD_{ρ_a}(x) (sign +1, random start) on x (B, H, W, 3) in [0, 1]; model frozen."""
    if cfg.adv_steps == 0 or cfg.adv_eps == 0:
        return torch.zeros_like(x_nhwc)
    return pgd(model, x_nhwc, y, eps=cfg.adv_eps, alpha=cfg.adv_alpha, steps=cfg.adv_steps, norm=cfg.norm,
               sign=+1.0, start="random", generator=generator, autocast_dtype=ac)


def robust_augment(model, y: torch.Tensor, cfg: REMConfig, ac):
    """The REM gradient as the one PGD's ``augment``: x + δ^u ↦ t(x + δ^u) + sg(δ^a(t(x + δ^u))),
    J draws folded into the batch ((J·B, 3, H, W) channels-last); pair with ``folded_ce(J)``."""
    t = eot_augment(cfg.eot, cg=cfg.eot_cg, crop_padding=cfg.crop_padding)
    y_rep = y.repeat(cfg.eot) if cfg.eot > 1 else y

    def fn(x: torch.Tensor, generator=None) -> torch.Tensor:
        xd = t(x, generator)                                     # (J·B, 3, H, W), differentiable in δ^u
        da = _adversarial(model, xd.detach().permute(0, 2, 3, 1), y_rep, cfg, generator, ac)
        return xd + to_model(da)                                 # δ^a enters as a constant

    return fn


def defensive_noise(model, x: torch.Tensor, y: torch.Tensor, cfg: REMConfig, generator, ac) -> torch.Tensor:
    """δ^u for a batch x (B, H, W, 3) in [0, 1] (model in eval mode, weights frozen)."""
    return pgd(model, x, y, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps, norm=cfg.norm, sign=-1.0,
               loss_fn=folded_ce(cfg.eot), augment=robust_augment(model, y, cfg, ac), start="random",
               generator=generator, autocast_dtype=ac)


@PROTECTIONS.register("rem")
class REM(Protection):
    """Robust error-minimising noise (sample-wise), optionally with CG inside the EOT (REM-T)."""

    Config = REMConfig

    @staticmethod
    def work(cfg: REMConfig, n: int, num_classes: int) -> dict:
        """Image passes (forward + backward of the surrogate, ueperf.engine.cost): each defensive
        noise is ``steps`` × J EOT draws × (the inner adversarial PGD + 1); S steps of a batch of it
        plus one adversarial-training step, then one regeneration of every image."""
        noise = cfg.steps * cfg.eot * (cfg.adv_steps + 1)
        passes = cfg.iterations * cfg.batch_size * (noise + cfg.adv_steps + 1) + n * noise + n / 3
        return {"passes": passes, "model": cfg.model, "width": cfg.width,
                "what": f"rem ({cfg.iterations} steps + the regeneration)"}

    def generate(self, ctx: ProtectContext) -> Perturbation:
        cfg: REMConfig = ctx.cfg
        _check(cfg)
        t0 = time.perf_counter()
        dev, x_u8, y = ctx.device, ctx.x, ctx.y
        n = x_u8.shape[0]
        ac = autocast_dtype(dev)
        model = fresh_model(cfg.model, cfg.width, ctx, SALT_INIT)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        batches = BatchStream(torch.arange(n, device=dev), cfg.batch_size, ctx.generator(SALT_BATCHES))
        g_noise, g_train = ctx.generator(SALT_NOISE), ctx.generator(SALT_TRAIN_AUG)
        train_t = eot_augment(1, cg=False, crop_padding=cfg.crop_padding)  # the surrogate's crop + flip

        # ── S steps: defensive noise for the batch, then one adversarial-training step ──
        loss_sum = torch.zeros((), device=dev)
        seen, hist = 0, []
        bar = progress_bar(ctx, cfg.iterations, "rem steps")
        for s in range(cfg.iterations):
            lr = cfg.lr * cfg.lr_decay ** (s // cfg.lr_decay_every)
            for gr in opt.param_groups:
                gr["lr"] = lr
            idx = batches.next()
            xb, yb = to_float(x_u8[idx]), y[idx]
            model.eval()
            model.requires_grad_(False)
            du = defensive_noise(model, xb, yb, cfg, g_noise, ac)
            xt = train_t((xb + du).clamp_(0, 1), g_train).permute(0, 2, 3, 1)   # t(x + δ^u), NHWC view
            xa = (xt + _adversarial(model, xt, yb, cfg, g_train, ac)).clamp_(0, 1)
            model.requires_grad_(True)
            model.train()
            loss = sgd_step(model, opt, to_model(xa), yb, cfg.grad_clip, dev)
            loss_sum += loss
            seen += 1
            if (s + 1) % cfg.log_every == 0 or s + 1 == cfg.iterations:
                rec = {"step": s + 1, "lr": lr, "adv_train_loss": float(loss_sum.item()) / seen}
                loss_sum.zero_()
                seen = 0
                hist.append(rec)
                ctx.log(rec)
                if bar is not None:
                    bar.set_postfix(loss=f"{rec['adv_train_loss']:.3f}")
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        sync_model(model, ctx)
        train_s = time.perf_counter() - t0

        # ── final regeneration of δ^u for this rank's samples with the final surrogate ──
        shard = (ctx.shard if ctx.shard is not None else torch.arange(n, device=dev)).to(dev)
        delta = torch.zeros(x_u8.shape, dtype=torch.float32, device=dev)
        model.eval()
        model.requires_grad_(False)
        correct = torch.zeros((), dtype=torch.long, device=dev)  # surrogate on clip(x + δ^u), no t
        bar = progress_bar(ctx, shard.numel(), "rem regenerate")
        for st in range(0, shard.numel(), cfg.regen_batch_size):
            idx = shard[st:st + cfg.regen_batch_size]
            xb, yb = to_float(x_u8[idx]), y[idx]
            d = defensive_noise(model, xb, yb, cfg, g_noise, ac)
            delta.index_copy_(0, idx, d)
            with torch.no_grad(), autocast(dev, ac):
                correct += (model(to_model((xb + d).clamp_(0, 1))).argmax(1) == yb).sum()
            if bar is not None:
                bar.update(idx.numel())
        if bar is not None:
            bar.close()
        surrogate_acc = float(correct.item()) / max(shard.numel(), 1)  # this rank's rows
        if ctx.world_size > 1:
            delta = ctx.gather(delta.index_select(0, shard))
        info = {
            "iterations": cfg.iterations,
            "final_lr": cfg.lr * cfg.lr_decay ** (max(cfg.iterations - 1, 0) // cfg.lr_decay_every),
            "surrogate_acc": surrogate_acc,
            "adv_train_loss": hist[-1]["adv_train_loss"] if hist else None,
            "loss_history": [h["adv_train_loss"] for h in hist],
            "eot": f"crop+flip{'+CG' if cfg.eot_cg else ''} x{cfg.eot}",
            "train_s": train_s,
            "generation_s": time.perf_counter() - t0,
            "surrogate": {"model": cfg.model, "width": cfg.width, "num_classes": ctx.num_classes,
                          "training": f"from scratch, adversarial training (rho_a={cfg.adv_eps:.5f}) on the "
                                      f"defended batches, jointly with the noise (REM)",
                          "sgd_steps": cfg.iterations,
                          "optimizer": f"SGD lr {cfg.lr} x{cfg.lr_decay}/{cfg.lr_decay_every} steps, "
                                       f"momentum {cfg.momentum} wd {cfg.weight_decay}"},
        }
        return Perturbation(delta=delta, granularity="sample", norm=cfg.norm, eps=float(cfg.eps), info=info)
