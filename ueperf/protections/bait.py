"""BAIT — Binding Artificial perturbations to Incorrect Targets (seed (b)), spec §2.10: OUR INTERPRETATION.

Only the paper's abstract exists; the formulation below is spec §2.10's reconstruction [ours].
Bi-level, the surrogate θ starting from a **pretrained prior** θ_pre plus a fresh head::

    inner   θ*(δ) = argmin_θ Σ_i L(f_θ(A(x_i + δ_i)), y_i)            simulated fine-tuning, TRUE labels
    outer   min_{‖δ_i‖∞ ≤ ε} Σ_i L(f_{θ*(δ)}(x_i + δ_i), π(y_i))       binding to a wrong target
            π(y) = (y + target_shift) mod K   (default (y + 1) mod K, a derangement)

so that the prior's reading of x + δ (class π(y)) contradicts the label y: a victim fine-tuned
from a prior on the published set must either learn "semantics of π(y) → label y" or a
perturbation shortcut, both of which fail on clean test data.

Algorithm (alternating first-order approximation, cf. EM/REM) [ours: spec §2.10 steps 1-4]:

1. θ ← (θ_pre from ``prior``, fresh head); δ_i ~ U(−ε, ε) (``init``).
2. ``passes`` (E_gen = 10) passes over D; pass p visits D in a fresh random order cut into
   mini-batches B_1..B_⌈N/b⌉ (b = ``batch_size`` = 128); for each B_j:

   a. **inner**: M = ``inner_steps`` (5) SGD steps (lr 0.01, momentum 0.9, wd 5e-4, constant;
      every layer trainable; model in train mode) on L(f_θ(A(x + δ)), y) over B_j and the next
      batches of the pass order (M full batches of b images, wrapping around the order);
      A = random crop (``crop_padding`` px zero padding) + horizontal flip (spec §1);
   b. **outer**: S = ``steps`` (10) iterations of the one PGD (:func:`ueperf.engine.pgd.pgd`,
      sign −1 on the targets π(y), step ``alpha`` = 2/255, projected onto the ε-ball and
      [0, 1]) on δ_{B_j}; model in eval mode, weights frozen; optionally EOT over A
      (``outer_eot``, J = ``eot`` = 2 draws folded into the batch).
3. **regeneration**: every δ_i gets ``regen_steps`` (20) more PGD iterations of
   ``regen_alpha`` (1/255) against the final θ, starting from its value after the passes (our
   reading of "recompute δ with the final θ": the passes' δ is where θ was fitted, the 20 small
   steps re-bind it to the final θ) [ours].
4. optional **paradigm ensemble** (``ensemble``): P surrogates, one per paradigm of
   ``ensemble_paradigms`` (spec §5: ``ft`` all layers, ``pfk`` stem + stages 1..k frozen with
   their BN in eval mode, ``lp`` only the head), all starting from the same (θ_pre, fresh head)
   and taking the same inner batches and augmentations with their own SGD (the §2.10 optimiser
   on their trainable parameters; §5's per-paradigm learning rates are not used, so the members
   differ only in which layer groups learn) [ours]. The outer loss is Σ_members L, whose
   gradient is P × the members' average: same sign steps as averaging.

**Inner reads the pass-start δ** [ours]. During pass p the inner steps train on the δ of the end of
pass p − 1 and the outer steps write the new values into a separate buffer, which replaces δ at
the end of the pass. In the spec's in-place order the batches B_j..B_{j+M−1} that the inner
steps read are, except near the end of a pass, exactly the ones not yet updated in this pass, so
this is the same algorithm up to the last few batches of each pass; it is what lets several
processes share the work without exchanging δ after every batch (below). Cost: one extra
float32 copy of δ's shard.

**Per-sample PGD objective** [ours]: the outer loss is the *sum* of per-sample cross-entropies
(not the mean), so a sample's gradient — hence its sign step — does not depend on which other
samples share its batch. With ``outer_eot`` the crop/flip parameters are drawn for the whole
global mini-batch from a stream seeded by (seed, pass, batch) and each rank applies its
samples' rows.

Several processes (``ctx.world_size`` > 1): every rank runs the same inner SGD steps (same
order, same augmentations, same pass-start δ) and crafts only the rows of B_j that are in its
``ctx.shard``; ``ctx.gather`` assembles the new δ at the end of each pass and of the
regeneration, and each member is synchronised to rank 0's weights (``ctx.broadcast``) after
every pass. The bytes are the same as on one process wherever the kernels give a sample the same
numbers in a smaller batch (true on CPU, tested; cuDNN may pick other algorithms for other batch
sizes). The outer steps (about ⅔ of a pass at S = 10, M = 5) and the regeneration are divided
among the ranks; the inner steps are not.

Diagnostics, per pass (``ctx.log`` and ``info["history"]``; the whole training set, eval mode,
after the pass's δ is assembled): ``target_rate`` = targeted success of f_θ on (x + δ, π(y)),
``train_acc`` = accuracy of f_θ on (x + δ, y) (how well the simulated fine-tuning fits the
published labels), ``inner_loss`` = mean loss of the pass's inner SGD steps. At the end the same
rates on the clean and on the published (uint8-quantised) images, per member.

Shapes and units: δ is float32 NHWC (N, H, W, 3) in [0, 1] pixel units on ``ctx.device``;
images stay uint8 on the device and are converted per batch. On CUDA the models run in bf16
autocast and channels-last memory. After :meth:`BAIT.generate`, ``BAIT.surrogates`` holds the
final crafting surrogate(s) by paradigm name (eval mode), for diagnostics.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Dict, List

import torch

from ..augment.eot import eot_augment
from ..engine.pgd import pgd, random_start
from ..errors import ConfigError
from ..paradigms import freeze
from ..precision import autocast_dtype
from . import PROTECTIONS
from .base import Perturbation, ProtectContext, Protection
from .crafting import Frozen, check_common, progress_bar, rates, sgd_step, summed_ce, sync_model, to_float
from .priors import PRIOR_HELP, build_from_prior

# Generator salts: one independent, reproducible random stream per purpose.
SALT_DELTA, SALT_ORDER, SALT_INNER, SALT_OUTER, SALT_REGEN = 0xBA1, 0xBA2, 0xBA3, 0xBA4, 0xBA5

PARADIGMS = ("ft", "lp", "pf1", "pf2", "pf3")  # spec §5 (fs has no prior: not a BAIT surrogate)
INITS = ("uniform", "zero")



# =====================================================================================
# Config
# =====================================================================================


@dataclass
class BAITConfig:
    eps: float = 8 / 255            # ε, budget in [0,1] pixel units [ours: spec §2.10, the field's standard]
    norm: str = "linf"              # linf [ours: spec §2.10] | l2 (the one PGD's other norm) [ours]
    prior: str = ""                 # prior: path of a torchvision-format state dict; required [ours: §2.10, §5]
    model: str = "resnet18"         # surrogate architecture = the prior's [ours: spec §5 same family as the victim]
    width: float = 1.0              # surrogate channel-width multiplier = the prior's (1 = published) [ours]
    stem: str = "auto"              # surrogate stem = the prior's: auto (cifar for <= 32 px) | cifar | imagenet [ours]
    passes: int = 10                # E_gen: passes over D, inner + outer per mini-batch [ours: spec §2.10 step 2]
    batch_size: int = 128           # mini-batch, images (inner SGD and outer PGD) [ours: spec §2.10 step 2]
    inner_steps: int = 5            # M: inner SGD steps per mini-batch, on B and the next batches [ours: spec §2.10 2a]
    lr: float = 0.01                # inner SGD learning rate, constant, all trainable layers [ours: spec §2.10 2a]
    momentum: float = 0.9           # inner SGD momentum [ours: spec §2.10 2a]
    weight_decay: float = 5e-4      # inner SGD weight decay [ours: spec §2.10 2a]
    grad_clip: float = 0.0          # inner global grad-norm clip, 0 = off [ours: spec §2.10 names none]
    crop_padding: int = 4           # A: random-crop zero padding, px (0 = no crop) [ours: spec §1 A]
    flip: bool = True               # A: horizontal flip with p = 0.5 [ours: spec §1 A]
    steps: int = 10                 # S: outer sign-PGD iterations per mini-batch [ours: spec §2.10 2b]
    alpha: float = 2 / 255          # outer PGD step, [0,1] pixel units [ours: spec §2.10 2b]
    outer_eot: bool = False         # outer gradient through A (EOT) [ours: spec §2.10 2b "optional"]
    eot: int = 2                    # J: A-draws per outer step when outer_eot (folded in the batch) [ours: §2.10 2b]
    regen_steps: int = 20           # final regeneration against the final θ: PGD iterations, 0 = skip [ours: §2.10 3]
    regen_alpha: float = 1 / 255    # final regeneration step, [0,1] pixel units [ours: spec §2.10 step 3]
    init: str = "uniform"           # δ start: uniform U(−ε, ε) [ours: spec §2.10 step 1] | zero [ours]
    target_shift: int = 1           # π(y) = (y + target_shift) mod K; 1 <= shift < K is a derangement [ours: spec §1 π]
    ensemble: bool = False          # average the outer gradient over ensemble_paradigms surrogates [ours: §2.10 4]
    ensemble_paradigms: str = "ft,pf2,lp"  # comma list of ft | lp | pf1 | pf2 | pf3 (spec §5) [ours: spec §2.10 step 4]
    eval_batch_size: int = 512      # images per batch of the per-pass diagnostics [ours]

    def members(self) -> List[str]:
        """The surrogates' paradigms: ``["ft"]``, or the ensemble's (in the order given)."""
        if not self.ensemble:
            return ["ft"]
        return [p.strip().lower() for p in str(self.ensemble_paradigms).split(",") if p.strip()]


def _check(cfg: BAITConfig, num_classes: int, n: int) -> None:
    """ConfigErrors, each naming the field, before any work is done."""
    if not str(cfg.prior).strip():
        raise ConfigError(f"bait.prior is empty. {PRIOR_HELP.format(name='BAIT')}")
    check_common(cfg, "bait")

    def bad(field: str, why: str):
        raise ConfigError(f"bait.{field}={getattr(cfg, field)!r}: {why}")

    if cfg.passes < 1:
        bad("passes", "must be >= 1 (passes over the data alternating fine-tuning and binding, E_gen = 10)")
    if cfg.inner_steps < 0:
        bad("inner_steps", "must be >= 0 (SGD steps per mini-batch; 0 = no simulated fine-tuning)")
    if cfg.regen_steps < 0:
        bad("regen_steps", "must be >= 0 (0 = publish the passes' δ without the final regeneration)")
    if not cfg.regen_alpha > 0:
        bad("regen_alpha", "the regeneration step must be > 0 (in [0,1] pixel units, e.g. 1/255)")
    if cfg.crop_padding < 0:
        bad("crop_padding", "must be >= 0 pixels (0 = no random crop)")
    if cfg.eval_batch_size < 1:
        bad("eval_batch_size", "must be >= 1")
    if cfg.init not in INITS:
        bad("init", f"expected one of {', '.join(INITS)}")
    if cfg.stem not in ("auto", "cifar", "imagenet"):
        bad("stem", "expected auto, cifar or imagenet (the prior's stem layout)")
    members = cfg.members()
    unknown = [p for p in members if p not in PARADIGMS]
    if cfg.ensemble and (not members or unknown or len(set(members)) != len(members)):
        bad("ensemble_paradigms", f"expected a comma list of distinct paradigms among {', '.join(PARADIGMS)} "
                                  f"(docs/methods.md §5), e.g. ft,pf2,lp" + (f"; unknown: {unknown}" if unknown else ""))
    if num_classes < 2:
        raise ConfigError(f"bait binds each image to another class π(y) and needs >= 2 classes, got {num_classes}")
    if not 1 <= cfg.target_shift < num_classes:
        bad("target_shift", f"π(y) = (y + shift) mod K has no fixed point only for 1 <= shift < K = {num_classes}")
    if n < 2:
        raise ConfigError(f"bait fine-tunes a surrogate with batch statistics and needs >= 2 training images, got {n}")


# =====================================================================================
# Surrogates: prior + fresh head, one per paradigm
# =====================================================================================


class _Stacked(torch.nn.Module):
    """The members' logits stacked along the batch: (P·B, K); member m occupies rows [mB, (m+1)B)."""

    def __init__(self, members: List[torch.nn.Module]):
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m(x) for m in self.members])


