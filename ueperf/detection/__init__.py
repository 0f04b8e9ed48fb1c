"""Detection of protected data: is a training set protected, and which of its samples?

One file per method, registered by name in :data:`DETECTORS` (every module of this package is
imported on the first lookup: a new method is one new file); a method is a class with a
``Config`` dataclass (each field commented with its unit and a [paper|ours] tag), a
``reference`` (the paper it follows) and ``detect(ctx) -> Detection``. No method reads a clean
reference set or the test split: only the training images and their labels (docs/methods.md §9).

=====================  ========================================================================
linear_fit             held-out accuracy of a linear model: UEs are linearly separable (Zhu, Yu
                       & Gao, AAAI 2024, arXiv 2312.08898, Algorithm 1)
loss_dynamics          how fast each sample's loss collapses while a small CNN trains (shortcut
                       samples are learnt first)
iterative_filtering    train briefly, remove the samples fitted fastest, check that the removed
                       part is learnt from itself, repeat (Yu et al., ICANN 2024, arXiv 2408.08143)
=====================  ========================================================================

``python -m ueperf.detect --dataset STORE_OR_SOURCE`` runs them and writes the report.
"""
from __future__ import annotations

from ..registry import Registry

DETECTORS: Registry = Registry("detection method", package=__name__)
