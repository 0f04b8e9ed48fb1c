"""What every detection method shares: its context, its result, the image views, the held-out
halves and the measures of detection quality (docs/methods.md §9).

Conventions:

- a method sees the training images (uint8 NHWC, as stored) and their labels, nothing else: no
  clean reference set, no test split. "Held-out" always means a part of the given training set;
- it returns one score per dataset (higher = more likely protected; the verdict is
  ``score >= threshold``) and one score per training sample (higher = more suspicious; a sample
  is flagged when ``score >= sample_threshold``), each with a sentence saying what it measures
  and what its threshold was calibrated on;
- the residual view: UEs are small (ε of a few grey levels) and mostly of high spatial frequency,
  while most of what a raw-pixel learner picks up from natural images (colour, layout) is of low
  frequency and differs from one dataset to the next. The residual r = x − mean₃ₓ₃(x) (each pixel
  minus the mean of its 3×3 neighbourhood, edges replicated; [0,1] units) keeps the first and
  drops most of the second, which is what lets one threshold serve datasets as different as
  CIFAR-10 and a set of colour-coded synthetic images (§9). ``view=raw`` gives the methods the
  plain pixels instead (the papers' input).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..config import apply_overrides
from ..errors import ConfigError, DataError
from . import DETECTORS

VIEWS = ("residual", "raw")
# The CNN's input for the residual view: 0.5 + 4·r keeps it in roughly [0, 1] (|r| is mostly below
# 0.1), the range the models are initialised for [ours]. The linear model standardises instead.
RESIDUAL_GAIN = 4.0
MIN_PER_CLASS = 2   # every class must have a sample in each held-out half


# ───────────────────────────────────────────── context and result ──
@dataclass
class DetectContext:
    """What a detection method gets.

    x:           (N, H, W, 3) uint8 training images (a store's memory map or an array).
    y:           (N,) int64 labels in [0, num_classes).
    num_classes: K (the store's class count; classes without samples are allowed).
    cfg:         the method's resolved Config instance.
    seed:        every random number of the method derives from it (same seed → same scores).
    device:      torch device.   progress: show progress bars (stderr).
    log:         ``log(dict)``: diagnostics shown on the progress bar.
    """
    x: Any
    y: np.ndarray
    num_classes: int
    cfg: Any
    seed: int = 0
    device: torch.device = torch.device("cpu")
    progress: bool = True
    log: Callable[[Dict[str, Any]], None] = lambda d: None

    def rng(self, *salt: int) -> np.random.Generator:
        """A numpy generator seeded from (seed, *salt): one reproducible stream per purpose."""
        return np.random.default_rng([int(self.seed), 0xDE7EC7, *[int(s) for s in salt]])

    def torch_seed(self, *salt: int) -> int:
        """A torch seed derived from (seed, *salt)."""
        return int(self.rng(*salt).integers(0, 2 ** 62))


@dataclass
class Detection:
    """A method's answer.

    score:            the dataset score; protected iff ``score >= threshold``.
    threshold:        the verdict's threshold.   calibration: what it was calibrated on.
    score_meaning:    one sentence: what the dataset score measures.
    sample_scores:    (N,) float64, one per training sample, higher = more suspicious.
    sample_threshold: a sample is flagged iff its score >= this.   sample_meaning: one sentence.
    details:          JSON-able diagnostics (accuracies, curves, rounds, ...).
    """
    score: float
    threshold: float
    calibration: str
    score_meaning: str
    sample_scores: np.ndarray
    sample_threshold: float
    sample_meaning: str
    details: Dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> bool:
        return bool(self.score >= self.threshold)

    @property
    def flags(self) -> np.ndarray:
        return np.asarray(self.sample_scores) >= self.sample_threshold


class Detector:
    """Base class of a detection method: set ``Config``, ``reference``, and implement ``detect``.

    ``check(cfg)`` raises ConfigError for a bad config value (called before any data is read)."""

    name: str = ""
    reference: str = ""
    Config: type = object

    def check(self, cfg: Any) -> None:  # pragma: no cover - most methods override it
        pass

    def detect(self, ctx: DetectContext) -> Detection:  # pragma: no cover - interface
        raise NotImplementedError(f"{type(self).__name__} must implement detect(ctx)")


def resolve_config(method: str, overrides: Sequence[str] = ()) -> Tuple[Detector, Any]:
    """(an instance of ``method``, its Config with ``overrides`` ("key=value") applied and checked).
    ConfigError names the known methods for an unknown one, and the key for a bad value."""
    det = DETECTORS.get(method)()
    cfg = det.Config()
    try:
        apply_overrides(cfg, list(overrides))
    except ConfigError as e:
        raise ConfigError(f"detection method {method!r}: {e}") from None
    det.check(cfg)
    return det, cfg


def require_positive(method: str, cfg: Any, *names: str) -> None:
    """ConfigError unless every named field of ``cfg`` is > 0."""
    for n in names:
        v = getattr(cfg, n)
        if not (isinstance(v, (int, float)) and v > 0):
            raise ConfigError(f"{method}.{n}={v!r}: must be > 0")


def check_view(method: str, view: str) -> None:
    if view not in VIEWS:
        raise ConfigError(f"{method}.view={view!r}: expected one of {', '.join(VIEWS)}")


# ───────────────────────────────────────────── data checks ──
def check_labels(y: np.ndarray, num_classes: int, what: str = "the training set") -> np.ndarray:
    """The labels as int64, or a DataError: detection compares how labels are learnt, so it needs
    labels of at least two classes and at least two samples of every class that occurs (one for
    each held-out half)."""
    y = np.asarray(y)
    if y.ndim != 1 or y.size == 0:
        raise DataError(f"{what} has no labels (shape {y.shape}); detection needs one integer label per "
                        f"training image (a store's train_y.npy)")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{what}: labels have dtype {y.dtype}; expected integers")
    y = y.astype(np.int64, copy=False)
    if y.min() < 0 or y.max() >= num_classes:
        raise DataError(f"{what}: labels span [{y.min()}, {y.max()}] but there are {num_classes} classes")
    counts = np.bincount(y, minlength=num_classes)
    present = np.nonzero(counts)[0]
    if present.size < 2:
        raise DataError(f"{what} has labels of {present.size} class(es) only; detection compares how the labels "
                        f"are learnt and needs at least 2 classes")
    few = [int(k) for k in present if counts[k] < MIN_PER_CLASS]
    if few:
        raise DataError(f"{what}: class(es) {few[:10]}{' ...' if len(few) > 10 else ''} have fewer than "
                        f"{MIN_PER_CLASS} training images; every class needs one in each held-out half "
                        f"(drop those classes with --data classes=... or add images)")
    return y


def stratified_halves(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random half of every class (bool mask, True = first half; an odd class gives its extra
    sample to the second half): the held-out split of the given data, class by class."""
    first = np.zeros(y.shape[0], dtype=bool)
    for k in np.unique(y):
        rows = np.nonzero(y == k)[0]
        rows = rows[rng.permutation(rows.size)]
        first[rows[: rows.size // 2]] = True
    return first


def chance_normalised(acc: float, num_classes: int) -> float:
    """(acc − 1/K)/(1 − 1/K): 0 at chance, 1 at perfect (Cohen's κ for balanced classes)."""
    c = 1.0 / num_classes
    return float((acc - c) / (1.0 - c))


# ───────────────────────────────────────────── views ──
def view_batch(x_u8: torch.Tensor, view: str) -> torch.Tensor:
    """(B, H, W, 3) uint8 → (B, 3, H, W) float32: the pixels in [0, 1] (``raw``) or the residual
    x − mean₃ₓ₃(x) (``residual``, edges replicated; module docstring)."""
    x = x_u8.permute(0, 3, 1, 2).float().div_(255)
    if view == "raw":
        return x
    local = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return x - local


def cnn_input(x_u8: torch.Tensor, view: str) -> torch.Tensor:
    """The CNN's input for a view: the pixels, or 0.5 + RESIDUAL_GAIN·residual."""
    v = view_batch(x_u8, view)
    return v if view == "raw" else v.mul_(RESIDUAL_GAIN).add_(0.5)


# ───────────────────────────────────────────── detection quality ──
def auroc(scores: np.ndarray, truth: np.ndarray) -> Optional[float]:
    """Area under the ROC curve of ``scores`` for the positives ``truth`` (bool), ties counted
    half (the Mann-Whitney U statistic / (n₁·n₀)); None without positives or negatives."""
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(truth, dtype=bool)
    n1 = int(t.sum())
    n0 = int(t.size - n1)
    if n1 == 0 or n0 == 0:
        return None
    _, inv, cnt = np.unique(s, return_inverse=True, return_counts=True)
    start = np.cumsum(cnt) - cnt                  # ranks before each tie group (0-based)
    ranks = (start + (cnt + 1) / 2.0)[inv]        # average 1-based rank of each sample
    return float((ranks[t].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def quality(det: Detection, truth: np.ndarray) -> Dict[str, Any]:
    """How well ``det`` finds the protected samples ``truth`` (bool, one per training sample):
    AUROC of the sample scores, detection rate (flagged among protected) and false alarms
    (flagged among clean) at the method's sample threshold; None where a part is empty."""
    t = np.asarray(truth, dtype=bool)
    f = det.flags
    n1, n0 = int(t.sum()), int((~t).sum())
    return {"protected": n1, "clean": n0, "auroc": auroc(det.sample_scores, t),
            "detection_rate": float(f[t].mean()) if n1 else None,
            "false_alarm_rate": float(f[~t].mean()) if n0 else None,
            "verdict_correct": bool(det.verdict == (n1 > 0))}


def progress_bar(ctx: DetectContext, total: int, desc: str):
    if not ctx.progress:
        return None
    import sys

    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


__all__ = ["VIEWS", "RESIDUAL_GAIN", "DetectContext", "Detection", "Detector", "resolve_config",
           "require_positive", "check_view", "check_labels", "stratified_halves", "chance_normalised",
           "view_batch", "cnn_input", "auroc", "quality", "progress_bar"]
