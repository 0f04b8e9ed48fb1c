"""The crafting toolkit every optimised protection shares.

EM, REM, SSC (min-min against a surrogate trained with the noise), BAIT (bi-level against a
surrogate fine-tuned from a prior), AEP and HYPO (against a fixed clean surrogate) all run the one
PGD (:func:`ueperf.engine.pgd.pgd`) inside a loop of small SGD steps and measurements. The pieces
of those loops live here, once:

- the budget check every such method makes (:func:`check_budget`, :func:`check_common`);
- a fresh surrogate whose weights depend only on the seed (:func:`fresh_model`), weights frozen for
  the noise step (:class:`Frozen`), kept equal across ranks (:func:`sync_model`, :func:`agree`);
- the small SGD step (:func:`sgd_step`), batches without replacement (:class:`BatchStream`);
- accuracy and targeted success over a set (:func:`rates`);
- the EM min-min round — model step, noise step, stop test (:func:`model_step`, :func:`end_round`,
  :func:`min_min_rounds`, shared by EM and SSC);
- PGD against a fixed model with restarts (:func:`craft_against_surrogate`, AEP and HYPO);
- the PGD losses over folded EOT draws or ensemble members (:func:`folded_ce`, :func:`summed_ce`).

Shapes and units: images are uint8 NHWC on ``ctx.device`` and converted per batch
(:func:`to_float`); δ is float32 NHWC in [0, 1] pixel units. On CUDA models run in bf16 autocast
(:mod:`ueperf.precision`) and channels-last memory.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..engine.pgd import pgd, random_start
from ..errors import ConfigError
from ..kernels.pgd import project
from ..precision import autocast, autocast_auto, autocast_dtype
from .base import ProtectContext, quantise, to_model

PGD_NORMS = ("linf", "l2")       # the norms the one PGD projects onto
INITS = ("randn", "uniform", "zero")
SALT_NOISE_INIT = 0xE2           # EM's noise stream (its random start draws (SALT_NOISE_INIT, 0))


# ───────────────────────────────────────────── config checks ──
def check_budget(method: str, eps: float, norm: str) -> None:
    """The budget of a PGD-crafted protection: ``norm`` in :data:`PGD_NORMS`, ``eps`` > 0 and finite,
    at most 1 for ℓ∞ (the whole [0, 1] pixel range)."""
    if norm not in PGD_NORMS:
        raise ConfigError(f"{method}.norm={norm!r}: expected one of {', '.join(PGD_NORMS)} (the norms the PGD "
                          f"projects onto)")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ConfigError(f"{method}.eps={eps!r}: must be > 0, in [0,1] pixel units (e.g. 8/255)")
    if norm == "linf" and eps > 1:
        raise ConfigError(f"{method}.eps={eps!r}: an ℓ∞ budget above 1 is the whole pixel range; did you mean "
                          f"{eps:g}/255?")


def check_common(cfg, name: str) -> None:
    """ConfigErrors for the fields the min-min methods (EM, REM, SSC, BAIT) share: the budget, the
    PGD step, batch sizes, EOT draws and the surrogate's SGD."""
    check_budget(name, cfg.eps, cfg.norm)

    def bad(field: str, why: str):
        raise ConfigError(f"{name}.{field}={getattr(cfg, field)!r}: {why}")

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


def check_against_surrogate(method: str, *, eps: float, norm: str, steps: int, batch_size: int) -> None:
    """The checks AEP and HYPO share: the budget, PGD steps and the crafting batch."""
    check_budget(method, eps, norm)
    if steps < 0:
        raise ConfigError(f"{method}: steps={steps} must be >= 0 (PGD iterations)")
    if batch_size < 1:
        raise ConfigError(f"{method}: batch_size={batch_size} must be >= 1 (images crafted together)")


