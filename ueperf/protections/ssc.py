"""SSC — Shallow Semantic Camouflage, channel-level semantic perturbations (seed (c)), spec §2.11:
OUR INTERPRETATION.

Only the abstract and summaries of the paper exist: unlearnable examples weaken when a victim
loads pretrained weights and **freezes** its shallow layers, because the frozen layers keep
extracting semantics and filter out noise-like shortcuts; SSC restricts the perturbation to a
"semantically valid subspace" at channel level so that the shortcut passes the frozen shallow
layers and still lures the trainable deep ones. Everything below is spec §2.11's reconstruction.

Split a surrogate built from a **pretrained prior** (fresh head) into S = stem + stages 1..k
(``shallow_stage``, k = 1; frozen, BN in eval mode: paradigm PF-k of spec §5) and D + h (stages
k+1.. and the head, trained). With a(x) = S(x) (B, C, h, w) and Δ = a(x + δ) − a(x):

1. **linear probe**: the fresh head h is fitted on the prior's frozen features of the clean
   images (``probe_epochs`` epochs of SGD on cached features, so it costs one forward pass);
2. **semantic channel mask**: s_c = E_x mean_spatial |a_c(x) · ∂L(h(D(S(x))), y)/∂a_c(x)|
   (gradient × activation, L = cross-entropy, clean images); M = the top ⌈ρ·C⌉ channels
   (``rho`` = 25 %); u_k, k < K: fixed random unit vectors over the semantic channels;
3. **EM-style min-min** (the loop of :func:`ueperf.protections.crafting.min_min_rounds`):
   ``train_steps`` (10) SGD batches on (x + δ, y) for D and h (lr 0.01, S frozen: simulating
   PF-k) ↔ ``steps`` (20) sign-PGD iterations (α = 0.8/255, ε = 8/255) on every δ_i minimising

       L_SSC = CE(h(D(S(x + δ))), y) + λ_sub·R_sub + λ_cls·R_cls
       R_sub = ‖(1 − M) ⊙ Δ‖² / (‖Δ‖² + 1e-8)        energy of the change outside the semantic channels
       R_cls = −cos(GAP(M ⊙ Δ)|_M, u_y)              the in-subspace change points at a class code

   (per-sample terms, summed over the batch, so a sample's step does not depend on its
   batch-mates); stop when the surrogate fits > 1 − ``stop_error`` (99 %) of the perturbed set,
   or after ``max_rounds`` (20).

``variant="rgb"`` is spec §7 item 9's alternative reading of "channel-level": RGB colour-channel
semantics. δ is class-wise, a smooth per-channel offset field δ_k = Up(p_k) (p_k: a
``rgb_grid`` × ``rgb_grid`` × 3 grid of values in [−ε, ε], bilinear up-sampling with aligned
corners, so every pixel is a convex combination of grid values and stays in the ε-ball),
optimised with the same L_SSC (R_sub confines it to the colour changes that the frozen stem maps
to the semantic channels): each round the model step above, then one pass over a seeded
``rgb_portion`` of the set in ``batch_size`` batches, ``steps`` sign steps of ``alpha`` on the
grid per batch (the gradient of the batch's summed L_SSC), clamped to [−ε, ε]; the stop test on
that subset, as EM's class-wise noise.

Diagnostics (manifest ``info``): the surrogate's accuracy on the clean and the published images,
and the **camouflage** on the published images: ``in_mask_energy`` = ‖M ⊙ Δ‖² / ‖Δ‖² (mean over
images) and ``code_cos`` = cos(GAP(M ⊙ Δ)|_M, u_y), each beside the same numbers for uniform
random noise of the same ε (``*_random``), so one can see whether the perturbation lives in the
semantic channels more than noise does.

Several processes: every rank fits the same probe and mask (rank 0's are broadcast), the loop
shards the noise step by sample as EM does; the rgb variant's class-wise fields are computed by
every rank identically and rank 0's are broadcast.

Shapes and units: δ float32 NHWC in [0, 1] pixel units on ``ctx.device``, (N, H, W, 3) for the
feature variant, (K, H, W, 3) for rgb. Activations are compared in float32.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from . import PROTECTIONS
from ..engine.schedule import lr_factor
from ..paradigms import freeze
from ..precision import autocast_auto
from .base import Perturbation, ProtectContext, Protection, quantise, to_model
from .crafting import (BatchStream, Frozen, agree, check_common, end_round, min_min_rounds, model_step,
                       progress_bar, rates, sgd_step, sync_model, to_float)
from .priors import PRIOR_HELP, build_from_prior

# Generator salts: one independent, reproducible random stream per purpose.
SALT_PROBE, SALT_CODES, SALT_RANDOM, SALT_RGB_SUBSET, SALT_RGB_BATCHES = 0x55C0, 0x55C1, 0x55C2, 0x55C3, 0x55C4

VARIANTS = ("feature", "rgb")


@dataclass
class SSCConfig:
    eps: float = 8 / 255            # ε, budget in [0,1] pixel units [ours: spec §2.11]
    norm: str = "linf"              # linf [ours: spec §2.11] | l2 (feature variant only) [ours]
    variant: str = "feature"        # feature: per-sample δ in S's semantic channels | rgb: class-wise colour fields [ours: §2.11, §7.9]
    prior: str = ""                 # prior: path of a torchvision-format state dict; required [ours: §2.11, §5]
    model: str = "resnet18"         # surrogate architecture = the prior's [ours: spec §5 same family as the victim]
    width: float = 1.0              # surrogate channel-width multiplier = the prior's (1 = published) [ours]
    stem: str = "auto"              # surrogate stem = the prior's: auto (cifar for <= 32 px) | cifar | imagenet [ours]
    shallow_stage: int = 1          # k: S = stem + stages 1..k, frozen (PF-k); D = the rest [ours: spec §2.11]
    rho: float = 0.25               # fraction of S's output channels in the semantic mask M [ours: spec §2.11]
    probe_images: int = 0           # clean images for the linear probe and channel scores, 0 = all [ours]
    probe_epochs: int = 10          # linear-probe epochs on cached clean features [ours: §2.11 "quick linear probe"]
    probe_lr: float = 0.1           # linear-probe SGD learning rate (momentum 0.9, batch 256) [ours]
    lambda_sub: float = 1.0         # λ_sub, weight of R_sub (energy outside M) [ours: spec §2.11]
    lambda_cls: float = 1.0         # λ_cls, weight of R_cls (class code in M) [ours: spec §2.11]
    max_rounds: int = 20            # cap on model-step/noise-step rounds [ours: spec §2.11 "20 passes"]
    train_steps: int = 10           # SGD batches of D + h per round [ours: spec §2.11 "10 model batches"]
    train_batch_size: int = 128     # model-step batch, images [ours: EM's, spec §2.1]
    lr: float = 0.01                # model-step SGD learning rate, constant [ours: spec §2.11 "SGD 0.01"]
    momentum: float = 0.9           # model-step SGD momentum [ours: EM's, spec §2.1]
    weight_decay: float = 5e-4      # model-step SGD weight decay [ours: EM's, spec §2.1]
    grad_clip: float = 5.0          # model-step global grad-norm clip, 0 = off [ours: EM's, spec §2.1]
    steps: int = 20                 # sign-PGD iterations per noise batch [ours: spec §2.11]
    alpha: float = 0.8 / 255        # PGD step, [0,1] pixel units [ours: spec §2.11]
    batch_size: int = 512           # noise-step batch, images [ours: EM's, spec §2.1]
    stop_error: float = 0.01        # stop when the surrogate's error on the perturbed set < this [ours: §2.11 "99 %"]
    random_start: bool = False      # start δ uniform in the ball instead of 0 (feature variant) [ours: EM's start 0]
    rgb_grid: int = 4               # rgb variant: grid points per side of a class's colour field [ours: spec §7.9]
    rgb_portion: float = 0.2        # rgb variant: fraction of the set each noise pass visits [ours: EM class-wise's]
    eval_batch_size: int = 1024     # stop-test and diagnostics batch, images [ours]

    def resolved_steps(self) -> int:
        return int(self.steps)


def _check(cfg: SSCConfig, num_classes: int, n: int) -> None:
    """ConfigErrors, each naming the field, before any work is done."""
    if not str(cfg.prior).strip():
        raise ConfigError(f"ssc.prior is empty. {PRIOR_HELP.format(name='SSC')}")
    check_common(cfg, "ssc")

    def bad(field: str, why: str):
        raise ConfigError(f"ssc.{field}={getattr(cfg, field)!r}: {why}")

    if cfg.variant not in VARIANTS:
        bad("variant", f"expected one of {', '.join(VARIANTS)} (feature = docs/methods.md §2.11, rgb = §7.9)")
    if cfg.variant == "rgb" and cfg.norm != "linf":
        bad("norm", "the rgb variant's colour fields live in an ℓ∞ box; use norm=linf")
    if not 0 < cfg.rho <= 1:
        bad("rho", "the fraction of shallow channels in the semantic mask must be in (0, 1]")
    if cfg.shallow_stage < 1:
        bad("shallow_stage", "S = stem + stages 1..k needs k >= 1")
    if cfg.max_rounds < 1:
        bad("max_rounds", "must be >= 1 (rounds of model + noise steps)")
    if cfg.train_steps < 0 or cfg.train_batch_size < 1 or cfg.eval_batch_size < 1:
        raise ConfigError(f"ssc: train_steps must be >= 0 and train_batch_size, eval_batch_size >= 1 (got "
                          f"{cfg.train_steps}, {cfg.train_batch_size}, {cfg.eval_batch_size})")
    if cfg.steps < 1:
        bad("steps", "must be >= 1 (sign-PGD iterations per noise batch)")
    if cfg.probe_images < 0 or cfg.probe_epochs < 0 or not cfg.probe_lr > 0:
        raise ConfigError(f"ssc: probe_images and probe_epochs must be >= 0 and probe_lr > 0 (got "
                          f"{cfg.probe_images}, {cfg.probe_epochs}, {cfg.probe_lr})")
    if not (cfg.lambda_sub >= 0 and cfg.lambda_cls >= 0):
        raise ConfigError(f"ssc: lambda_sub and lambda_cls must be >= 0 (got {cfg.lambda_sub}, {cfg.lambda_cls})")
    if not 0 <= cfg.stop_error < 1:
        bad("stop_error", "must be in [0, 1) (0.01 = stop at 99 % accuracy)")
    if cfg.rgb_grid < 2:
        bad("rgb_grid", "a colour field needs >= 2 grid points per side")
    if not 0 < cfg.rgb_portion <= 1:
        bad("rgb_portion", "must be in (0, 1] (fraction of the training set)")
    if num_classes < 2:
        raise ConfigError(f"ssc ties perturbations to class codes and needs >= 2 classes, got {num_classes}")
    if n < 2:
        raise ConfigError(f"ssc trains its surrogate with batch statistics and needs >= 2 images, got {n}")


class _StopForward(Exception):
    """Raised by the shallow hook to end a forward pass once S's output is captured."""


