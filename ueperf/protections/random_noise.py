"""``random`` — random noise in the ε-ball: the sanity baseline every protection must beat.

Random noise of the same budget as EM does not make data unlearnable when it is sample-wise
(Huang et al. 2021, Table 1: ~94 % clean test accuracy on sample-wise random noise); a
protection that does no better than this has no effect.

    linf:  δ_i[h, w, c] ~ U(−ε, ε) independently per entry            (‖δ_i‖∞ ≤ ε)
    l2:    δ_i = ε · g_i / ‖g_i‖₂,  g_i ~ N(0, I)  (a uniform direction on the ε-sphere)

Sample-wise (default): one δ_i per training sample, indexed by sample. Class-wise: one δ_k per
label k (K rows), the class-wise random baseline (which, unlike sample-wise noise, is a
learnable shortcut). δ is float32 NHWC in [0, 1] pixel units; clipping x + δ to [0, 1] happens in
:func:`~ueperf.protections.base.apply`.

Reproducibility: rows are drawn in fixed blocks of ``batch_size`` global sample indices, block b
from ``ctx.generator(1, b)``, so the bytes depend on (seed, eps, norm, batch_size) only — not on
the device count or the sharding under torchrun.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from . import PROTECTIONS
from .base import Perturbation, ProtectContext, Protection


def _draw(n: int, shape, eps: float, norm: str, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """n noise rows of ``shape`` (H, W, 3): uniform per entry (linf) or ε times a random
    direction (l2). float32 on ``device``."""
    if norm == "linf":
        d = torch.rand((n, *shape), generator=generator, device=device, dtype=torch.float32)
        return d.mul_(2 * eps).sub_(eps)
    g = torch.randn((n, *shape), generator=generator, device=device, dtype=torch.float32)
    nrm = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(n, 1, 1, 1)
    return g.mul_(eps / nrm)


@PROTECTIONS.register("random")
class RandomNoise(Protection):
    """Random noise in the ε-ball (uniform per entry for L∞, a random direction for L2): the baseline to beat.

    Details: the module docstring.
    """

    @dataclass
    class Config:
        eps: float = 8 / 255          # budget, [0,1] pixel units: EM's ε, to compare at equal size [ours]
        norm: str = "linf"            # linf (uniform per entry) | l2 (random direction, ‖δ‖₂ = ε) [ours]
        granularity: str = "sample"   # sample (one δ per image) | class (one δ per label) [code: EM random baselines]
        batch_size: int = 8192        # rows drawn per generator block (part of the byte stream) [ours]

    def generate(self, ctx: ProtectContext) -> Perturbation:
        cfg = ctx.cfg
        if cfg.norm not in ("linf", "l2"):
            raise ConfigError(f"random: norm={cfg.norm!r}; random noise is defined for linf and l2 "
                              f"(set norm=linf or norm=l2)")
        if not cfg.eps > 0 or (cfg.norm == "linf" and cfg.eps > 1.0):
            raise ConfigError(f"random: eps={cfg.eps}: must be > 0 (and <= 1 for linf); [0,1] pixel "
                              f"units, e.g. 8/255")
        if cfg.batch_size < 1:
            raise ConfigError(f"random: batch_size={cfg.batch_size}: must be >= 1")
        shape = tuple(ctx.x.shape[1:])
        dev = ctx.device
        if cfg.granularity == "class":
            delta = _draw(ctx.num_classes, shape, cfg.eps, cfg.norm, ctx.generator(2), dev)
            return Perturbation(delta, "class", cfg.norm, cfg.eps, info={"rows": ctx.num_classes})
        if cfg.granularity != "sample":
            raise ConfigError(f"random: granularity={cfg.granularity!r}: expected sample or class")

        n = ctx.x.shape[0]
        shard = ctx.shard if ctx.shard is not None else torch.arange(n, device=dev)
        shard = shard.to(dev)
        mine = torch.zeros(n, dtype=torch.bool, device=dev)
        mine[shard] = True
        # where each of this rank's samples goes in the shard-ordered output
        pos = torch.full((n,), -1, dtype=torch.long, device=dev)
        pos[shard] = torch.arange(shard.numel(), device=dev)
        rows = torch.empty((shard.numel(), *shape), dtype=torch.float32, device=dev)
        identity = shard.numel() == n and bool((shard == torch.arange(n, device=dev)).all())
        B = int(cfg.batch_size)
        blocks = range((n + B - 1) // B)
        if ctx.progress:
            from tqdm.auto import tqdm
            blocks = tqdm(blocks, desc="random noise", unit="block", leave=False)
        for b in blocks:
            lo, hi = b * B, min(n, (b + 1) * B)
            d = _draw(hi - lo, shape, cfg.eps, cfg.norm, ctx.generator(1, b), dev)
            if identity:
                rows[lo:hi] = d  # one process crafting everything: row i is sample i
            else:
                keep = mine[lo:hi]
                rows[pos[lo:hi][keep]] = d[keep]
        delta = ctx.gather(rows) if ctx.gather is not None else rows
        ctx.log({"rows": int(n), "blocks": len(range((n + B - 1) // B))})
        return Perturbation(delta, "sample", cfg.norm, cfg.eps, info={"rows": int(n), "blocks": (n + B - 1) // B})
