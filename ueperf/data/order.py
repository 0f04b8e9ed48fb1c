"""The order in which samples are visited: one definition for every loader backend.

Epoch e's permutation of the N training samples is ``default_rng([seed, e]).permutation(N)``, a
function of (seed, e) only, identical on every rank; rank r of W takes ``perm[r::W]`` (with
``drop_last`` the permutation is first cut to ``W·(N // W)``, so every rank gets the same count).
The device-resident loader and the FFCV loader both visit samples in this order, so switching
backends, or resuming a run, sees exactly the same batches (CONTRACTS.md, data/).
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's order of the N samples: (N,) int64 on the CPU, identical on every rank.
    Seed and epoch must be >= 0."""
    if seed < 0 or epoch < 0:
        raise ConfigError(f"loader: seed={seed}, epoch={epoch}: both must be >= 0")
    perm = np.random.default_rng([int(seed), int(epoch)]).permutation(n).astype(np.int64)
    return torch.from_numpy(perm)


def epoch_order(n: int, *, shuffle: bool, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                drop_last: bool = False) -> np.ndarray:
    """The sample rows rank ``rank`` visits in epoch ``epoch`` (module docstring); ``arange(n)``
    order without ``shuffle``. int64 (n_rank,)."""
    perm = epoch_permutation(n, int(seed), int(epoch)).numpy() if shuffle else np.arange(n, dtype=np.int64)
    if drop_last:
        perm = perm[: world_size * (n // world_size)]
    return perm[rank::world_size].astype(np.int64, copy=False)