class Camouflage:
    """S's output captured by a forward hook, and the SSC objective on it.

    ``module`` is the last layer group of S. :meth:`shallow` runs S only (the hook raises after
    capturing) and :meth:`prepare` stores the clean batch's a(x) with it; during a full forward
    the hook keeps a(x + δ) for :meth:`loss`; ``grad`` mode makes a(x) a leaf so ∂L/∂a can be
    read (channel scores).
    """

    def __init__(self, model: torch.nn.Module, module: torch.nn.Module, mask_idx: Optional[torch.Tensor],
                 codes: Optional[torch.Tensor], lambda_sub: float, lambda_cls: float):
        self.model, self.mask_idx, self.codes = model, mask_idx, codes
        self.lambda_sub, self.lambda_cls = float(lambda_sub), float(lambda_cls)
        self.mode, self.out, self.ref = "keep", None, None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, out):
        if self.mode == "stop":
            self.out = out
            raise _StopForward
        if self.mode == "grad":
            out = out.detach().requires_grad_(True)
        self.out = out
        return out

    def remove(self) -> None:
        self.handle.remove()

    def shallow(self, x_nhwc: torch.Tensor) -> torch.Tensor:
        """a(x) for a batch of [0,1] NHWC images, float32, without running D (no grad)."""
        self.mode = "stop"
        try:
            with torch.no_grad(), autocast_auto(x_nhwc.device):
                self.model(to_model(x_nhwc))
        except _StopForward:
            pass
        finally:
            self.mode = "keep"
        out, self.out = self.out.float(), None
        return out

    def set_mask(self, mask_idx: torch.Tensor, codes: torch.Tensor) -> None:
        self.mask_idx, self.codes = mask_idx, codes

    def terms(self, y: torch.Tensor):
        """(R_sub, R_cls, in-mask energy fraction) per sample, from the last captured a(x + δ)
        and the reference a(x) of :meth:`prepare`."""
        d = channels_first(self.out.float() - self.ref)
        keep = torch.zeros(d.shape[1], device=d.device, dtype=d.dtype).index_fill_(0, self.mask_idx, 1.0)
        e_all = d.pow(2).sum(2)                            # (B, C)
        e_in = (e_all * keep).sum(1)
        total = e_all.sum(1)
        r_sub = (total - e_in) / (total + 1e-8)
        gap = d.mean(2).index_select(1, self.mask_idx)     # GAP(M ⊙ Δ) restricted to M
        r_cls = -F.cosine_similarity(gap, self.codes.index_select(0, y), dim=1, eps=1e-8)
        return r_sub, r_cls, e_in / (total + 1e-8)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Σ_batch [CE + λ_sub·R_sub + λ_cls·R_cls] (the one PGD's loss_fn)."""
        ce = F.cross_entropy(logits.float(), y, reduction="none")
        r_sub, r_cls, _ = self.terms(y)
        return (ce + self.lambda_sub * r_sub + self.lambda_cls * r_cls).sum()

    def prepare(self, x_nhwc: torch.Tensor) -> None:
        """Store a(x) of the clean batch the next PGD runs on."""
        self.ref = self.shallow(x_nhwc)


def shallow_group(model: torch.nn.Module, k: int):
    """(index, module) of the last layer group of stage <= k: S's output is that module's."""
    stages = model.group_stages()
    head = max(stages)
    if not 1 <= k < head - 1:
        raise ConfigError(f"ssc.shallow_stage={k}: {getattr(model, 'arch', 'the model')} has stages 1..{head - 1}; "
                          f"S = stem + stages 1..k must leave at least one stage to D (1 <= k <= {head - 2})")
    i = max(j for j, s in enumerate(stages) if s <= k)
    return i, model.group_output_module(i)


# =====================================================================================
# Setup: probe, channel scores, codes
# =====================================================================================


def _probe_rows(cfg: SSCConfig, ctx: ProtectContext) -> torch.Tensor:
    n = int(ctx.x.shape[0])
    if cfg.probe_images and cfg.probe_images < n:
        g = ctx.generator(SALT_PROBE)
        return torch.randperm(n, generator=g, device=ctx.device)[:cfg.probe_images].sort().values
    return torch.arange(n, device=ctx.device)


def linear_probe(model, rows: torch.Tensor, cfg: SSCConfig, ctx: ProtectContext) -> float:
    """Fit ``model.head`` on the frozen clean features of ``rows``; returns its accuracy there."""
    model.eval()
    feats = []
    with torch.no_grad():
        for s in range(0, rows.numel(), cfg.eval_batch_size):
            idx = rows[s:s + cfg.eval_batch_size]
            with autocast_auto(ctx.device):
                feats.append(model.features(to_model(to_float(ctx.x[idx]))).float())
    f, y = torch.cat(feats), ctx.y[rows]
    head = model.head
    opt = torch.optim.SGD(head.parameters(), lr=cfg.probe_lr, momentum=0.9, weight_decay=5e-4)
    g = ctx.generator(SALT_PROBE, 1)
    bs = min(256, f.shape[0])
    steps = cfg.probe_epochs * max(1, f.shape[0] // bs)
    for t in range(steps):
        if t % max(1, f.shape[0] // bs) == 0:
            order = torch.randperm(f.shape[0], generator=g, device=f.device)
        b = order[(t % max(1, f.shape[0] // bs)) * bs:][:bs]
        for group in opt.param_groups:
            group["lr"] = cfg.probe_lr * lr_factor("cosine", t, max(steps, 1))
        sgd_step(head, opt, f[b], y[b], 0.0, ctx.device)
    with torch.no_grad():
        return float((head(f).argmax(1) == y).double().mean())


def channels_first(a: torch.Tensor) -> torch.Tensor:
    """S's output as (N, C, positions): a CNN's (N, C, H, W) maps flattened over H·W; a vision
    transformer's (N, T, D) tokens as D channels over T positions (the embedding dimensions play
    the channels' part, the tokens the spatial positions') [ours: the paper's S is a CNN]."""
    if a.dim() == 3:
        return a.transpose(1, 2)
    return a.flatten(2)


def channel_scores(model, cam: Camouflage, rows: torch.Tensor, cfg: SSCConfig, ctx: ProtectContext) -> torch.Tensor:
    """s_c = mean over images and positions of |a_c · ∂CE/∂a_c| on the clean images ``rows``."""
    model.eval()
    total = None
    cam.mode = "grad"
    try:
        for s in range(0, rows.numel(), cfg.eval_batch_size):
            idx = rows[s:s + cfg.eval_batch_size]
            with torch.enable_grad(), autocast_auto(ctx.device):
                logits = model(to_model(to_float(ctx.x[idx])))
            a = cam.out
            g, = torch.autograd.grad(F.cross_entropy(logits.float(), ctx.y[idx], reduction="sum"), a)
            sc = channels_first((a.detach().float() * g.float()).abs()).mean(2).sum(0)
            total = sc if total is None else total + sc
    finally:
        cam.mode, cam.out = "keep", None
    return total / max(rows.numel(), 1)


# =====================================================================================
# The method
# =====================================================================================


@PROTECTIONS.register("ssc")
class SSC(Protection):
    """Shallow semantic camouflage: channel-level noise against a partly frozen surrogate from a prior (our reconstruction).

    Details and sources: the module docstring.
    """

    Config = SSCConfig

    @staticmethod
    def work(cfg: SSCConfig, n: int, num_classes: int) -> dict:
        """Image passes (forward + backward of the surrogate, ueperf.engine.cost) at the round cap:
        per round M·B (model step) + the noised images × T PGD steps + n/3 (stop test); the probe and
        the diagnostics are small beside them."""
        rows = n if cfg.variant == "feature" else max(1, int(round(cfg.rgb_portion * n)))
        per_round = cfg.train_steps * cfg.train_batch_size + rows * cfg.resolved_steps() + n / 3
        return {"passes": cfg.max_rounds * per_round, "model": cfg.model, "width": cfg.width,
                "what": f"ssc at its cap of {cfg.max_rounds} round{'s' if cfg.max_rounds != 1 else ''} (fewer "
                        f"when the stop test is met)"}

    def __init__(self):
        self.surrogate: Optional[torch.nn.Module] = None
        self.mask: Optional[torch.Tensor] = None

    def generate(self, ctx: ProtectContext) -> Perturbation:
        cfg: SSCConfig = ctx.cfg
        dev, K, n = ctx.device, int(ctx.num_classes), int(ctx.x.shape[0])
        _check(cfg, K, n)
        if ctx.world_size > 1 and ctx.gather is None:
            raise RuntimeError("ssc: a ProtectContext with world_size > 1 needs ctx.gather (the runner provides it)")
        t0 = time.perf_counter()
        model, prior = build_from_prior(cfg, ctx, "ssc")
        k = int(cfg.shallow_stage)
        gi, module = shallow_group(model, k)
        frozen = freeze(model, f"pf{k}")
        cam = Camouflage(model, module, None, None, cfg.lambda_sub, cfg.lambda_cls)
        try:
            # ── 1-2: probe, channel scores, mask, codes (rank 0's, on every rank) ──
            rows = _probe_rows(cfg, ctx)
            probe_acc = linear_probe(model, rows, cfg, ctx)
            sync_model(model, ctx)
            scores = agree(channel_scores(model, cam, rows, cfg, ctx), ctx)
            C = int(scores.numel())
            m = max(1, math.ceil(cfg.rho * C))
            mask_idx = scores.topk(m).indices.sort().values
            codes = torch.randn(K, m, generator=ctx.generator(SALT_CODES), device=dev)
            codes = codes / codes.norm(dim=1, keepdim=True).clamp_min(1e-12)
            cam.set_mask(mask_idx, codes)
            t_setup = time.perf_counter() - t0

            # ── 3: the min-min loop ──
            opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  momentum=cfg.momentum, weight_decay=cfg.weight_decay)
            if cfg.variant == "feature":
                delta, hist = min_min_rounds(ctx, cfg, model, opt, None, cam.loss,
                                                 prepare=lambda idx: cam.prepare(to_float(ctx.x[idx])), name="ssc")
                granularity = "sample"
            else:
                delta, hist = self._rgb_rounds(ctx, cfg, model, opt, cam)
                granularity = "class"
            model.eval()
            self.surrogate, self.mask = model, mask_idx
            diag = self._diagnostics(ctx, cfg, model, cam, delta, granularity)
        finally:
            cam.remove()
        accs = [h["surrogate_acc"] for h in hist]
        info = {
            "variant": cfg.variant,
            "rounds": len(hist),
            "surrogate_acc": accs[-1],
            "stopped": accs[-1] > 1 - cfg.stop_error,
            "acc_history": accs,
            "shallow": {"stage": k, "group": model.group_names()[gi], "channels": C, "mask_channels": m,
                        "mask": mask_idx.tolist(), "frozen_groups": frozen},
            "probe_acc": probe_acc,
            "probe_images": int(rows.numel()),
            **diag,
            "prior": prior,
            "surrogate": {"model": cfg.model, "width": cfg.width, "stem": cfg.stem, "num_classes": K,
                          "training": f"prior body, fresh head fitted by a linear probe; stem + stages 1..{k} "
                                      f"frozen, the rest trained jointly with δ (true labels)",
                          "sgd_steps": len(hist) * cfg.train_steps,
                          "optimizer": f"SGD lr {cfg.lr} momentum {cfg.momentum} wd {cfg.weight_decay}"},
            "steps": cfg.steps, "alpha": cfg.alpha, "lambda_sub": cfg.lambda_sub, "lambda_cls": cfg.lambda_cls,
            "setup_s": t_setup,
            "generation_s": time.perf_counter() - t0,
        }
        ctx.log({k_: v for k_, v in info.items() if isinstance(v, (int, float, str))})
        return Perturbation(delta=delta, granularity=granularity, norm=cfg.norm, eps=float(cfg.eps), info=info)

    # -- rgb variant: class-wise smooth colour fields -------------------------------------
    @staticmethod
    def _rgb_rounds(ctx: ProtectContext, cfg: SSCConfig, model, opt, cam: Camouflage):
        dev, x_u8, y, K = ctx.device, ctx.x, ctx.y, int(ctx.num_classes)
        n, H, W = int(x_u8.shape[0]), int(x_u8.shape[1]), int(x_u8.shape[2])
        g = int(cfg.rgb_grid)

        def field(p: torch.Tensor) -> torch.Tensor:  # (K, 3, g, g) → (K, H, W, 3)
            return F.interpolate(p, size=(H, W), mode="bilinear", align_corners=True).permute(0, 2, 3, 1)

        sub_n = max(1, int(round(cfg.rgb_portion * n)))
        sub = torch.randperm(n, generator=ctx.generator(SALT_RGB_SUBSET), device=dev)[:sub_n].sort().values
        p = torch.zeros(K, 3, g, g, device=dev)
        batches = BatchStream(torch.arange(n, device=dev), cfg.train_batch_size, ctx.generator(SALT_RGB_BATCHES))
        hist: List[Dict] = []
        bar = progress_bar(ctx, cfg.max_rounds, "ssc-rgb rounds")
        for r in range(cfg.max_rounds):
            tr = time.perf_counter()
            delta = field(p)
            loss = model_step(model, opt, batches, x_u8, y, lambda idx: delta.index_select(0, y[idx]), cfg, ctx)
            with Frozen([model]):
                for s in range(0, sub_n, cfg.batch_size):
                    idx = sub[s:s + cfg.batch_size]
                    xb, yb = to_float(x_u8[idx]), y[idx]
                    cam.prepare(xb)
                    for _ in range(cfg.steps):
                        pp = p.requires_grad_(True)
                        xa = (xb + field(pp).index_select(0, yb)).clamp(0, 1)
                        with autocast_auto(dev):
                            logits = model(to_model(xa))
                        grad, = torch.autograd.grad(cam.loss(logits, yb), pp)
                        p = (p.detach() - cfg.alpha * grad.sign()).clamp_(-cfg.eps, cfg.eps)
            delta = field(p)
            if end_round(ctx, cfg, model, sub, lambda i, d=delta: d.index_select(0, y[i]), r, loss, tr, hist, bar):
                break
        if bar is not None:
            bar.close()
        if ctx.world_size > 1 and ctx.broadcast is not None:
            p = ctx.broadcast(p.contiguous(), src=0)
        return field(p).contiguous(), hist

    # -- diagnostics ----------------------------------------------------------------------
    @staticmethod
    @torch.no_grad()
    def _diagnostics(ctx: ProtectContext, cfg: SSCConfig, model, cam: Camouflage, delta: torch.Tensor,
                     granularity: str) -> Dict:
        """Surrogate accuracy (clean / published) and the camouflage of the published images vs
        uniform random noise of the same ε, on up to ``eval_batch_size`` images."""
        x_u8, y = ctx.x, ctx.y
        n = int(x_u8.shape[0])
        every = torch.arange(n, device=ctx.device)
        rows_of = (lambda i: delta.index_select(0, i)) if granularity == "sample" else \
            (lambda i: delta.index_select(0, y[i]))
        out = {"acc_clean": float(rates(model, x_u8, y, batch=cfg.eval_batch_size)[0].item()),
               "acc_protected": float(rates(model, x_u8, y, batch=cfg.eval_batch_size, delta_of=rows_of)[0].item())}
        idx = every[:cfg.eval_batch_size]
        x = to_float(x_u8[idx])
        noise = (torch.rand(x.shape, generator=ctx.generator(SALT_RANDOM), device=x.device) * 2 - 1) * cfg.eps
        for name, xp in (("", quantise(x, rows_of(idx))), ("_random", quantise(x, noise))):
            cam.prepare(x)
            cam.out = cam.shallow(xp)  # a(x'), compared with the reference a(x)
            r_sub, r_cls, frac = cam.terms(y[idx])
            out[f"in_mask_energy{name}"] = float(frac.mean())
            out[f"code_cos{name}"] = float(-r_cls.mean())
        cam.out = None
        return out
