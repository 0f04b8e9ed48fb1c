"""EM — error-minimising noise (Huang et al., ICLR 2021), spec §2.1, and its adaptive EM-T (§2.12).

Bi-level min-min over the surrogate θ and the noise δ (ℓ∞ ball of radius ε unless ``norm``)::

    min_θ  Σ_i  min_{‖δ_i‖ ≤ ε}  L(f_θ(clip(x_i + δ_i, 0, 1)), y_i)          (sample-wise)
    min_θ  Σ_i  min_{‖δ_k‖ ≤ ε}  L(f_θ(clip(x_i + δ_{y_i}, 0, 1)), y_i)      (class-wise)

solved by alternation, the surrogate trained from scratch together with the noise:

1. **model step**: M = ``train_steps`` SGD batches (``train_batch_size`` images, lr 0.1, momentum
   0.9, wd 5e-4, grad-norm clip 5) on (x + δ, y), no augmentation, model in train mode;
2. **noise step** (model in eval mode, weights frozen): sample-wise, every training sample (of
   this rank's shard) in batches of ``batch_size``, T = ``steps`` (20) iterations of the one PGD
   with ``sign=-1``, α = 0.8/255; class-wise, one pass over a 20 % subset with T = 1 per batch
   starting from each sample's class noise, then δ_k ← Π_ε(mean of the updated noises of class k);
3. **stop test**: surrogate accuracy on the whole perturbed training set (class-wise: the subset),
   model in eval mode; stop when it exceeds 1 − ``stop_error`` (99 %) or after ``max_rounds``.

**EM-T** (``eot_cg=True``): the noise objective becomes E_{t ∼ crop∘flip∘CG} L(f(t(x + δ)), y),
(``eot_crop_flip=True``: t ∼ crop∘flip only, the exploiter's standard augmentation) estimated
with ``eot`` draws per PGD step; the draws are folded into the batch (one forward of J·B images
instead of J forwards of B, which keeps a GPU busy) — a sum over draws, whose sign is
that of the mean the one PGD would take. The surrogate's own SGD steps stay unaugmented, as in
EM: only the crafting objective changes (spec §2.12). Measured on 2,000 real CIFAR-10 images with
a width-0.125 surrogate: training the surrogate on augmented batches too slowed its fit of the
noise (54 % vs 89 % surrogate accuracy after 10 rounds) and weakened the protection.

Shapes and units: δ is float32 NHWC in [0, 1] pixel units, (N, H, W, 3) sample-wise or
(K, H, W, 3) class-wise, on ``ctx.device``. Images stay uint8 on the device and are converted
per batch. On CUDA the model runs in bf16 autocast and channels-last memory.

Several processes (``ctx.world_size > 1``), sample-wise: every rank takes the same model-step
batches (same generator) and, after each round, loads rank 0's weights (``ctx.broadcast``), so
the surrogate is identical everywhere even where GPU kernels are not bit-reproducible; each rank
crafts only its ``ctx.shard`` rows and ``ctx.gather`` assembles the full δ before the stop test.
The stop test then runs on the full set on every rank (no rank would have anything else to do
meanwhile) and rank 0's accuracy is broadcast, so all ranks stop in the same round. Class-wise
noise is small (one subset pass at T = 1): every rank computes it identically and rank 0's δ is
broadcast at the end.

The loop's pieces (model step, stop test, the sample-wise min-min rounds, shared with SSC) are in
:mod:`ueperf.protections.crafting`; the EOT wrapper in :mod:`ueperf.augment.eot`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List

import torch

from ..augment.eot import eot_augment
from ..engine.pgd import pgd
from ..errors import ConfigError
from ..precision import autocast_dtype
from . import PROTECTIONS
from .base import GRANULARITIES, Perturbation, ProtectContext, Protection
from .crafting import (BatchStream, Frozen, check_common, end_round, folded_ce, fresh_model, min_min_rounds,
                       model_step, progress_bar, project_ball, to_float)

# Generator salts: one independent, reproducible random stream per purpose.
SALT_INIT, SALT_MODEL_BATCHES, SALT_NOISE, SALT_SUBSET = 0xE0, 0xE1, 0xE2, 0xE3


# =====================================================================================
# Config
# =====================================================================================


@dataclass
class EMConfig:
    eps: float = 8 / 255            # budget, [0,1] pixel units [code: HanxunH/Unlearnable-Examples]
    norm: str = "linf"              # linf | l2 (the one PGD's norms) [code: linf]
    granularity: str = "sample"     # one δ per image or per class: sample | class [code]
    model: str = "resnet18"         # surrogate architecture, CIFAR variant [code]
    width: float = 1.0              # surrogate channel-width multiplier (1 = published) [ours]
    max_rounds: int = 30            # cap on model-step/noise-step rounds [ours; the repo loops until the stop test]
    train_steps: int = 10           # M: surrogate SGD batches per round [code: train_step]
    train_batch_size: int = 128     # surrogate SGD batch, images [code]
    lr: float = 0.1                 # surrogate SGD learning rate, constant [code: configs/cifar10/resnet18.yaml]
    momentum: float = 0.9           # surrogate SGD momentum [code]
    weight_decay: float = 5e-4      # surrogate SGD weight decay [code]
    grad_clip: float = 5.0          # surrogate global grad-norm clip (0 = off) [code: grad_clip 5.0]
    steps: int = 0                  # T: PGD iterations per noise step; 0 = 20 sample-wise / 1 class-wise [code]
    alpha: float = 0.8 / 255        # PGD step size, [0,1] pixel units [code: exp_setting.sh]
    batch_size: int = 512           # noise-step batch, images [code]
    stop_error: float = 0.01        # stop when surrogate error on the perturbed set < this [code]
    class_portion: float = 0.2      # class-wise: fraction of the training set crafted on [code: universal_train_portion]
    random_start: bool = False      # start δ uniform in the ball instead of 0 [code: --random_start, unused in scripts]
    eot_cg: bool = False            # EM-T: EOT over crop+flip+CG augmentation while crafting [paper (a) §2.12]
    eot_crop_flip: bool = False     # EOT over crop+flip only (the victim's standard augmentation, REM's T) [ours]
    eot: int = 5                    # EOT draws per PGD step when eot_cg / eot_crop_flip [ours: REM's J = 5]
    eval_batch_size: int = 1024     # stop-test batch, images [ours]

    def eot_mode(self) -> str:
        """The crafting augmentation: "none", "crop+flip" or "crop+flip+CG" (eot_cg wins)."""
        return "crop+flip+CG" if self.eot_cg else ("crop+flip" if self.eot_crop_flip else "none")

    def resolved_steps(self) -> int:
        """T after the granularity default (0 → 20 sample-wise, 1 class-wise)."""
        if self.steps:
            return int(self.steps)
        return 20 if self.granularity == "sample" else 1


def _check(cfg: EMConfig) -> None:
    check_common(cfg, "em")
    if cfg.granularity not in GRANULARITIES:
        raise ConfigError(f"em.granularity={cfg.granularity!r}: expected one of {GRANULARITIES}")
    if cfg.max_rounds < 1:
        raise ConfigError(f"em.max_rounds={cfg.max_rounds}: must be >= 1 (rounds of model + noise steps)")
    if cfg.train_steps < 0 or cfg.train_batch_size < 1 or cfg.eval_batch_size < 1:
        raise ConfigError(f"em: train_steps must be >= 0 and train_batch_size, eval_batch_size >= 1 "
                          f"(got {cfg.train_steps}, {cfg.train_batch_size}, {cfg.eval_batch_size})")
    if not 0 <= cfg.stop_error < 1:
        raise ConfigError(f"em.stop_error={cfg.stop_error}: must be in [0, 1) (0.01 = stop at 99 % accuracy)")
    if not 0 < cfg.class_portion <= 1:
        raise ConfigError(f"em.class_portion={cfg.class_portion}: must be in (0, 1] (fraction of the training set)")


@PROTECTIONS.register("em")
class EM(Protection):
    """Error-minimising noise, sample-wise or class-wise, optionally EOT over CG (EM-T)."""

    Config = EMConfig

    @staticmethod
    def work(cfg: EMConfig, n: int, num_classes: int) -> dict:
        """Image passes (forward + backward of the surrogate, ueperf.engine.cost) at the round cap:
        per round M·B (model step) + images × T PGD steps × EOT draws (noise step) + n/3 (stop test)."""
        rows = n if cfg.granularity == "sample" else max(1, int(round(cfg.class_portion * n)))
        eot = cfg.eot if cfg.eot_mode() != "none" else 1
        per_round = cfg.train_steps * cfg.train_batch_size + rows * cfg.resolved_steps() * eot + n / 3
        return {"passes": cfg.max_rounds * per_round, "model": cfg.model, "width": cfg.width,
                "what": f"em at its cap of {cfg.max_rounds} round{'s' if cfg.max_rounds != 1 else ''} (fewer "
                        f"when the stop test is met)"}

    def generate(self, ctx: ProtectContext) -> Perturbation:
        cfg: EMConfig = ctx.cfg
        _check(cfg)
        t0 = time.perf_counter()
        model = fresh_model(cfg.model, cfg.width, ctx, SALT_INIT)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay)
        mode = cfg.eot_mode()
        if mode != "none":
            augment, loss_fn = eot_augment(cfg.eot, cg=cfg.eot_cg), folded_ce(cfg.eot)
            eot_desc = f"{mode} x{cfg.eot}"
        else:
            augment, loss_fn, eot_desc = None, None, "none"
        if cfg.granularity == "sample":
            delta, hist = min_min_rounds(ctx, cfg, model, opt, augment, loss_fn,
                                         model_batches_salt=SALT_MODEL_BATCHES, noise_salt=SALT_NOISE)
        else:
            delta, hist = self._class_wise(ctx, cfg, model, opt, augment, loss_fn)
        accs = [h["surrogate_acc"] for h in hist]
        info = {
            "rounds": len(hist),
            "surrogate_acc": accs[-1],
            "stopped": accs[-1] > 1 - cfg.stop_error,
            "acc_history": accs,
            "steps": cfg.resolved_steps(),
            "eot": eot_desc,
            "generation_s": time.perf_counter() - t0,
            "surrogate": {"model": cfg.model, "width": cfg.width, "num_classes": ctx.num_classes,
                          "training": "from scratch, jointly with the noise (EM min-min)",
                          "sgd_steps": len(hist) * cfg.train_steps,
                          "optimizer": f"SGD lr {cfg.lr} momentum {cfg.momentum} wd {cfg.weight_decay}"},
        }
        return Perturbation(delta=delta, granularity=cfg.granularity, norm=cfg.norm, eps=float(cfg.eps),
                            info=info)

    # -- class-wise ---------------------------------------------------------------------
    def _class_wise(self, ctx, cfg, model, opt, augment, loss_fn):
        dev, x_u8, y, K = ctx.device, ctx.x, ctx.y, ctx.num_classes
        n = x_u8.shape[0]
        k = max(1, int(round(cfg.class_portion * n)))
        sub = torch.randperm(n, generator=ctx.generator(SALT_SUBSET), device=dev)[:k].sort().values
        shape = (K,) + tuple(x_u8.shape[1:])
        if cfg.random_start:
            delta = project_ball((torch.rand(shape, generator=ctx.generator(SALT_NOISE, 0), device=dev) * 2 - 1)
                                 * cfg.eps, cfg.eps, cfg.norm)
        else:
            delta = torch.zeros(shape, dtype=torch.float32, device=dev)
        batches = BatchStream(sub, cfg.train_batch_size, ctx.generator(SALT_MODEL_BATCHES))
        g_noise = ctx.generator(SALT_NOISE)
        T = cfg.resolved_steps()
        ac = autocast_dtype(dev)
        hist: List[Dict] = []
        bar = progress_bar(ctx, cfg.max_rounds, "em-class rounds")
        for r in range(cfg.max_rounds):
            tr = time.perf_counter()
            loss = model_step(model, opt, batches, x_u8, y, lambda idx: delta.index_select(0, y[idx]), cfg, ctx)
            with Frozen([model]):
                for s in range(0, k, cfg.batch_size):
                    idx = sub[s:s + cfg.batch_size]
                    yb = y[idx]
                    d = pgd(model, to_float(x_u8[idx]), yb, delta.index_select(0, yb), eps=cfg.eps,
                            alpha=cfg.alpha, steps=T, norm=cfg.norm, sign=-1.0, loss_fn=loss_fn,
                            augment=augment, generator=g_noise, autocast_dtype=ac)
                    # δ_k ← Π_ε(mean of the batch's updated noises of class k); classes absent from
                    # the batch keep theirs. Sums + counts on the device: no per-class Python loop.
                    sums = torch.zeros_like(delta).index_add_(0, yb, d)
                    cnt = torch.bincount(yb, minlength=K).to(delta.dtype).view(-1, 1, 1, 1)
                    mean = project_ball(sums / cnt.clamp_min(1), cfg.eps, cfg.norm)
                    delta = torch.where(cnt > 0, mean, delta)
            if end_round(ctx, cfg, model, sub, lambda i, d=delta: d.index_select(0, y[i]), r, loss, tr, hist, bar):
                break
        if bar is not None:
            bar.close()
        if ctx.world_size > 1 and ctx.broadcast is not None:
            delta = ctx.broadcast(delta.contiguous(), src=0)
        return delta, hist
