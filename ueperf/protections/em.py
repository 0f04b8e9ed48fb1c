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

Helpers shared with REM (:mod:`ueperf.protections.rem`): :func:`eot_augment`,
:func:`folded_ce`, :func:`build_surrogate`, :func:`autocast_dtype`, :class:`BatchStream`.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from ..config import AugmentConfig
from ..engine.pgd import pgd, random_start
from ..errors import ConfigError
from ..kernels.augment import augment_ref, sample_params
from . import PROTECTIONS
from .base import GRANULARITIES, Perturbation, ProtectContext, Protection, to_model

# Generator salts: one independent, reproducible random stream per purpose.
SALT_INIT, SALT_MODEL_BATCHES, SALT_NOISE, SALT_SUBSET = 0xE0, 0xE1, 0xE2, 0xE3

_CG = AugmentConfig()  # the CG distribution of spec §3.4 (jitter 0.4/0.4/0.4/0.1 w.p. 0.8, gray 0.2)


# =====================================================================================
# Config
# =====================================================================================


@dataclass
class EMConfig:
    eps: float = 8 / 255            # budget, [0,1] pixel units [code: HanxunH/Unlearnable-Examples]
    norm: str = "linf"              # linf | l2 (the one PGD's norms) [code: linf]
    granularity: str = "sample"     # sample | class [code]
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


def check_common(cfg, name: str) -> None:
    """ConfigErrors for the fields EM and REM share (name = method, for the messages)."""
    def bad(field: str, why: str):
        raise ConfigError(f"{name}.{field}={getattr(cfg, field)!r}: {why}")

    if cfg.norm not in ("linf", "l2"):
        bad("norm", "expected linf or l2 (the norms the PGD projects onto)")
    if not (cfg.eps > 0 and math.isfinite(cfg.eps)):
        bad("eps", "must be > 0, in [0,1] pixel units (e.g. 8/255)")
    if cfg.norm == "linf" and cfg.eps > 1:
        bad("eps", "an ℓ∞ budget above 1 is the whole pixel range; did you mean 8/255?")
    if not cfg.alpha > 0:
        bad("alpha", "the PGD step must be > 0 (in [0,1] pixel units, e.g. 0.8/255)")
    for f in ("batch_size", "eot"):
        if hasattr(cfg, f) and int(getattr(cfg, f)) < 1:
            bad(f, "must be >= 1")
    if cfg.steps < 0:
        bad("steps", "must be >= 0")
    if not (cfg.lr >= 0 and 0 <= cfg.momentum < 1 and cfg.weight_decay >= 0):
        raise ConfigError(f"{name}: surrogate SGD needs lr >= 0, 0 <= momentum < 1, weight_decay >= 0 "
                          f"(got lr={cfg.lr}, momentum={cfg.momentum}, weight_decay={cfg.weight_decay})")


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


# =====================================================================================
# Shared helpers (EM and REM)
# =====================================================================================


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """bf16 autocast on CUDA (tensor cores), none elsewhere (CPU bf16 is slower and less exact)."""
    return torch.bfloat16 if device.type == "cuda" else None


def autocast(device: torch.device):
    dt = autocast_dtype(device)
    return torch.autocast(device.type, dtype=dt) if dt is not None else contextlib.nullcontext()


def build_surrogate(name: str, width: float, ctx: ProtectContext, salt: int = SALT_INIT) -> torch.nn.Module:
    """A freshly initialised surrogate on ``ctx.device``; the initial weights depend only on
    (ctx.seed, salt) — the global RNG is forked, so callers' random streams are untouched.
    Channels-last on CUDA (cuDNN's NHWC kernels); on CPU the NCHW kernels are faster."""
    from ..models import build_model
    H = int(ctx.x.shape[1])
    seed = int(ctx.generator(salt).initial_seed())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(name, ctx.num_classes, H, width=width)
    model = model.to(ctx.device)
    if ctx.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def sync_model(model: torch.nn.Module, ctx: ProtectContext) -> None:
    """Make every rank hold rank 0's weights and buffers (no-op on one process)."""
    if ctx.world_size > 1 and ctx.broadcast is not None:
        with torch.no_grad():
            for t in model.state_dict().values():
                t.copy_(ctx.broadcast(t, src=0))


