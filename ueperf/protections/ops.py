"""``ops`` — one-pixel shortcut (Wu et al., ICLR 2023; spec §2.4).

Model-free, ℓ0 = 1: every image of class k gets the same pixel p_k set to the same binary colour
c_k ∈ {0, 1}³. Per class the pair (p, c) is the one whose colour stands out most steadily from
the class's own pixels there [code: cychomatica/One-Pixel-Shotcut perturb.py]::

    v = |c − x_{i,p,ch}|  over the class's images i and the 3 channels ch   (x in [0, 1])
    s(p, c) = mean(v) / std(v)                 (population std, as numpy's default)
    (p_k, c_k) = argmax_{(p, c) not taken by classes 0..k−1} s(p, c)

Vectorised: one pass over the data accumulates per class the exact integer sums Σx and Σx² of
every pixel and channel (uint8 → int64, so no rounding); for binary c the moments of v follow in
closed form (v = x where c_ch = 0 and 1 − x where c_ch = 1, so E[v] and E[v²] are linear in
E[x] and E[x²]), giving each class's (8, H·W) score table with a handful of tensor ops. Only
the K-step greedy exclusion is sequential. Colour index v ∈ 0..7 reads as bits (R, G, B) =
(v>>2 & 1, v>>1 & 1, v & 1), the repo's order.

The change depends on the image (it *sets* a pixel), so δ is sample-wise:
δ_i = c_{y_i} − x_i at p_{y_i} and 0 elsewhere; ``apply`` then yields exactly c at p.
``eps`` is the ℓ0 budget (pixels per image): the repo's ``sparsity`` — with eps = s > 1 each
class takes the s best remaining pairs in score order, later ones overwriting earlier ones at a
shared position, as in the repo. The pixel search always uses the whole training set (every
rank does it identically); each rank builds the δ rows of ``ctx.shard``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch

from ..errors import ConfigError
from . import PROTECTIONS
from .base import Perturbation, ProtectContext, Protection

# (8, 3) binary colours, index v → (R, G, B) = bits 2, 1, 0 of v [code: perturb.py]
COLOURS = torch.tensor([[(v >> 2) & 1, (v >> 1) & 1, v & 1] for v in range(8)], dtype=torch.float64)


def class_moments(x: torch.Tensor, y: torch.Tensor, num_classes: int, batch_size: int
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact per-class pixel sums of a uint8 NHWC set: (count (K,), Σx (K, H·W, 3), Σx² (K, H·W, 3)),
    int64, in grey levels, on x's device."""
    n, h, w, c = x.shape
    dev = x.device
    s1 = torch.zeros((num_classes, h * w, c), dtype=torch.int64, device=dev)
    s2 = torch.zeros_like(s1)
    for s in range(0, n, batch_size):
        xb = x[s:s + batch_size].reshape(-1, h * w, c).to(torch.int64)
        yb = y[s:s + batch_size].to(dev)
        s1.index_add_(0, yb, xb)
        s2.index_add_(0, yb, xb * xb)
    count = torch.bincount(y.to(dev), minlength=num_classes)
    return count, s1, s2