# =====================================================================================
# The method
# =====================================================================================


@PROTECTIONS.register("bait")
class BAIT(Protection):
    """Binds each image to a wrong class π(y) against a surrogate fine-tuned from a prior (our reconstruction).

    Details and sources: the module docstring.
    """

    Config = BAITConfig

    def __init__(self):
        self.surrogates: Dict[str, torch.nn.Module] = {}

    @staticmethod
    def work(cfg: BAITConfig, n: int, num_classes: int) -> dict:
        """Image passes (forward + backward of the surrogate, ueperf.engine.cost), × P members: per
        pass ⌈n/b⌉ mini-batches × M inner steps × b + every image × S outer PGD steps × J EOT draws
        + n/3 (the pass's diagnostics); then every image × ``regen_steps`` × J and two final rates
        (2n/3). Loading the prior is small beside them."""
        P, J = len(cfg.members()), (int(cfg.eot) if cfg.outer_eot else 1)
        bs = max(1, min(int(cfg.batch_size), n))
        per_pass = math.ceil(n / bs) * cfg.inner_steps * bs + n * cfg.steps * J + n / 3
        passes = P * (cfg.passes * per_pass + n * cfg.regen_steps * J + 2 * n / 3)
        return {"passes": passes, "model": cfg.model, "width": cfg.width,
                "what": f"bait ({cfg.passes} pass{'es' if cfg.passes != 1 else ''}"
                        f"{f' × {P} surrogates' if P > 1 else ''} + {cfg.regen_steps} regeneration steps)"}

    def generate(self, ctx: ProtectContext) -> Perturbation:
        cfg: BAITConfig = ctx.cfg
        dev, x_u8, y, K = ctx.device, ctx.x, ctx.y, int(ctx.num_classes)
        n = int(x_u8.shape[0])
        _check(cfg, K, n)
        if ctx.world_size > 1 and ctx.gather is None:
            raise RuntimeError("bait: a ProtectContext with world_size > 1 needs ctx.gather (the runner provides it)")
        t0 = time.perf_counter()
        base, prior = build_from_prior(cfg, ctx, "bait")
        names = cfg.members()
        models, opts, frozen = [], [], {}
        for name in names:
            m = copy.deepcopy(base)
            frozen[name] = freeze(m, name)
            models.append(m)
            opts.append(torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=cfg.lr,
                                        momentum=cfg.momentum, weight_decay=cfg.weight_decay))
        del base
        net = models[0] if len(models) == 1 else _Stacked(models)
        targets = (y + int(cfg.target_shift)) % K   # π(y), a derangement

        # ── this rank's rows: pos[i] = row of sample i in the shard (−1: another rank's) ──
        shard = (ctx.shard if ctx.shard is not None else torch.arange(n, device=dev)).to(dev)
        pos = torch.full((n,), -1, dtype=torch.long, device=dev)
        pos[shard] = torch.arange(shard.numel(), device=dev)
        whole = shard.numel() == n  # one process: every batch is entirely ours, no masking (no sync)

        # ── step 1: δ ~ U(−ε, ε), the same on every rank (chunked: no float copy of the set) ──
        delta = torch.zeros(x_u8.shape, dtype=torch.float32, device=dev)
        if cfg.init == "uniform":
            g0 = ctx.generator(SALT_DELTA)
            for s in range(0, n, cfg.eval_batch_size):
                delta[s:s + cfg.eval_batch_size] = random_start(to_float(x_u8[s:s + cfg.eval_batch_size]),
                                                                eps=cfg.eps, norm=cfg.norm, generator=g0)

        ac = autocast_dtype(dev)
        J = int(cfg.eot) if cfg.outer_eot else 1
        loss_fn = summed_ce(J * len(models))
        inner_aug = eot_augment(1, crop_padding=cfg.crop_padding, flip=cfg.flip)
        bs = min(int(cfg.batch_size), n)
        ar = torch.arange(bs, device=dev)
        n_batches = math.ceil(n / bs)

        def craft(rows: torch.Tensor, batch: torch.Tensor, steps: int, alpha: float, g: torch.Generator) -> None:
            """Outer PGD on the samples of the global mini-batch ``batch`` that are this rank's;
            their new δ is written into ``rows`` (the shard's buffer)."""
            sel = None
            sub = batch
            if not whole:
                sel = (pos[batch] >= 0).nonzero().squeeze(1)  # one host sync per batch
                if sel.numel() == 0:
                    return
                sub = batch[sel]
            r = pos[sub]
            aug = eot_augment(J, crop_padding=cfg.crop_padding, flip=cfg.flip, global_batch=batch.numel(),
                              rows=sel) if cfg.outer_eot else None
            with Frozen(models):
                d = pgd(net, to_float(x_u8[sub]), targets[sub], rows[r], eps=cfg.eps, alpha=alpha, steps=steps,
                        norm=cfg.norm, sign=-1.0, loss_fn=loss_fn, augment=aug, generator=g, autocast_dtype=ac)
            rows.index_copy_(0, r, d)

        def assemble(rows: torch.Tensor) -> torch.Tensor:
            if ctx.gather is not None:
                return ctx.gather(rows)
            full = delta.clone()  # one process without a gather: put the shard's rows in place
            full.index_copy_(0, shard, rows)
            return full

        # ── step 2: passes ──
        t_pass0 = time.perf_counter()
        hist: List[Dict] = []
        bar = progress_bar(ctx, cfg.passes, "bait passes")
        for p in range(cfg.passes):
            tp = time.perf_counter()
            order = torch.randperm(n, generator=ctx.generator(SALT_ORDER, p), device=dev)
            rows = delta.index_select(0, shard)        # the new δ of this rank's rows; `delta` stays pass-start
            loss_sum = torch.zeros((), device=dev)
            inner = progress_bar(ctx, n_batches, f"pass {p + 1}", leave=False)
            for j in range(n_batches):
                # (a) inner: M SGD steps on B_j and the next batches (pass order, wrapping), true labels.
                if cfg.inner_steps:
                    g_in = ctx.generator(SALT_INNER, p, j)
                    for m in models:
                        m.train()
                    for k in range(cfg.inner_steps):
                        idx = order[(ar + (j + k) * bs) % n]
                        xa = inner_aug((to_float(x_u8[idx]) + delta[idx]).clamp_(0, 1), g_in)  # A(x + δ), NCHW
                        for m, opt in zip(models, opts):
                            loss_sum += sgd_step(m, opt, xa, y[idx], cfg.grad_clip, dev)
                # (b) outer: S sign-PGD steps towards π(y) on this rank's part of B_j.
                craft(rows, order[j * bs:(j + 1) * bs], cfg.steps, cfg.alpha, ctx.generator(SALT_OUTER, p, j))
                if inner is not None:
                    inner.update(1)
            if inner is not None:
                inner.close()
            delta = assemble(rows)
            for m in models:
                sync_model(m, ctx)
            # diagnostics on the whole set (one host sync per pass)
            # (target_rate / train_acc: the first member's; with an ensemble also each member's, suffixed)
            rec: Dict = {"pass": p + 1}
            for i, (name, m) in enumerate(zip(names, models)):
                acc, tgt = rates(m, x_u8, y, batch=cfg.eval_batch_size, delta_of=delta.__getitem__,
                                 targets=targets).tolist()
                if i == 0:
                    rec["target_rate"], rec["train_acc"] = tgt, acc
                if len(models) > 1:
                    rec[f"target_rate_{name}"], rec[f"train_acc_{name}"] = tgt, acc
            steps_done = max(n_batches * cfg.inner_steps * len(models), 1)
            rec["inner_loss"] = float(loss_sum.item()) / steps_done
            rec["pass_s"] = time.perf_counter() - tp
            hist.append(rec)
            ctx.log(rec)
            if bar is not None:
                bar.set_postfix(target=f"{100 * rec['target_rate']:.1f}%", fit=f"{100 * rec['train_acc']:.1f}%")
                bar.update(1)
        if bar is not None:
            bar.close()
        passes_s = time.perf_counter() - t_pass0

        # ── step 3: regeneration of every δ against the final surrogate(s) ──
        if cfg.regen_steps:
            rows = delta.index_select(0, shard)
            every = torch.arange(n, device=dev)
            rbar = progress_bar(ctx, n_batches, "bait regenerate", leave=False)
            for j in range(n_batches):
                craft(rows, every[j * bs:(j + 1) * bs], cfg.regen_steps, cfg.regen_alpha,
                      ctx.generator(SALT_REGEN, j))
                if rbar is not None:
                    rbar.update(1)
            if rbar is not None:
                rbar.close()
            delta = assemble(rows)
        for m in models:
            m.eval()
        self.surrogates = dict(zip(names, models))

        # ── what the manifest records ──
        members: Dict[str, Dict] = {}
        for name, m in zip(names, models):
            ac_c, tg_c = rates(m, x_u8, y, batch=cfg.eval_batch_size, targets=targets).tolist()
            ac_p, tg_p = rates(m, x_u8, y, batch=cfg.eval_batch_size, delta_of=delta.__getitem__, targets=targets,
                               published=True).tolist()
            members[name] = {"frozen_groups": frozen[name], "acc_clean": ac_c, "acc_protected": ac_p,
                             "target_rate_clean": tg_c, "target_rate_protected": tg_p}
        first = members[names[0]]
        info = {
            "target_map": f"(y+{cfg.target_shift}) mod K",
            "passes": cfg.passes,
            "target_rate_protected": first["target_rate_protected"],  # f_θ(x') = π(y), published images
            "target_rate_clean": first["target_rate_clean"],
            "acc_protected": first["acc_protected"], "acc_clean": first["acc_clean"],
            "history": hist,
            "steps": cfg.steps, "alpha": cfg.alpha, "regen_steps": cfg.regen_steps, "regen_alpha": cfg.regen_alpha,
            "eot": f"crop+flip x{J}" if cfg.outer_eot else "none",
            "members": members,
            "prior": prior,
            "surrogate": {"model": cfg.model, "width": cfg.width, "stem": cfg.stem, "num_classes": K,
                          "training": "fine-tuned from the prior with a fresh head, jointly with δ (true labels, A)",
                          "paradigms": names, "sgd_steps": cfg.passes * n_batches * cfg.inner_steps,
                          "optimizer": f"SGD lr {cfg.lr} momentum {cfg.momentum} wd {cfg.weight_decay}"},
            "crafted_on_this_rank": int(shard.numel()),
            "prior_load_s": t_pass0 - t0,
            "passes_s": passes_s,
            "generation_s": time.perf_counter() - t0,
        }
        ctx.log({k: v for k, v in info.items() if isinstance(v, (int, float, str))})
        return Perturbation(delta=delta, granularity="sample", norm=cfg.norm, eps=float(cfg.eps), info=info)