# ───────────────────────────────────────────── models ──
def fresh_model(name: str, width: float, ctx: ProtectContext, salt: int, stem: str = "auto") -> torch.nn.Module:
    """A freshly initialised ``name`` on ``ctx.device`` whose initial weights depend only on
    (ctx.seed, salt): the global RNG is forked, so callers' random streams are untouched.
    Channels-last on CUDA (cuDNN's NHWC kernels); on CPU the NCHW kernels are faster."""
    from ..models import build_model
    seed = int(ctx.generator(salt).initial_seed())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(name, ctx.num_classes, int(ctx.x.shape[1]), width=width, stem=stem)
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


# ───────────────────────────────────────────── steps and batches ──
def to_float(x_u8: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC → float32 in [0, 1]."""
    return x_u8.float().div_(255)


def sgd_step(model, opt, inp: torch.Tensor, y: torch.Tensor, grad_clip: float,
             device: torch.device) -> torch.Tensor:
    """One SGD step on cross-entropy (model in train mode) on the model input ``inp``
    (B, 3, H, W), e.g. ``to_model(x_nhwc)``; returns the detached loss."""
    with autocast_auto(device):
        logits = model(inp)
    loss = F.cross_entropy(logits.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss.detach()


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


def progress_bar(ctx: ProtectContext, total: int, desc: str, leave: bool = True):
    if not ctx.progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=leave, dynamic_ncols=True, file=sys.stderr)


def project_ball(d: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Π_ε onto the ℓ∞ / ℓ2 ball per row (no image to clip against: class-wise δ)."""
    if norm == "linf":
        return d.clamp(-eps, eps)
    n = torch.linalg.vector_norm(d.flatten(1), dim=1).clamp_min(1e-12).view(-1, *([1] * (d.dim() - 1)))
    return d * (eps / n).clamp_max(1.0)


# ───────────────────────────────────────────── losses for the PGD ──
def folded_ce(samples: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy of J·B logits (J folded EOT draws, :mod:`ueperf.augment.eot`) against the B
    targets repeated J times: the mean over draws and samples (sign-PGD only needs its direction)."""
    J = int(samples)
    return lambda logits, t: F.cross_entropy(logits.float(), t.repeat(J) if J > 1 else t)


def summed_ce(reps: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Σ over samples (and the ``reps`` folded copies: EOT draws × ensemble members) of CE(logits, t):
    a sample's gradient does not depend on its batch-mates (the sign-PGD only needs directions)."""
    return lambda logits, t: F.cross_entropy(logits.float(), t.repeat(reps) if reps > 1 else t, reduction="sum")


# ───────────────────────────────────────────── measurements ──
@torch.no_grad()
def rates(model, x_u8: torch.Tensor, y: torch.Tensor, *, batch: int, rows: Optional[torch.Tensor] = None,
          delta_of: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, targets: Optional[torch.Tensor] = None,
          published: bool = False) -> torch.Tensor:
    """(2,) float64 device tensor: [accuracy on ``y``, rate of f(·) = ``targets``] of ``model``
    (put in eval mode) over the samples ``rows`` (default all) of clip(x + δ), δ rows from
    ``delta_of(idx)`` (None: the clean images); ``published``: the uint8-quantised images
    :func:`~ueperf.protections.base.apply` writes. The target rate is 0 without ``targets``."""
    model.eval()
    dev = x_u8.device
    rows = rows if rows is not None else torch.arange(x_u8.shape[0], device=dev)
    hits = torch.zeros(2, dtype=torch.float64, device=dev)
    for s in range(0, rows.numel(), batch):
        idx = rows[s:s + batch]
        xb = to_float(x_u8[idx])
        if delta_of is not None:
            d = delta_of(idx)
            xb = quantise(xb, d) if published else (xb + d).clamp_(0, 1)
        with autocast_auto(dev):
            pred = model(to_model(xb)).argmax(1)
        hit_t = (pred == targets[idx]).sum() if targets is not None else torch.zeros((), dtype=torch.long, device=dev)
        hits += torch.stack([(pred == y[idx]).sum(), hit_t]).double()
    return hits / max(rows.numel(), 1)


# ───────────────────────────────────────────── the min-min round (EM, SSC) ──
def model_step(model, opt, batches: BatchStream, x_u8: torch.Tensor, y: torch.Tensor,
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
    acc = float(agree(rates(model, ctx.x, ctx.y, batch=cfg.eval_batch_size, rows=rows, delta_of=delta_of)[0],
                      ctx).item())
    rec = {"round": r + 1, "surrogate_acc": acc, "model_loss": float(loss.item()),
           "round_s": time.perf_counter() - t_round}
    hist.append(rec)
    ctx.log(rec)
    if bar is not None:
        bar.set_postfix(acc=f"{100 * acc:.2f}%")
        bar.update(1)
    return acc > 1 - cfg.stop_error


def min_min_rounds(ctx: ProtectContext, cfg, model, opt, augment=None, loss_fn=None,
                   prepare: Optional[Callable[[torch.Tensor], None]] = None, name: str = "em",
                   model_batches_salt: int = 0xE1, noise_salt: int = SALT_NOISE_INIT):
    """The sample-wise min-min loop of EM (spec §2.1), shared with SSC (spec §2.11).

    Each round: (a) model step, M = ``cfg.train_steps`` SGD batches of clip(x + δ); (b) noise
    step, T = ``cfg.resolved_steps()`` PGD iterations (sign −1, ``loss_fn`` / ``augment`` for EOT)
    on this rank's rows, weights frozen; (c) stop test, surrogate accuracy over the whole perturbed
    set > 1 − ``cfg.stop_error``, or ``cfg.max_rounds``. ``cfg`` needs EM's loop fields (eps, norm,
    alpha, steps, batch_size, train_steps, train_batch_size, grad_clip, eval_batch_size,
    stop_error, max_rounds, random_start); ``opt`` holds the parameters the model step trains
    (frozen groups stay frozen: :class:`Frozen` restores each parameter's flag after the noise
    step). ``prepare(idx)`` is called before the PGD of each noise batch (SSC computes the clean
    shallow activations there). Returns (δ, per-round history)."""
    dev, x_u8, y = ctx.device, ctx.x, ctx.y
    n = x_u8.shape[0]
    shard = ctx.shard if ctx.shard is not None else torch.arange(n, device=dev)
    shard = shard.to(dev)
    every = torch.arange(n, device=dev)
    if cfg.random_start:
        delta = torch.empty(x_u8.shape, dtype=torch.float32, device=dev)
        g0 = ctx.generator(noise_salt, 0)
        for s in range(0, n, cfg.batch_size):  # chunked: no float copy of the whole set
            delta[s:s + cfg.batch_size] = random_start(to_float(x_u8[s:s + cfg.batch_size]), eps=cfg.eps,
                                                       norm=cfg.norm, generator=g0)
    else:
        delta = torch.zeros(x_u8.shape, dtype=torch.float32, device=dev)
    batches = BatchStream(every, cfg.train_batch_size, ctx.generator(model_batches_salt))
    g_noise = ctx.generator(noise_salt)
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


# ───────────────────────────────────────────── against a fixed model (AEP, HYPO) ──
def _start(init: str, x: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """'randn' [code: adversarial_poisons `_initialize_poison`]: ε·N(0, 1) per entry projected onto
    the ε-ball (and so that x + δ ∈ [0, 1]); 'uniform': the PGD's random start; 'zero'."""
    if init == "randn":
        d = torch.randn(x.shape, device=x.device, generator=generator) * eps
        return project(d, x, eps=eps, norm=norm)
    if init == "uniform":
        return random_start(x, eps=eps, norm=norm, generator=generator)
    return torch.zeros_like(x)


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
    ac_dtype = autocast_dtype(dev)

    def forward(xn: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(dev, ac_dtype):
            return model(xn.permute(0, 3, 1, 2)).float()

    # Running sums on the device: [acc_clean, acc_pert, tgt_clean, tgt_pert, loss_clean, loss_pert, J]
    sums = torch.zeros(7, dtype=torch.float64, device=dev)
    n_batches = max(1, math.ceil(n / batch_size))
    bar = progress_bar(ctx, n_batches, desc, leave=False) if n else None
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
