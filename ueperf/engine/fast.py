"""The fast-training techniques of airbench (K. Jordan, "94% on CIFAR-10 in 3.29 seconds on a single
GPU", arXiv 2404.00498) as features of the one training loop, each switched by a key of
``RunConfig.fast`` (:class:`ueperf.config.FastConfig`; all off by default, so a recipe that does
not ask for them trains exactly as before; the ``fast_victim`` recipe asks for the paper's choice):

===================  =============================================================  ==========================
key                  what                                                           the trainer calls
===================  =============================================================  ==========================
fast.whiten          first conv = patch whitening of the training images, frozen    :func:`prepare_model`,
                     (its bias trains for ``fast.whiten_bias_epochs``)                :func:`fit_whitening`
fast.identity_init   the first C_in filters of every later conv are the identity   :func:`prepare_model`
fast.bn_momentum     BatchNorm's running-statistics momentum                        :func:`prepare_model`
fast.bn_bias_lr      BatchNorm biases: lr × s, weight decay ÷ s                     :func:`optimizer_groups`
fast.label_smoothing cross-entropy against (1 − ε)·onehot + ε/K                      the training loss
fast.lookahead       slow ← d·slow + (1 − d)·fast, fast ← slow every k steps        :class:`Lookahead`
fast.tta             evaluation logits averaged over flipped / shifted views        :func:`tta_logits`
===================  =============================================================  ==========================

None of them draws from a random stream (the whitening's image sample is seeded by
``train.seed`` alone), so switching one on changes nothing else of a run, and every one survives a
resume bit for bit: the whitening and identity init live in the weights, the optimiser groups are
rebuilt from the config, and the Lookahead's slow weights are saved in every checkpoint.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import ConfigError

TTA_MODES = ("none", "flip", "multicrop")
LOOKAHEAD_POWER = 3   # d = decay^every · (t / T)^3: the Lookahead ramps in over the run [paper]


# ───────────────────────────────────────────── whitening ──
def whitening_layer(model: nn.Module) -> Optional[nn.Conv2d]:
    """The model's patch-whitening convolution (``model.whiten_layer``), or None when it has none."""
    conv = getattr(model, "whiten_layer", None)
    return conv if isinstance(conv, nn.Conv2d) else None


@torch.no_grad()
def patch_moments(images: Any, transform: Callable[[torch.Tensor], torch.Tensor], kernel: int,
                  device: torch.device, batch: int = 256) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """Mean μ (D,) and covariance Σ (D, D), float64, of every ``kernel``×``kernel`` patch (D = C·k·k,
    ordered as a conv weight: channel, row, column) of ``transform(images)``: uint8 (N, H, W, C)
    images through the float transform the model sees. Also returns the number of patches."""
    n_img = len(images)
    s1 = s2 = None
    count = 0
    for i in range(0, n_img, batch):
        xb = torch.from_numpy(np.array(images[i:i + batch])).to(device)  # a copy: memmaps are read-only
        x = transform(xb).float()
        p = F.unfold(x, kernel)                                   # (B, D, L)
        p = p.transpose(1, 2).reshape(-1, p.shape[1]).double()   # (B·L, D)
        s1 = p.sum(0) if s1 is None else s1 + p.sum(0)
        s2 = p.T @ p if s2 is None else s2 + p.T @ p
        count += p.shape[0]
    mean = s1 / count
    cov = s2 / count - torch.outer(mean, mean)
    return mean, (cov + cov.T) / 2, count


