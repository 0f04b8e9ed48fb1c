"""Activation Cluster Measurement (ACM, spec §4.2): how tight and far apart the classes' clusters
of penultimate activations are. Progressive Staged Training (spec §4) reads a jump in ACM on the
(protected) training set as the sign that the model is learning the shortcut.

For classes k = 1..K' with embedded points Z_k (n_k each):

    μ_k = mean(Z_k),  D_intra(k) = mean_{z∈Z_k} ‖z − μ_k‖₂,  r_k = max_{z∈Z_k} ‖z − μ_k‖₂,
    D_inter(k, l) = ‖μ_k − μ_l‖₂

    db_inverse    ACM   = 1/(K'(K'−1)) Σ_{k≠l} D_inter(k,l) / (D_intra(k) + D_intra(l))   (default)
    radius_margin ACM_r = 1/(K'(K'−1)) Σ_{k≠l} D_inter(k,l) / (r_k + r_l)

Backends (what "embedded" means):

- ``tsne``: t-SNE to 2-D (sklearn, perplexity 30, PCA init; the paper's choice, seconds per call);
- ``torch``: PCA to 2-D (``reduce="pca2"``) or the raw D-dim features (``reduce="raw"``), all on
  the features' device — milliseconds on a GPU for 5,000 × 512;
- ``faiss``: faiss' PCA matrix to 2-D (``reduce="pca2"``) or raw features, then the same measure;
  CPU faiss (the GPU wheel is optional; the reduction is a 512×512 covariance either way).

Values are scale-free but NOT comparable across backends (t-SNE stretches clusters): a threshold
belongs to one backend and one reduction (spec §4.9).
"""
from __future__ import annotations

import time
from typing import Dict, Optional

import numpy as np
import torch

from ..errors import ConfigError
from ..precision import autocast

BACKENDS = ("tsne", "torch", "faiss")
REDUCTIONS = ("pca2", "raw")
VARIANTS = ("db_inverse", "radius_margin")


def check_options(backend: str, reduce: str, variant: str) -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"acm.backend={backend!r}: expected one of {', '.join(BACKENDS)}")
    if reduce not in REDUCTIONS:
        raise ConfigError(f"acm.reduce={reduce!r}: expected one of {', '.join(REDUCTIONS)}")
    if variant not in VARIANTS:
        raise ConfigError(f"acm.variant={variant!r}: expected one of {', '.join(VARIANTS)}")


# ───────────────────────────────────────────── the measure ──
def cluster_measure(z: torch.Tensor, y: torch.Tensor, variant: str = "db_inverse") -> float:
    """ACM of points z (n, d) with labels y (n,) (any label values; ≥ 2 distinct needed)."""
    if variant not in VARIANTS:
        raise ConfigError(f"acm.variant={variant!r}: expected one of {', '.join(VARIANTS)}")
    z = z.double()
    classes, inv = torch.unique(y, return_inverse=True)
    k = classes.numel()
    if k < 2:
        raise ConfigError(f"ACM needs points of at least 2 classes, got {k}")
    counts = torch.bincount(inv, minlength=k).double()
    mu = torch.zeros((k, z.shape[1]), dtype=z.dtype, device=z.device).index_add_(0, inv, z) / counts[:, None]
    dist = (z - mu[inv]).norm(dim=1)                                   # ‖z − μ_{y(z)}‖
    if variant == "db_inverse":
        spread = torch.zeros(k, dtype=z.dtype, device=z.device).index_add_(0, inv, dist) / counts
    else:
        spread = torch.zeros(k, dtype=z.dtype, device=z.device).scatter_reduce_(0, inv, dist, "amax")
    inter = torch.cdist(mu, mu)                                        # D_inter(k, l)
    denom = (spread[:, None] + spread[None, :]).clamp_min(1e-12)
    off = ~torch.eye(k, dtype=torch.bool, device=z.device)
    return float((inter / denom)[off].mean())


# ───────────────────────────────────────────── embeddings ──
def _pca2_torch(f: torch.Tensor) -> torch.Tensor:
    f = f.float()
    f = f - f.mean(0, keepdim=True)
    # Top-2 right singular vectors via the D×D covariance: one small eigh instead of a full SVD of f.
    cov = f.T @ f
    _, vec = torch.linalg.eigh(cov.double())
    return f @ vec[:, -2:].to(f.dtype)


