"""The few clean test-distribution images a countermeasure may use to pick its hyperparameters
(spec §4.7: ST's threshold and adjustment from 20 clean images), kept out of the reported test set.

``holdout_indices(y, n)``: n images spread evenly over the classes (2 per class for n = 20 on
CIFAR-10), or n random ones when there are more classes than n (CIFAR-100), drawn with a fixed
seed so that every run of a dataset holds out the same images. ``data.test_holdout = n`` removes
them from the trainer's test set; ``python -m ueperf.calibrate`` selects on them.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError

HOLDOUT_SEED = 20  # fixed: the held-out images must not depend on a run's seed [ours]


def holdout_indices(y: np.ndarray, n: int) -> np.ndarray:
    """Sorted indices of the n held-out images of a split with labels y."""
    y = np.asarray(y)
    if n < 0 or n >= len(y):
        raise ConfigError(f"data.test_holdout={n}: must be in [0, {len(y)}) (the test split has {len(y)} images)")
    rng = np.random.default_rng(HOLDOUT_SEED)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    classes = np.unique(y)
    if len(classes) > n:
        return np.sort(rng.choice(len(y), size=n, replace=False))
    per, extra = divmod(n, len(classes))
    picks = []
    for i, c in enumerate(classes):
        pool = np.flatnonzero(y == c)
        k = min(len(pool), per + (1 if i < extra else 0))
        picks.append(rng.choice(pool, size=k, replace=False))
    return np.sort(np.concatenate(picks)).astype(np.int64)


def split_holdout(x: np.ndarray, y: np.ndarray, n: int):
    """(x_rest, y_rest, x_held, y_held): the split without and with its n held-out images."""
    idx = holdout_indices(y, n)
    keep = np.ones(len(y), dtype=bool)
    keep[idx] = False
    return np.asarray(x)[keep], np.asarray(y)[keep], np.asarray(x)[idx], np.asarray(y)[idx]