def whitening_weights(mean: torch.Tensor, cov: torch.Tensor, eps: float, channels: int,
                      kernel: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weight (2D, C, k, k), bias (2D,), eigenvalues λ (D,) descending), float64, of the whitening
    conv for patches of mean μ and covariance Σ = V Λ Vᵀ:

        w_i = v_i / √(λ_i + ε),  w_{D+i} = −w_i  (i = 1..D, λ descending),  b = −W μ,

    so the first D outputs have mean 0 and covariance diag(λ / (λ + ε)) — the identity, but for
    the directions whose variance is not large against ε — and the last D are their negatives (the
    GELU after the layer then keeps both signs of every direction). The eigendecomposition runs on
    the CPU in float64: the same numbers on every device and rank."""
    evals, evecs = torch.linalg.eigh(cov.detach().cpu().double())
    evals, evecs = evals.flip(0).clamp_min(0.0), evecs.flip(1)
    w = evecs.T / torch.sqrt(evals + eps)[:, None]            # (D, D), row i = v_i / √(λ_i + ε)
    w = torch.cat([w, -w])                                     # (2D, D)
    b = -(w @ mean.detach().cpu().double())
    return w.reshape(-1, channels, kernel, kernel), b, evals


@torch.no_grad()
def fit_whitening(conv: nn.Conv2d, images: Any, transform: Callable[[torch.Tensor], torch.Tensor], *,
                  eps: float, n_images: int = 0, seed: int = 0, batch: int = 256) -> Dict[str, Any]:
    """Set ``conv`` (in place) to the whitening of the patches of ``images`` (uint8 (N, H, W, C),
    the training images only) as the model sees them (``transform``: the evaluation transform),
    measured on ``n_images`` of them drawn with ``seed`` (0 = all). Returns what was fitted."""
    k = conv.kernel_size[0]
    D = conv.in_channels * k * k
    if conv.kernel_size[0] != conv.kernel_size[1] or conv.out_channels != 2 * D or conv.groups != 1:
        raise ConfigError(f"fast.whiten: the whitening layer must be a square k×k conv with 2·C·k·k = {2 * D} "
                          f"outputs, got {conv}")
    n = len(images)
    if n_images and n_images < n:
        idx = np.sort(np.random.default_rng(seed).choice(n, n_images, replace=False))
        images = np.asarray(images)[idx]
    mean, cov, count = patch_moments(images, transform, k, conv.weight.device, batch)
    w, b, evals = whitening_weights(mean, cov, eps, conv.in_channels, k)
    conv.weight.copy_(w.to(conv.weight.dtype))
    if conv.bias is not None:
        conv.bias.copy_(b.to(conv.bias.dtype))
    return {"images": len(images), "patches": count, "eigenvalues": evals.tolist()}


# ───────────────────────────────────────────── model set-up ──
@torch.no_grad()
def identity_init(model: nn.Module, skip: Sequence[nn.Module] = ()) -> int:
    """Partial identity init: every ``nn.Conv2d`` with C_out ≥ C_in (one group, odd square kernel),
    except those in ``skip``, gets its first C_in filters set to the identity (Dirac: output channel
    c = input channel c at the kernel centre); the other filters keep their init. Returns how many
    convs were set."""
    done = 0
    skip_ids = {id(m) for m in skip}
    for m in model.modules():
        if not isinstance(m, nn.Conv2d) or id(m) in skip_ids or m.groups != 1:
            continue
        kh, kw = m.kernel_size
        if m.out_channels < m.in_channels or kh % 2 == 0 or kw % 2 == 0:
            continue
        nn.init.dirac_(m.weight[:m.in_channels])
        done += 1
    return done


def prepare_model(model: nn.Module, f: Any, *, pretrained: bool = False) -> None:
    """The model-side switches of ``f`` (a FastConfig), before the optimiser exists: BatchNorm
    momentum, identity init (not over pretrained weights), and the whitening layer's weights taken
    out of training (the whitening itself is fitted by :func:`fit_whitening` once the images are
    at hand, for a fresh run only)."""
    if f.bn_momentum > 0:
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.momentum = float(f.bn_momentum)
    conv = whitening_layer(model)
    if f.whiten:
        if conv is None:
            raise ConfigError(f"fast.whiten=true needs a model with a patch-whitening stem (fastnet); "
                              f"{getattr(model, 'arch', type(model).__name__)} has none: set model.name=fastnet "
                              f"or fast.whiten=false")
        conv.weight.requires_grad_(False)
    if f.identity_init and not pretrained:
        identity_init(model, skip=[conv] if conv is not None else [])


# ───────────────────────────────────────────── optimiser groups ──
LrRule = Tuple[int, float, Optional[float]]  # (owner layer group j, lr scale, lr 0 from this epoch on)


def no_decay_params(model: nn.Module) -> Dict[int, str]:
    """``optim.wd_exclude=timm``: the parameters timm's optimiser factory exempts from weight
    decay — every parameter of at most one dimension (biases, norm and BatchNorm weights, LayerScale
    gammas) and those the model names in ``no_weight_decay()`` (a transformer's ``pos_embed`` and
    ``cls_token``) — as id → name."""
    names = set(getattr(model, "no_weight_decay", lambda: ())())
    return {id(p): n for n, p in model.named_parameters() if p.ndim <= 1 or n in names}


def optimizer_groups(model: nn.Module, groups: List[Dict[str, Any]], f: Any,
                     weight_decay: float, wd_exclude: str = "none") -> Tuple[List[Dict[str, Any]], List[LrRule]]:
    """The optimiser's param groups and, for each, the rule the trainer sets its lr by:
    lr = schedule · ``lr_mult[owner]`` · scale, or 0 once the fractional epoch reaches ``until``.

    ``groups`` are :func:`~ueperf.engine.trainer.build_param_groups`' (one per layer group, what
    hooks see as ``param_groups``); they stay the first groups of the optimiser, in order. With
    ``fast.bn_bias_lr = s ≠ 1`` each layer group's BatchNorm biases move to a group of their own
    with lr × s and weight decay ÷ s (so lr × weight decay stays); with ``fast.whiten`` the
    whitening bias moves to one that stops at ``fast.whiten_bias_epochs``; with ``wd_exclude =
    "timm"`` the parameters of :func:`no_decay_params` move to one with weight decay 0 (and a
    parameter that is both, e.g. a BatchNorm bias, to one that is both). These are appended after
    the layer groups, named ``<group>.bn_bias`` / ``<group>.whiten_bias`` / ``<group>.no_decay``
    (``<group>.bn_bias.no_decay``, ...). With none of them, the groups are returned as they are,
    each with the rule (j, 1, None): the lr is schedule · lr_mult."""
    special: Dict[int, Tuple[str, float, Optional[float]]] = {}
    if f.bn_bias_lr != 1.0:
        for m in model.modules():
            if isinstance(m, _BatchNorm) and isinstance(m.bias, nn.Parameter):
                special[id(m.bias)] = ("bn_bias", float(f.bn_bias_lr), None)
    conv = whitening_layer(model)
    if f.whiten and conv is not None and conv.bias is not None:
        special[id(conv.bias)] = ("whiten_bias", 1.0, float(f.whiten_bias_epochs))
    no_decay = no_decay_params(model) if wd_exclude == "timm" else {}
    rules: List[LrRule] = [(j, 1.0, None) for j in range(len(groups))]
    if not special and not no_decay:
        return groups, rules
    extra: List[Dict[str, Any]] = []
    for j, g in enumerate(groups):
        keep, moved = [], {}
        for p in g["params"]:
            what, scale, until = special.get(id(p), ("", 1.0, None))
            decays = id(p) not in no_decay
            if not what and decays:
                keep.append(p)
            else:
                moved.setdefault((what, scale, until, decays), []).append(p)
        g["params"] = keep
        for (what, scale, until, decays), params in moved.items():
            name = ".".join(x for x in (g["name"], what, "" if decays else "no_decay") if x)
            extra.append({"params": params, "name": name, "index": g["index"], "mult": g["mult"],
                          "weight_decay": weight_decay / scale if decays else 0.0})
            rules.append((j, scale, until))
    return groups + extra, rules


# ───────────────────────────────────────────── lookahead ──
class Lookahead:
    """Lookahead (Zhang et al. 2019) with airbench's schedule, on every float tensor of the model's
    state (weights and BatchNorm running statistics).

    After optimiser step t (1-based, counted over the whole run of T steps), when t is a multiple of
    ``every``: d_t = ``decay``^every · (t / T)^3, then slow ← d_t · slow + (1 − d_t) · fast and
    fast ← slow. After step T the model keeps the slow weights (fast ← slow). So the averaging is
    weak early (d ≈ 0) and strongest at the end (d = decay^every). The slow copy starts as the
    model at train start and is saved in every checkpoint (:meth:`state_dict`); a hook's in-memory
    snapshots (ST's rollbacks) restore the model and its optimiser, not the slow copy."""

    def __init__(self, model: nn.Module, every: int, decay: float, total_steps: int):
        if every < 1 or total_steps < 1:
            raise ConfigError(f"lookahead: every={every} and the run's {total_steps} steps must be >= 1")
        self.every, self.decay, self.total = int(every), float(decay), int(total_steps)
        # state_dict() tensors alias the live parameters and buffers (copies into them change the model)
        self.live = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
        self.slow = {k: v.detach().clone() for k, v in self.live.items()}

    def decay_at(self, step: int) -> float:
        """d_t of step ``step`` (1-based)."""
        return self.decay ** self.every * (step / self.total) ** LOOKAHEAD_POWER

    @torch.no_grad()
    def sync(self, d: float) -> None:
        """slow ← d · slow + (1 − d) · fast; fast ← slow."""
        for k, s in self.slow.items():
            s.lerp_(self.live[k], 1.0 - d)
            self.live[k].copy_(s)

    def after_step(self, step: int) -> None:
        """After optimiser step ``step`` (1-based, over the run)."""
        if step % self.every == 0:
            self.sync(self.decay_at(step))
        if step == self.total:
            self.sync(1.0)  # the end of training: the model becomes the slow weights

    def state_dict(self) -> Dict[str, Any]:
        return {"slow": self.slow}

    @torch.no_grad()
    def load_state_dict(self, state: Dict[str, Any]) -> None:
        saved = state["slow"]
        if set(saved) != set(self.slow):
            raise ConfigError("the checkpoint's Lookahead state does not fit the model "
                              f"({len(saved)} vs {len(self.slow)} tensors); resume with the run's own config")
        for k, v in saved.items():
            self.slow[k].copy_(v)


# ───────────────────────────────────────────── test-time augmentation ──
def tta_views(x: torch.Tensor, mode: str) -> List[Tuple[float, torch.Tensor]]:
    """(weight, view) pairs of a float (N, C, H, W) batch; the weights sum to 1.

    flip: x and its mirror image, ½ each. multicrop (the paper's six views): x and its mirror ¼ each,
    and x translated by one pixel up-left and down-right (reflection padding), each with its mirror,
    ⅛ each."""
    if mode == "flip":
        return [(0.5, x), (0.5, x.flip(-1))]
    if mode == "multicrop":
        H, W = x.shape[-2:]
        pad = F.pad(x, (1, 1, 1, 1), mode="reflect")
        down_right, up_left = pad[..., :H, :W], pad[..., 2:, 2:]
        return [(0.25, x), (0.25, x.flip(-1)), (0.125, down_right), (0.125, down_right.flip(-1)),
                (0.125, up_left), (0.125, up_left.flip(-1))]
    raise ConfigError(f"fast.tta={mode!r}: expected one of {', '.join(TTA_MODES)}")


def tta_logits(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str) -> torch.Tensor:
    """The model's logits for ``x`` under test-time augmentation ``mode``: Σ_v weight_v · model(view_v)
    in float32 (``none``: model(x) as it is). One forward per view, each view in x's memory format."""
    if mode == "none":
        return model(x)
    fmt = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format
    out = None
    for w, v in tta_views(x, mode):
        z = model(v.contiguous(memory_format=fmt)).float() * w
        out = z if out is None else out + z
    return out


def check(f: Any, parallel_backend: str = "none") -> List[Tuple[bool, str]]:
    """(ok, message) pairs for every value of a FastConfig (see ``engine.validate``)."""
    fin = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    return [
        (f.whiten_images >= 0, f"fast.whiten_images={f.whiten_images}: must be >= 0 images (0 = all)"),
        (fin(f.whiten_eps) and f.whiten_eps > 0, f"fast.whiten_eps={f.whiten_eps}: must be > 0"),
        (fin(f.whiten_bias_epochs) and f.whiten_bias_epochs >= 0,
         f"fast.whiten_bias_epochs={f.whiten_bias_epochs}: must be >= 0 epochs"),
        (fin(f.bn_momentum) and 0 <= f.bn_momentum <= 1,
         f"fast.bn_momentum={f.bn_momentum}: must be in [0, 1] (PyTorch's convention; 0 = the model's own)"),
        (fin(f.bn_bias_lr) and f.bn_bias_lr > 0, f"fast.bn_bias_lr={f.bn_bias_lr}: must be > 0 (1 = off)"),
        (fin(f.label_smoothing) and 0 <= f.label_smoothing < 1,
         f"fast.label_smoothing={f.label_smoothing}: must be in [0, 1) (0 = off)"),
        (f.lookahead_every >= 1, f"fast.lookahead_every={f.lookahead_every}: must be >= 1 step"),
        (fin(f.lookahead_decay) and 0 <= f.lookahead_decay <= 1,
         f"fast.lookahead_decay={f.lookahead_decay}: must be in [0, 1]"),
        (f.tta in TTA_MODES, f"fast.tta={f.tta!r}: expected one of {', '.join(TTA_MODES)}"),
        (not ((f.lookahead or f.whiten) and parallel_backend == "deepspeed"),
         "fast.lookahead and fast.whiten write the model's weights outside the optimiser, which DeepSpeed "
         "owns: use parallel.backend=ddp (or none) with them"),
    ]
