"""The simple network of the detectors: multinomial logistic regression on a view of the images,
trained by full-batch gradient descent from zero for a fixed number of steps, and the held-out
halves it is scored on (docs/methods.md §9.1).

Why full-batch GD from zero: the "small budget" is then one number (steps), the result does not
depend on a data order or an initialisation draw, and the step size needs no tuning: with the rows
standardised and λ the largest eigenvalue of XᵀX/n, the cross-entropy's curvature is at most λ/2,
so η = 2/λ is the largest step that never overshoots [ours].

Features are the view (:func:`~ueperf.detection.base.view_batch`) of each image flattened to one
row of H·W·3 numbers, centred with the mean of the rows a model is fitted on and divided by one
scalar (their root-mean-square), so the model sees every pixel on the same scale. A set whose rows
fit in ``cache_mb`` is converted once; a larger one (CIFAR-100, 64 px sets) is converted chunk by
chunk at every step, so memory stays bounded.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch

from .base import stratified_halves, view_batch

POWER_ITERATIONS = 20   # for λ_max of XᵀX/n: enough for a step within a few % of 2/λ [ours]


class Rows:
    """The view of the training images as float32 rows, for any subset of sample indices."""

    def __init__(self, x: Any, view: str, device: torch.device, chunk: int = 4096, cache_mb: float = 1024.0):
        self.x, self.view, self.device, self.chunk = x, view, device, max(1, int(chunk))
        self.n = int(x.shape[0])
        self.dim = int(np.prod(x.shape[1:]))
        self._cache: Optional[torch.Tensor] = None
        if self.n * self.dim * 4 <= cache_mb * 2 ** 20:
            self._cache = torch.cat([self._compute(np.arange(s, min(self.n, s + self.chunk)))
                                     for s in range(0, self.n, self.chunk)])

    def _compute(self, idx: np.ndarray) -> torch.Tensor:
        xb = torch.from_numpy(np.ascontiguousarray(self.x[idx])).to(self.device)
        return view_batch(xb, self.view).permute(0, 2, 3, 1).reshape(len(idx), -1)

    def chunks(self, idx: np.ndarray) -> Iterator[torch.Tensor]:
        """The rows of ``idx`` (in that order), ``chunk`` at a time."""
        for s in range(0, len(idx), self.chunk):
            part = idx[s:s + self.chunk]
            if self._cache is not None:
                yield self._cache.index_select(0, torch.from_numpy(part).to(self._cache.device))
            else:
                yield self._compute(part)


@dataclass
class Linear:
    """A fitted linear model: logits = ((row − mu)/scale)·W + b."""
    W: torch.Tensor      # (d, K)
    b: torch.Tensor      # (K,)
    mu: torch.Tensor     # (d,)
    scale: float
    step: float          # the GD step used, η = 2/λ


def fit_linear(rows: Rows, y: torch.Tensor, idx: np.ndarray, num_classes: int, steps: int) -> Linear:
    """Fit on the samples ``idx`` (labels ``y[idx]``, y on rows.device) by ``steps`` GD steps."""
    n = len(idx)
    dev = rows.device
    mu = torch.zeros(rows.dim, device=dev)
    for c in rows.chunks(idx):
        mu += c.sum(0)
    mu /= n
    ss = 0.0
    for c in rows.chunks(idx):
        ss += float((c - mu).pow(2).sum())
    scale = max((ss / (n * rows.dim)) ** 0.5, 1e-12)

    def std(c: torch.Tensor) -> torch.Tensor:
        return (c - mu) / scale

    # λ_max(XᵀX/n) by power iteration from a fixed start (no random draw: same rows → same step)
    v = torch.ones(rows.dim, device=dev) / rows.dim ** 0.5
    lam = 1.0
    for _ in range(POWER_ITERATIONS):
        w = torch.zeros_like(v)
        for c in rows.chunks(idx):
            xs = std(c)
            w += xs.t() @ (xs @ v)
        w /= n
        lam = float(w.norm())
        v = w / max(lam, 1e-12)
    eta = 2.0 / max(lam, 1.0)  # ≥ 1: the bias's own curvature is at most 1/2
    W = torch.zeros(rows.dim, num_classes, device=dev)
    b = torch.zeros(num_classes, device=dev)
    yi = y[torch.from_numpy(idx).to(dev)]
    for _ in range(steps):
        gW = torch.zeros_like(W)
        gb = torch.zeros_like(b)
        s = 0
        for c in rows.chunks(idx):
            xs = std(c)
            p = torch.softmax(xs @ W + b, dim=1)
            p[torch.arange(p.shape[0], device=dev), yi[s:s + p.shape[0]]] -= 1.0
            gW += xs.t() @ p
            gb += p.sum(0)
            s += p.shape[0]
        W -= eta * gW / n
        b -= eta * gb / n
    return Linear(W, b, mu, scale, eta)


def logits(model: Linear, rows: Rows, idx: np.ndarray) -> torch.Tensor:
    """(len(idx), K) logits of the samples ``idx``."""
    out = [((c - model.mu) / model.scale) @ model.W + model.b for c in rows.chunks(idx)]
    return torch.cat(out) if out else torch.zeros(0, model.W.shape[1], device=rows.device)


def cross_fit(rows: Rows, y: torch.Tensor, idx: np.ndarray, num_classes: int, steps: int,
              rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """Split the samples ``idx`` into two class-stratified halves, fit one model on each, and give
    every sample (arrays aligned with ``idx``):

    ``p_in``     the probability of its label under the model fitted on its own half (how well it
                 was fitted within the budget);
    ``p_out``    the same under the model fitted on the other half (held out: learnt from others);
    ``hit_out``  whether that held-out model predicts its label;   ``hit_in`` likewise in-half;
    ``first``    which half it was in.
    """
    yi = y.cpu().numpy()[idx]
    first = stratified_halves(yi, rng)
    out = {k: np.zeros(len(idx)) for k in ("p_in", "p_out", "hit_in", "hit_out")}
    out["first"] = first
    lab = y[torch.from_numpy(idx).to(y.device)]
    for side in (True, False):
        fit_rows, other = np.nonzero(first == side)[0], np.nonzero(first != side)[0]
        model = fit_linear(rows, y, idx[fit_rows], num_classes, steps)
        for rows_, tag in ((fit_rows, "in"), (other, "out")):
            z = logits(model, rows, idx[rows_])
            t = lab[torch.from_numpy(rows_).to(y.device)]
            p = torch.softmax(z, dim=1).gather(1, t[:, None])[:, 0]
            out[f"p_{tag}"][rows_] = p.double().cpu().numpy()
            out[f"hit_{tag}"][rows_] = (z.argmax(1) == t).double().cpu().numpy()
    return out


__all__ = ["Rows", "Linear", "fit_linear", "logits", "cross_fit"]
