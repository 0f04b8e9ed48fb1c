"""``iterative_filtering`` — remove what is fitted fastest, round after round (docs/methods.md §9.3).

Yu et al. ("Unlearnable Examples Detection via Iterative Filtering", ICANN 2024, arXiv 2408.08143)
observe that a classifier trained on a mix of unlearnable and clean samples adapts to the
unlearnable ones much faster, and use the accuracy gap between the two to pull the poisoned samples
out of the mix, iteratively, without any extra information. Their method trains a ResNet with
extra classes for the suspected-clean samples; the core kept here, within a CPU budget, is:

    pool ← every training sample
    for round r = 1 .. R:
        split the pool into class-stratified halves; fit the simple network of §9.1 (a linear model,
            ``steps`` GD steps, residual view) on each half: the brief training;
        candidates ← the ⌈q·N⌉ pool samples fitted best by the model of their own half (highest
            probability of their label: fitted fastest);
        check: κ_r = (p̄ − 1/K)/(1 − 1/K), p̄ = the candidates' mean probability of their label under
            the model of the *other* half, i.e. learnt from other samples. A shortcut is shared, so a
            removed part made of protected samples is predicted from the rest (κ near 1); samples
            that were merely easy to memorise are not (κ near 0 on natural images and on the clean
            synthetic set). The mean probability, not the accuracy: over the ⌈q·N⌉ candidates of
            the clean synthetic set the hit rate moves several times more between seeds (§9.3);
        the candidates leave the pool in round r; if κ_r < ``threshold``, stop (round r unverified).

- sample score = R + 1 − (round of removal) + p, p ∈ [0, 1) the sample's own-half label probability
  in its last round (a tie-break within a round); never removed: 0 + p. Earlier = more suspicious;
  flagged = removed in a verified round (score ≥ R + 1 − last verified round);
- dataset score = κ₁, the check of round 1: are the samples fitted fastest learnt from the others?
  Protected iff κ₁ ≥ ``threshold`` = 0.5 [ours]. Because it looks at the fastest part only, a small
  protected fraction is caught where a whole-set accuracy would be diluted by the clean majority.
- also recorded per round: the paper's accuracy gap, held-out accuracy of the removed part minus
  that of the retained part, and the estimated protected fraction (samples removed in verified
  rounds). The gap is not the dataset score: when every sample is protected, removed and retained
  parts are learnt alike and the gap vanishes (§9.3).

Simplifications [ours]: a linear model instead of a ResNet; no extra classes; a fixed q instead of
the paper's schedule; the held-out check as the stopping rule.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..errors import ConfigError
from . import DETECTORS
from .base import (DetectContext, Detection, Detector, chance_normalised, check_labels, check_view, progress_bar,
                   require_positive)
from .simple import Rows, cross_fit


@DETECTORS.register("iterative_filtering")
class IterativeFiltering(Detector):
    """Round after round, train briefly, remove the samples fitted fastest and check that the rest of the data predicts them.

    Details: the module docstring (docs/methods.md §9.3)."""

    reference = ("Yu, Zheng, Yang, Yang, Liu, Lu, Tan, Lam, Kot. Unlearnable Examples Detection via Iterative "
                 "Filtering. ICANN 2024, arXiv 2408.08143")

    @dataclass
    class Config:
        view: str = "residual"          # residual (pixel − its 3×3 mean) | raw (the pixels) [ours]
        steps: int = 30                 # full-batch GD steps of each round's linear models: the brief training [ours]
        rounds: int = 5                 # at most this many rounds R [ours]
        remove: float = 0.2             # fraction q of the whole set removed per round [ours]
        threshold: float = 0.5          # a round is verified when its removed part's held-out label probability
                                        # above chance is at least this; round 1's value is the dataset score [ours]
        chunk: int = 4096               # images converted to rows at a time [ours]
        cache_mb: float = 1024.0        # convert the whole set once when its rows fit in this many MiB [ours]

    def check(self, cfg) -> None:
        check_view(self.name, cfg.view)
        require_positive(self.name, cfg, "steps", "rounds", "remove", "chunk", "cache_mb")
        if not cfg.remove < 1:
            raise ConfigError(f"{self.name}.remove={cfg.remove}: the fraction removed per round must be in (0, 1)")

    def detect(self, ctx: DetectContext) -> Detection:
        cfg = ctx.cfg
        y_np = check_labels(ctx.y, ctx.num_classes)
        K, n, R = ctx.num_classes, len(y_np), int(cfg.rounds)
        y = torch.from_numpy(y_np).to(ctx.device)
        rows = Rows(ctx.x, cfg.view, ctx.device, cfg.chunk, cfg.cache_mb)
        take = max(1, int(math.ceil(cfg.remove * n)))
        pool = np.arange(n)
        removed_in = np.zeros(n, dtype=np.int64)     # 0 = never removed
        tie = np.zeros(n)
        records, verified, kappa1 = [], 0, None
        bar = progress_bar(ctx, R, self.name)
        for r in range(1, R + 1):
            if not _halvable(y_np[pool]):
                break
            cf = cross_fit(rows, y, pool, K, int(cfg.steps), ctx.rng(4, r))
            order = np.argsort(-cf["p_in"], kind="stable")
            cand, rest = order[:take], order[take:]
            acc_c = float(cf["hit_out"][cand].mean())
            acc_r = float(cf["hit_out"][rest].mean()) if len(rest) else None
            kappa = chance_normalised(float(cf["p_out"][cand].mean()), K)
            kappa1 = kappa if kappa1 is None else kappa1
            tie[pool] = np.clip(cf["p_in"], 0.0, 1.0 - 1e-9)
            removed_in[pool[cand]] = r
            ok = kappa >= cfg.threshold
            records.append({"round": r, "pool": int(len(pool)), "removed": int(len(cand)),
                            "heldout_acc_removed": acc_c, "heldout_acc_retained": acc_r,
                            "gap": None if acc_r is None else acc_c - acc_r,
                            "kappa_removed": kappa, "verified": bool(ok)})
            ctx.log({"round": r, "kappa": kappa})
            if bar is not None:
                bar.update(1)
            if not ok:
                break
            verified = r
            pool = pool[rest]
            if not len(pool):
                break
        if bar is not None:
            bar.close()
        assert kappa1 is not None  # check_labels leaves two classes of two samples: round 1 always runs
        score = np.where(removed_in > 0, R + 1 - removed_in, 0).astype(np.float64) + tie
        details = {"rounds": records, "verified_rounds": verified,
                   "estimated_protected_fraction": float(((removed_in > 0) & (removed_in <= verified)).sum() / n),
                   "removed_per_round": take, "config": asdict(cfg)}
        return Detection(
            score=float(kappa1), threshold=float(cfg.threshold),
            calibration=("[ours] synthetic source, 16 px, 400 images: clean vs class-wise noise on all or half of the "
                         "samples (tests/test_detect.py); the embedded CIFAR-10 sample at 16 px stays near 0.1"),
            score_meaning=(f"mean held-out label probability above chance of the {take} samples fitted fastest in "
                           f"round 1 (each predicted by a linear model fitted on the other half; {cfg.view} view)"),
            sample_scores=score, sample_threshold=float(R + 1 - verified),
            sample_meaning=("R + 1 - round of removal (0 if never removed) + own-half label probability; flagged "
                            "when removed in a verified round"),
            details=details)


def _halvable(y: np.ndarray) -> bool:
    """At least two classes with two samples or more (a sample of each in both held-out halves)."""
    return int((np.bincount(y) >= 2).sum()) >= 2