def score_table(count: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """s(p, c) = mean(|c − x_p|) / std(|c − x_p|) for every class, colour and position:
    (K, 8, H·W) float64. Pairs where v is constant are scored +inf if v > 0 (a colour every
    image of the class differs from by the same amount) and −inf if v ≡ 0 (setting the pixel
    would change nothing). Classes without images score −inf everywhere."""
    n = count.to(torch.float64).clamp_min(1).view(-1, 1, 1)
    m1 = s1.to(torch.float64) / (255.0 * n)              # E[x]   (K, P, 3), x in [0, 1]
    m2 = s2.to(torch.float64) / (255.0 ** 2 * n)         # E[x²]
    col = COLOURS.to(m1.device).view(1, 8, 1, 3)         # (1, 8, 1, 3)
    m1, m2 = m1.unsqueeze(1), m2.unsqueeze(1)            # (K, 1, P, 3)
    ev = torch.where(col > 0, 1.0 - m1, m1)              # E[v]  per channel
    ev2 = torch.where(col > 0, 1.0 - 2.0 * m1 + m2, m2)  # E[v²] per channel
    mean = ev.mean(-1)                                    # over the 3 channels (equal counts)
    var = (ev2.mean(-1) - mean * mean).clamp_min(0.0)
    std = var.sqrt()
    # var is a difference of sums of exact grey-level moments: below ~1e-12 it is rounding, i.e. 0
    const = var <= 1e-12
    score = torch.where(const, torch.where(mean > 0, torch.inf, -torch.inf), mean / std.clamp_min(1e-300))
    empty = (count == 0).view(-1, 1, 1)
    return torch.where(empty, -torch.inf, score)


def select_pixels(scores: torch.Tensor, sparsity: int) -> torch.Tensor:
    """Greedy over classes 0..K−1: each takes its ``sparsity`` best (position, colour) pairs not
    taken by an earlier class. scores (K, 8, P) → picks (K, sparsity, 2) int64 = (position, colour),
    best first."""
    k, ncol, p = scores.shape
    taken = torch.zeros(ncol * p, dtype=torch.bool, device=scores.device)
    picks = torch.empty((k, sparsity, 2), dtype=torch.int64, device=scores.device)
    for cls in range(k):
        # flat index = position·8 + colour (the repo's (H·W, 8) table); stable sort → ties go to
        # the lower index, a fixed rule
        flat = scores[cls].t().reshape(-1).masked_fill(taken, -torch.inf)
        best = torch.sort(flat, descending=True, stable=True).indices[:sparsity]
        taken[best] = True
        picks[cls, :, 0] = best // ncol
        picks[cls, :, 1] = best % ncol
    return picks


@PROTECTIONS.register("ops")
class OnePixelShortcut(Protection):
    """One-pixel shortcut: one pixel per class set to a binary colour, no model needed (ℓ0 = 1).

    Details and sources: the module docstring.
    """

    @dataclass
    class Config:
        eps: float = 1.0             # ℓ0 budget: pixels changed per image (the repo's sparsity) [code: sparsity=1]
        norm: str = "l0"             # the only norm: a pixel count [code]
        granularity: str = "sample"  # δ_i = c − x_i at p depends on the image, so sample-wise [ours]
        batch_size: int = 8192       # images per pass when summing pixel statistics / building δ [ours]

    def generate(self, ctx: ProtectContext) -> Perturbation:
        cfg = ctx.cfg
        if cfg.norm != "l0":
            raise ConfigError(f"ops: norm={cfg.norm!r}; OPS changes whole pixels, its budget is a pixel "
                              f"count: set norm=l0")
        if cfg.granularity != "sample":
            raise ConfigError(f"ops: granularity={cfg.granularity!r}; setting a pixel to a colour is a "
                              f"per-image change (δ_i = c − x_i), set granularity=sample")
        n, h, w, _ = ctx.x.shape
        sparsity = int(round(cfg.eps))
        if sparsity < 1 or abs(cfg.eps - sparsity) > 1e-9 or sparsity * ctx.num_classes > 8 * h * w:
            raise ConfigError(f"ops: eps={cfg.eps}: the ℓ0 budget must be a whole number of pixels >= 1 "
                              f"(1 = one-pixel shortcut) and K·eps <= 8·H·W (distinct pairs per class)")
        dev = ctx.device

        # ── the pixel search: per-class score tables (K, 8, H·W), greedy exclusion ──
        count, s1, s2 = class_moments(ctx.x, ctx.y, ctx.num_classes, int(cfg.batch_size))
        scores = score_table(count, s1, s2)
        picks = select_pixels(scores, sparsity)                       # (K, s, 2)
        kk = torch.arange(ctx.num_classes, device=scores.device).unsqueeze(1)
        best = scores[kk, picks[:, :, 1], picks[:, :, 0]]             # (K, s) the picked scores

        # ── δ rows of this rank's shard: c − x at the picked pixel(s), 0 elsewhere ──
        shard = (ctx.shard if ctx.shard is not None else torch.arange(n, device=dev)).to(dev)
        rows = torch.zeros((shard.numel(), h * w, 3), dtype=torch.float32, device=dev)
        colours = COLOURS.to(dev, torch.float32)
        B = int(cfg.batch_size)
        steps = range(0, shard.numel(), B)
        if ctx.progress:
            from tqdm.auto import tqdm
            steps = tqdm(steps, desc="ops pixels", unit="batch", leave=False)
        for s in steps:
            idx = shard[s:s + B]
            yb = ctx.y[idx].to(dev)
            xb = ctx.x[idx].reshape(-1, h * w, 3)
            r = torch.arange(idx.numel(), device=dev)
            for j in range(sparsity):  # in score order: a later pick at the same position wins, as in the repo
                pos = picks[yb, j, 0]
                c = colours[picks[yb, j, 1]]
                rows[s + r, pos] = c - xb[r, pos].float().div(255)
        rows = rows.view(-1, h, w, 3)
        delta = ctx.gather(rows) if ctx.gather is not None else rows

        pk = picks.cpu()
        info = {"pixels": [[{"row": int(p) // w, "col": int(p) % w, "colour": COLOURS[int(c)].int().tolist()}
                            for p, c in pk[k].tolist()] for k in range(ctx.num_classes)],
                "score": best.cpu().tolist(), "images_per_class": count.cpu().tolist()}
        ctx.log({"classes": ctx.num_classes, "min_score": float(best.min())})
        return Perturbation(delta, "sample", "l0", float(sparsity), info=info)
