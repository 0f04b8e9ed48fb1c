"""``linear_fit`` — simple-network detection (docs/methods.md §9.1).

Zhu, Yu & Gao ("Detection and Defense of Unlearnable Examples", AAAI 2024, arXiv 2312.08898) show
that the perturbations of unlearnable examples make the poisoned set (nearly) linearly separable,
while natural images are far from it, and detect a poisoned set with a simple network (their
Algorithm 1): split the given data at random into a training part and a validation part, train a
linear model (or a 2-layer network) on the first for a small budget, and call the data poisoned when
its accuracy on the validation part exceeds a bound B = 0.7 [paper]. No clean data is needed.

Here, with N training samples of K classes:

1. split the samples into two class-stratified halves A and B (the paper's D_tr / D_va, used both
   ways so that every sample is scored by a model that never saw it);
2. fit a linear model on each half by ``steps`` full-batch GD steps (:mod:`~ueperf.detection.simple`)
   on the residual view (``view=raw``: the paper's pixels);
3. dataset score κ = (acc − 1/K)/(1 − 1/K), acc = the held-out accuracy over both halves; protected
   iff κ ≥ ``threshold`` = 2/3, which is the paper's B = 0.7 at K = 10 expressed above chance;
4. sample score = the probability of the sample's label under the model fitted on the other half
   (held out): a protected sample is predicted from the shortcut it shares with the others; flagged
   iff it is ≥ ``sample_threshold`` = 0.5 [ours].

Why held out, not the training fit: with fewer samples than pixels a linear model fits any labels,
clean ones included; the fit on the training half is recorded (``train_acc``, and the gap between
the two) but it is the generalisation to unseen samples of the same set that tells a shared
shortcut from memorisation (§9.1). Deviations from the paper: 2 folds instead of one split; logistic
regression by GD instead of SGD epochs; the residual view by default; no 2-layer network.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..errors import ConfigError
from . import DETECTORS
from .base import (DetectContext, Detection, Detector, chance_normalised, check_labels, check_view,
                   require_positive)
from .simple import Rows, cross_fit

PAPER_BOUND = 0.7   # B of Algorithm 1: validation accuracy above which the data are poisoned (10 classes) [paper]
KAPPA_BOUND = (PAPER_BOUND - 0.1) / 0.9  # the same bound above chance, (B − 1/K)/(1 − 1/K) at K = 10: 2/3


@DETECTORS.register("linear_fit")
class LinearFit(Detector):
    """Held-out accuracy of a linear model on a random half of the data, trained on the other half: unlearnable examples are linearly separable, natural images are not.

    Details: the module docstring (docs/methods.md §9.1)."""

    reference = ("Zhu, Yu, Gao. Detection and Defense of Unlearnable Examples. AAAI 2024, arXiv 2312.08898 "
                 "(Algorithm 1, simple networks detection)")

    @dataclass
    class Config:
        view: str = "residual"          # residual (pixel − its 3×3 mean) [ours] | raw (the pixels) [paper]
        steps: int = 30                 # full-batch GD steps of each linear model: the small budget [ours]
        threshold: float = KAPPA_BOUND  # held-out accuracy above chance that marks protected data (2/3 = the
                                        # paper's bound B = 0.7 at 10 classes) [paper]
        sample_threshold: float = 0.5   # flag a sample when its held-out label probability is at least this [ours]
        chunk: int = 4096               # images converted to rows at a time [ours]
        cache_mb: float = 1024.0        # convert the whole set once when its rows fit in this many MiB [ours]

    def check(self, cfg) -> None:
        check_view(self.name, cfg.view)
        require_positive(self.name, cfg, "steps", "chunk", "cache_mb")
        if not 0 < cfg.sample_threshold <= 1:
            raise ConfigError(f"{self.name}.sample_threshold={cfg.sample_threshold}: a probability in (0, 1]")

    def detect(self, ctx: DetectContext) -> Detection:
        cfg = ctx.cfg
        y_np = check_labels(ctx.y, ctx.num_classes)
        K = ctx.num_classes
        y = torch.from_numpy(y_np).to(ctx.device)
        rows = Rows(ctx.x, cfg.view, ctx.device, cfg.chunk, cfg.cache_mb)
        idx = np.arange(len(y_np))
        cf = cross_fit(rows, y, idx, K, int(cfg.steps), ctx.rng(1))
        acc = float(cf["hit_out"].mean())
        train_acc = float(cf["hit_in"].mean())
        kappa = chance_normalised(acc, K)
        ctx.log({"heldout_acc": acc})
        details = {
            "heldout_acc": acc, "train_acc": train_acc, "fit_minus_heldout": train_acc - acc,
            "chance": 1.0 / K, "heldout_acc_per_half": [float(cf["hit_out"][cf["first"]].mean()),
                                                        float(cf["hit_out"][~cf["first"]].mean())],
            "paper_bound_B": PAPER_BOUND, "paper_verdict_raw_acc": bool(acc > PAPER_BOUND),
            "config": asdict(cfg)}
        return Detection(
            score=kappa, threshold=float(cfg.threshold),
            calibration=("Zhu et al. 2024's bound B = 0.7 (validation accuracy of a simple network on CIFAR-10/100 "
                         "and Tiny-ImageNet pixels) [paper], expressed above chance; on the residual view checked on "
                         "the synthetic source clean vs class-wise noise (tests/test_detect.py) [ours]"),
            score_meaning=("held-out accuracy above chance, (acc - 1/K)/(1 - 1/K), of a linear model trained on the "
                           f"other half of the data ({cfg.view} view, {cfg.steps} GD steps)"),
            sample_scores=cf["p_out"], sample_threshold=float(cfg.sample_threshold),
            sample_meaning="probability of the sample's label under the linear model fitted on the other half",
            details=details)
