"""``sp`` — synthetic, linearly separable patch noise (SP / LSP; Yu et al., KDD 2022; spec §2.3).

Model-free: no surrogate and no optimisation. The noise of each image is a point of a synthetic
K-class Gaussian-cluster problem, drawn as an image of constant patches::

    d = ⌈H/p⌉ · ⌈W/p⌉ · 3 features (p = patch_size = 8 → 4·4·3 = 48 on CIFAR)
    class k:  centroid μ_k ∈ {−s, +s}^d  (distinct hypercube vertices, s = class_sep = 10)
              A_k ∈ R^{d×d}, entries U(−1, 1)           (one random linear map per class)
              z ~ N(0, I_d),  v = z·A_k + μ_k           (one point per image of class k)
    image:    v reshaped to (⌈H/p⌉, ⌈W/p⌉, 3), each entry repeated into a p×p patch, cropped
              to (H, W, 3), then rescaled:  δ_i = eps · u_i / ‖u_i‖₂

— the generative model of sklearn's ``make_classification`` with n_informative = n_features =
d, n_redundant = n_repeated = 0, one cluster per class, class_sep = 10, flip_y = 0
[code: dayu11/Availability-Attacks-Create-Shortcuts synthetic_perturbations/cifar_train.py],
re-implemented here with a seeded torch generator (sklearn is not a runtime dependency; its
column shuffle is omitted: permuting features maps this distribution onto itself).

Budget: norm ``l2`` with ``eps`` the per-image ℓ2 norm in [0, 1] units. The default (eps = 0)
is √(H·W·3)·eps0 with eps0 = 6/255, i.e. an RMS of 6 grey levels per entry: ≈ 1.30 for 32×32
images [code: dayu11 ``comput_l2norm_lim(6/255, 3072)``, also APBench]; the returned
:class:`Perturbation` carries that resolved value, so the manifest states the real bound.

Granularity: sample-wise — every image gets its own noise, drawn from its class's cluster
(image r of class k, in index order, gets synthetic point r of class k). The synthetic points
(N × d floats) are drawn once for the whole set on every rank from the same seed; each rank
builds the δ rows of ``ctx.shard`` and ``ctx.gather`` assembles them, so the bytes do not depend
on the number of processes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import torch

from ..errors import ConfigError
from . import PROTECTIONS
from .base import Perturbation, ProtectContext, Protection

_SALT_POINTS = 1  # ctx.generator salt of the synthetic-point stream


def resolve_eps(cfg, height: int, width: int) -> float:
    """The per-image ℓ2 budget: ``cfg.eps``, or √(H·W·3)·eps0 when it is 0 (spec §2.3)."""
    return float(cfg.eps) if cfg.eps > 0 else math.sqrt(height * width * 3) * float(cfg.eps0)


def make_classification(counts: torch.Tensor, dim: int, class_sep: float,
                        generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gaussian clusters at hypercube vertices: sklearn ``make_classification``'s model with all
    ``dim`` features informative and one cluster per class (float64, on the generator's device).

    counts (K,) int: points per class. Returns (points (Σcounts, dim), labels (Σcounts,)), sorted
    by class: class k's points are v = z·A_k + μ_k, z ~ N(0, I), A_k entries U(−1, 1),
    μ_k ∈ {−class_sep, +class_sep}^dim with all K vertices distinct.
    """
    k = int(counts.numel())
    if dim < 62 and k > 2 ** dim:
        raise ConfigError(f"sp: {k} classes need {k} distinct hypercube vertices but the noise has only "
                          f"{dim} features ({2 ** dim} vertices); lower patch_size")
    dev = generator.device
    # Distinct vertices, as sklearn samples them without replacement.
    if dim <= 20:  # few vertices: draw K distinct vertex numbers and read their bits
        ids = torch.randperm(2 ** dim, generator=generator, device=dev)[:k]
        bits = (ids.unsqueeze(1) >> torch.arange(dim, device=dev)) & 1
    else:  # 2^dim vertices: a collision has probability < K²/2^21; redraw it if it happens
        bits = torch.randint(0, 2, (k, dim), generator=generator, device=dev, dtype=torch.int64)
        while torch.unique(bits, dim=0).shape[0] < k:
            bits = torch.randint(0, 2, (k, dim), generator=generator, device=dev, dtype=torch.int64)
    centroids = bits.to(torch.float64) * (2 * class_sep) - class_sep
    n = int(counts.sum())
    z = torch.randn((n, dim), generator=generator, device=dev, dtype=torch.float64)
    a = torch.rand((k, dim, dim), generator=generator, device=dev, dtype=torch.float64) * 2 - 1
    labels = torch.repeat_interleave(torch.arange(k, device=dev), counts.to(dev))
    # one (n_k × d)·(d × d) product per class: a per-point copy of A_k would be N·d² floats
    points = torch.empty_like(z)
    ends = torch.cumsum(counts, 0).tolist()
    for cls, (lo, hi) in enumerate(zip([0] + ends[:-1], ends)):
        points[lo:hi] = z[lo:hi] @ a[cls] + centroids[cls]
    return points, labels