def _tsne(f: torch.Tensor, perplexity: float, seed: int) -> torch.Tensor:
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise ConfigError("acm.backend=tsne needs scikit-learn (pip install scikit-learn); or use "
                          "acm.backend=torch") from None
    x = f.detach().float().cpu().numpy()
    perp = min(float(perplexity), max(1.0, (len(x) - 1) / 3.0))  # sklearn: perplexity < n
    z = TSNE(n_components=2, perplexity=perp, init="pca", learning_rate="auto",
             random_state=int(seed)).fit_transform(x)
    return torch.from_numpy(np.ascontiguousarray(z))


def _faiss(f: torch.Tensor, reduce: str) -> torch.Tensor:
    try:
        import faiss
    except ImportError:
        raise ConfigError("acm.backend=faiss needs faiss (pip install faiss-cpu, or the "
                          "ueperf[faiss] extra); or use acm.backend=torch") from None
    x = np.ascontiguousarray(f.detach().float().cpu().numpy())
    if reduce == "raw":
        return torch.from_numpy(x)
    pca = faiss.PCAMatrix(x.shape[1], 2)
    pca.train(x)
    return torch.from_numpy(pca.apply(x))


def embed(features: torch.Tensor, backend: str = "torch", reduce: str = "pca2", *,
          perplexity: float = 30.0, seed: int = 0) -> torch.Tensor:
    """features (n, D) → the points the measure is computed on: (n, 2), or (n, D) for ``raw``."""
    check_options(backend, reduce, "db_inverse")
    if backend == "tsne":
        return _tsne(features, perplexity, seed)
    if backend == "faiss":
        return _faiss(features, reduce)
    return features.float() if reduce == "raw" else _pca2_torch(features)


def acm(features: torch.Tensor, labels: torch.Tensor, *, backend: str = "torch", reduce: str = "pca2",
        variant: str = "db_inverse", perplexity: float = 30.0, seed: int = 0) -> float:
    """ACM of penultimate features (n, D) with labels (n,) (spec §4.2)."""
    check_options(backend, reduce, variant)
    z = embed(features, backend, reduce, perplexity=perplexity, seed=seed)
    return cluster_measure(z.to(labels.device) if z.device != labels.device else z, labels.to(z.device), variant)


# ───────────────────────────────────────────── D_v and features ──
def select_subset(y: np.ndarray, size: int, classes: int, seed: int) -> np.ndarray:
    """Indices of D_v: ``size`` images split evenly over the first ``classes`` labels (0 = all),
    drawn once with a seeded generator, sorted."""
    y = np.asarray(y)
    labels = np.unique(y)
    if classes > 0:
        labels = labels[:classes]
    if len(labels) < 2:
        raise ConfigError(f"ACM needs at least 2 classes in the training set, it has {len(labels)}")
    per = max(1, int(size) // len(labels))
    rng = np.random.default_rng(int(seed))
    picks = []
    for c in labels:
        pool = np.flatnonzero(y == c)
        picks.append(rng.choice(pool, size=min(per, len(pool)), replace=False))
    return np.sort(np.concatenate(picks))


@torch.no_grad()
def extract_features(model: torch.nn.Module, images: torch.Tensor, transform, batch_size: int = 1024,
                     autocast_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Penultimate activations ``model.features`` of uint8 NHWC images, eval mode, no
    augmentation (``transform`` = the trainer's eval transform). The model's mode is restored."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for s in range(0, images.shape[0], batch_size):
            x = transform(images[s:s + batch_size])
            with autocast(x.device, autocast_dtype):
                out.append(model.features(x).float())
    finally:
        model.train(was_training)
    return torch.cat(out)


def timed_acm(features: torch.Tensor, labels: torch.Tensor, **kw) -> Dict[str, float]:
    """``acm`` plus its wall time in ms (device-synchronised), for records and benchmarks."""
    if features.is_cuda:
        torch.cuda.synchronize(features.device)
    t0 = time.perf_counter()
    v = acm(features, labels, **kw)
    if features.is_cuda:
        torch.cuda.synchronize(features.device)
    return {"acm": v, "acm_ms": 1000 * (time.perf_counter() - t0)}