def agree(value: torch.Tensor, ctx: ProtectContext) -> torch.Tensor:
    """Rank 0's value of a small tensor on every rank (so all ranks take the same decision)."""
    if ctx.world_size > 1 and ctx.broadcast is not None:
        return ctx.broadcast(value, src=0)
    return value


def eot_augment(samples: int, cg: bool, *, crop_padding: int = 4, flip: bool = True
                ) -> Callable[[torch.Tensor, Optional[torch.Generator]], torch.Tensor]:
    """Differentiable EOT augmentation for the one PGD: ``fn(x, generator)`` maps x (B, H, W, 3)
    float in [0, 1] to t_1(x) ‖ … ‖ t_J(x), (J·B, 3, H, W) channels-last, J = ``samples``
    independent draws of random crop (zero padding ``crop_padding`` px) + horizontal flip, and
    with ``cg`` the CG colour jitter + grayscale of spec §3.4. Draw j occupies rows [jB, (j+1)B).
    Pair it with :func:`folded_ce` (targets repeated the same way)."""
    J = int(samples)

    def fn(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        xr = x.repeat(J, 1, 1, 1) if J > 1 else x
        params = sample_params(xr.shape[0], xr.shape[1], xr.shape[2], padding=crop_padding, flip=flip,
                               jitter=_CG.jitter if cg else None, jitter_p=_CG.jitter_p if cg else 0.0,
                               gray_p=_CG.gray_p if cg else 0.0, generator=generator, device=x.device)
        return augment_ref(xr, params)

    return fn


def folded_ce(samples: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy of J·B logits (J folded EOT draws) against the B targets repeated J times:
    the mean over draws and samples (sign-PGD only needs its direction)."""
    J = int(samples)
    return lambda logits, t: F.cross_entropy(logits.float(), t.repeat(J) if J > 1 else t)


class BatchStream:
    """Mini-batches of ``size`` indices drawn without replacement from ``pool`` (a 1-D index
    tensor on the device), reshuffled with ``generator`` when exhausted (the tail that does not
    fill a batch is dropped, like a drop_last loader). No host syncs; every rank with the same
    generator seed draws the same batches."""

    def __init__(self, pool: torch.Tensor, size: int, generator: torch.Generator):
        self.pool, self.size, self.gen = pool, max(1, min(int(size), pool.numel())), generator
        self.perm, self.pos = None, 0

    def next(self) -> torch.Tensor:
        if self.perm is None or self.pos + self.size > self.perm.numel():
            order = torch.randperm(self.pool.numel(), generator=self.gen, device=self.pool.device)
            self.perm, self.pos = self.pool[order], 0
        b = self.perm[self.pos:self.pos + self.size]
        self.pos += self.size
        return b


def to_float(x_u8: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC → float32 in [0, 1]."""
    return x_u8.float().div_(255)


def sgd_step(model, opt, inp: torch.Tensor, y: torch.Tensor, grad_clip: float,
             device: torch.device) -> torch.Tensor:
    """One SGD step on cross-entropy (model in train mode) on the model input ``inp``
    (B, 3, H, W), e.g. ``to_model(x_nhwc)``; returns the detached loss."""
    with autocast(device):
        logits = model(inp)
    loss = F.cross_entropy(logits.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss.detach()


@torch.no_grad()
def accuracy(model, x_u8: torch.Tensor, y: torch.Tensor, rows: torch.Tensor,
             delta_of: Callable[[torch.Tensor], torch.Tensor], batch: int) -> torch.Tensor:
    """Accuracy (0-d device tensor) of ``model`` (eval mode) on clip(x + δ) over sample indices
    ``rows``; ``delta_of(idx)`` gives the δ rows of the samples ``idx``."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=x_u8.device)
    for s in range(0, rows.numel(), batch):
        idx = rows[s:s + batch]
        xb = (to_float(x_u8[idx]) + delta_of(idx)).clamp_(0, 1)
        with autocast(x_u8.device):
            logits = model(to_model(xb))
        correct += (logits.argmax(1) == y[idx]).sum()
    return correct.double() / max(rows.numel(), 1)


def project_ball(d: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Π_ε onto the ℓ∞ / ℓ2 ball per row (no image to clip against: class-wise δ)."""
    if norm == "linf":
        return d.clamp(-eps, eps)
    n = torch.linalg.vector_norm(d.flatten(1), dim=1).clamp_min(1e-12).view(-1, *([1] * (d.dim() - 1)))
    return d * (eps / n).clamp_max(1.0)


class Frozen:
    """Context: models in eval mode with every ``requires_grad`` off (the PGD differentiates w.r.t.
    δ only); restores each parameter's own flag afterwards (frozen groups stay frozen)."""

    def __init__(self, models):
        self.models = list(models)

    def __enter__(self):
        self.flags = [[p.requires_grad for p in m.parameters()] for m in self.models]
        for m in self.models:
            m.eval()
            m.requires_grad_(False)
        return self

    def __exit__(self, *exc):
        for m, flags in zip(self.models, self.flags):
            for p, f in zip(m.parameters(), flags):
                p.requires_grad_(f)
        return False


def progress_bar(ctx: ProtectContext, total: int, desc: str, leave: bool = True):
    if not ctx.progress:
        return None
    import sys
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=leave, dynamic_ncols=True, file=sys.stderr)


# =====================================================================================
# The method
# =====================================================================================


def model_step(model, opt, batches: "BatchStream", x_u8: torch.Tensor, y: torch.Tensor,
               delta_of: Callable[[torch.Tensor], torch.Tensor], cfg, ctx: ProtectContext) -> torch.Tensor:
    """The min over θ of one round: ``cfg.train_steps`` SGD batches of clip(x + δ) (δ rows from
    ``delta_of(idx)``), no augmentation; weights synchronised across ranks. Returns the last loss."""
    model.train()
    loss = torch.zeros((), device=ctx.device)
    for _ in range(cfg.train_steps):
        idx = batches.next()
        xb = (to_float(x_u8[idx]) + delta_of(idx)).clamp_(0, 1)
        loss = sgd_step(model, opt, to_model(xb), y[idx], cfg.grad_clip, ctx.device)
    sync_model(model, ctx)
    return loss


def end_round(ctx: ProtectContext, cfg, model, rows: torch.Tensor, delta_of, r: int, loss: torch.Tensor,
              t_round: float, hist: List[Dict], bar) -> bool:
    """The stop test of an EM-style round: surrogate accuracy on clip(x + δ) over ``rows`` (rank 0's
    value on every rank; one host sync), recorded in ``hist``/``ctx.log``/the bar. True = stop."""
    acc = float(agree(accuracy(model, ctx.x, ctx.y, rows, delta_of, cfg.eval_batch_size), ctx).item())
    rec = {"round": r + 1, "surrogate_acc": acc, "model_loss": float(loss.item()),
           "round_s": time.perf_counter() - t_round}
    hist.append(rec)
    ctx.log(rec)
    if bar is not None:
        bar.set_postfix(acc=f"{100 * acc:.2f}%")
        bar.update(1)
    return acc > 1 - cfg.stop_error


def sample_wise_rounds(ctx: ProtectContext, cfg, model, opt, augment=None, loss_fn=None,
                       prepare: Optional[Callable[[torch.Tensor], None]] = None, name: str = "em"):
    """The sample-wise min-min loop of EM (module docstring), shared with SSC (spec §2.11).

    ``cfg`` needs EM's loop fields (eps, norm, alpha, steps via ``resolved_steps()``, batch_size,
    train_steps, train_batch_size, grad_clip, eval_batch_size, stop_error, max_rounds,
    random_start); ``opt`` holds the parameters the model step trains (frozen groups stay frozen:
    :class:`Frozen` restores each parameter's flag after the noise step). ``prepare(idx)`` is
    called before the PGD of each noise batch (SSC computes the clean shallow activations of the
    batch there). Returns (δ, per-round history)."""
    dev, x_u8, y = ctx.device, ctx.x, ctx.y
    n = x_u8.shape[0]
    shard = ctx.shard if ctx.shard is not None else torch.arange(n, device=dev)
    shard = shard.to(dev)
    every = torch.arange(n, device=dev)
    if cfg.random_start:
        delta = torch.empty(x_u8.shape, dtype=torch.float32, device=dev)
        g0 = ctx.generator(SALT_NOISE, 0)
        for s in range(0, n, cfg.batch_size):  # chunked: no float copy of the whole set
            delta[s:s + cfg.batch_size] = random_start(to_float(x_u8[s:s + cfg.batch_size]), eps=cfg.eps,
                                                       norm=cfg.norm, generator=g0)
    else:
        delta = torch.zeros(x_u8.shape, dtype=torch.float32, device=dev)
    batches = BatchStream(every, cfg.train_batch_size, ctx.generator(SALT_MODEL_BATCHES))
    g_noise = ctx.generator(SALT_NOISE)
    T = cfg.resolved_steps()
    ac = autocast_dtype(dev)
    hist: List[Dict] = []
    bar = progress_bar(ctx, cfg.max_rounds, f"{name} rounds")
    for r in range(cfg.max_rounds):
        tr = time.perf_counter()
        # (a) model step: M batches of the perturbed set, no augmentation.
        loss = model_step(model, opt, batches, x_u8, y, lambda idx: delta[idx], cfg, ctx)
        # (b) noise step: T PGD iterations on this rank's rows, weights frozen.
        inner = progress_bar(ctx, shard.numel(), f"round {r + 1} noise", leave=False)
        with Frozen([model]):
            for s in range(0, shard.numel(), cfg.batch_size):
                idx = shard[s:s + cfg.batch_size]
                if prepare is not None:
                    prepare(idx)
                d = pgd(model, to_float(x_u8[idx]), y[idx], delta[idx], eps=cfg.eps, alpha=cfg.alpha,
                        steps=T, norm=cfg.norm, sign=-1.0, loss_fn=loss_fn, augment=augment,
                        generator=g_noise, autocast_dtype=ac)
                delta.index_copy_(0, idx, d)
                if inner is not None:
                    inner.update(idx.numel())
        if inner is not None:
            inner.close()
        if ctx.world_size > 1:
            delta = ctx.gather(delta.index_select(0, shard))
        # (c) stop test on the whole perturbed training set (one host sync per round).
        if end_round(ctx, cfg, model, every, lambda i, d=delta: d.index_select(0, i), r, loss, tr, hist, bar):
            break
    if bar is not None:
        bar.close()
    return delta, hist


@PROTECTIONS.register("em")
class EM(Protection):
    """Error-minimising noise, sample-wise or class-wise, optionally EOT over CG (EM-T)."""

    Config = EMConfig

    def generate(self, ctx: ProtectContext) -> Perturbation:
        cfg: EMConfig = ctx.cfg
        _check(cfg)
        t0 = time.perf_counter()
        model = build_surrogate(cfg.model, cfg.width, ctx)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay)
        mode = cfg.eot_mode()
        if mode != "none":
            augment, loss_fn = eot_augment(cfg.eot, cg=cfg.eot_cg), folded_ce(cfg.eot)
            eot_desc = f"{mode} x{cfg.eot}"
        else:
            augment, loss_fn, eot_desc = None, None, "none"
        if cfg.granularity == "sample":
            delta, hist = sample_wise_rounds(ctx, cfg, model, opt, augment, loss_fn)
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