def patch_images(points: torch.Tensor, patch: int, height: int, width: int) -> torch.Tensor:
    """(n, gh·gw·3) features → (n, H, W, 3) images of constant patch×patch blocks (NHWC, the
    feature vector read as (gh, gw, 3)), cropped to H×W."""
    n = points.shape[0]
    gh, gw = -(-height // patch), -(-width // patch)
    img = points.view(n, gh, gw, 3)
    img = img.repeat_interleave(patch, dim=1).repeat_interleave(patch, dim=2)
    return img[:, :height, :width, :]


@PROTECTIONS.register("sp")
class SyntheticPerturbation(Protection):
    """Synthetic patch noise: linearly separable per class, one distinct draw per image, no model needed.

    Details and sources: the module docstring.
    """

    @dataclass
    class Config:
        eps: float = 0.0             # per-image ℓ2 norm, [0,1] units; 0 = √(H·W·3)·eps0 (≈ 1.30 at 32×32) [code: dayu11]
        norm: str = "l2"             # the only norm: each δ_i is rescaled to ‖δ_i‖₂ = eps [code: dayu11 normalize_l2norm]
        eps0: float = 6 / 255        # per-entry RMS behind the default eps, [0,1] units [code: dayu11 --eps 6]
        patch_size: int = 8          # side of the constant patches, pixels (d = ⌈H/p⌉⌈W/p⌉·3 = 48 at 32 px) [code: --patchsize 8]
        class_sep: float = 10.0      # centroids at ±class_sep per feature (unit-free: before rescaling) [code: class_sep=10.]
        granularity: str = "sample"  # one noise per image (the only granularity) [code]
        batch_size: int = 8192       # noise images built per step on the device [ours]

    def generate(self, ctx: ProtectContext) -> Perturbation:
        cfg = ctx.cfg
        if cfg.norm != "l2":
            raise ConfigError(f"sp: norm={cfg.norm!r}; SP noise is rescaled to a per-image ℓ2 norm, set norm=l2")
        if cfg.granularity != "sample":
            raise ConfigError(f"sp: granularity={cfg.granularity!r}; SP gives every image its own noise, "
                              f"set granularity=sample")
        if not (cfg.eps >= 0 and cfg.eps0 > 0):
            raise ConfigError(f"sp: eps={cfg.eps}, eps0={cfg.eps0}: eps must be >= 0 (0 = default) and "
                              f"eps0 > 0, both in [0,1] pixel units")
        if cfg.patch_size < 1 or cfg.class_sep <= 0 or cfg.batch_size < 1:
            raise ConfigError(f"sp: patch_size={cfg.patch_size}, class_sep={cfg.class_sep}, "
                              f"batch_size={cfg.batch_size}: each must be positive")
        n, h, w, _ = ctx.x.shape
        eps = resolve_eps(cfg, h, w)
        dim = -(-h // cfg.patch_size) * -(-w // cfg.patch_size) * 3
        dev = ctx.device

        # ── synthetic points for the whole set (N × d, tiny), drawn on the CPU so that the bytes
        #    do not depend on the device ──
        y = ctx.y.to("cpu", torch.int64)
        counts = torch.bincount(y, minlength=ctx.num_classes)
        gen = torch.Generator().manual_seed(ctx.generator(_SALT_POINTS).initial_seed())
        points, _ = make_classification(counts, dim, float(cfg.class_sep), gen)
        # image order[r] gets point r: images grouped by class, in index order within a class
        order = torch.argsort(y, stable=True)
        point_of = torch.empty(n, dtype=torch.int64)
        point_of[order] = torch.arange(n)

        # ── this rank's rows: upsample to patches, rescale to ‖δ_i‖₂ = eps ──
        shard = (ctx.shard if ctx.shard is not None else torch.arange(n)).to("cpu", torch.int64)
        rows = torch.empty((shard.numel(), h, w, 3), dtype=torch.float32, device=dev)
        B = int(cfg.batch_size)
        steps = range(0, shard.numel(), B)
        if ctx.progress:
            from tqdm.auto import tqdm
            steps = tqdm(steps, desc="sp noise", unit="batch", leave=False)
        for s in steps:
            feats = points[point_of[shard[s:s + B]]].to(dev, torch.float32)
            img = patch_images(feats, cfg.patch_size, h, w)
            norm = torch.linalg.vector_norm(img.flatten(1), dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            rows[s:s + B] = img * (eps / norm)
        delta = ctx.gather(rows) if ctx.gather is not None else rows
        info = {"eps": eps, "features": dim, "class_sep": float(cfg.class_sep),
                "patch_size": int(cfg.patch_size), "points_per_class": counts.tolist()}
        ctx.log({"eps_l2": eps, "features": dim})
        return Perturbation(delta, "sample", "l2", eps, info=info)
