"""The perturbation type, the one ``apply``, and what every protection method receives.

Conventions (docs/ARCHITECTURE.md §4):
- images are NHWC; δ is float32 NHWC in [0, 1] pixel units (ε = 8/255 means 8 grey levels);
- the model sees ``to_model(x)``: an NCHW view of NHWC memory, i.e. channels-last, no copy;
- sample-wise δ is indexed by sample index, class-wise δ by label — never the other way round;
- a partial protection (``ratio`` < 1) covers a seeded subset ``indices``; the rest stay clean.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch

from ..data.budget import NORMS
from ..errors import ConfigError, DataError

GRANULARITIES = ("sample", "class")


@dataclass
class Perturbation:
    """A protective perturbation.

    delta:        float32 tensor, (N, H, W, 3) for granularity "sample" (row i belongs to training
                  sample i) or (K, H, W, 3) for "class" (row k belongs to label k); [0,1] units.
    granularity:  "sample" | "class".
    norm, eps:    the budget: linf/l2 in [0,1] pixel units; l0 = number of pixels changed.
    indices:      int64 array of the training-sample indices that are protected (None = all).
    info:         method diagnostics recorded in the manifest (stop round, surrogate accuracy, ...).
    """
    delta: torch.Tensor
    granularity: str
    norm: str
    eps: float
    indices: Optional[np.ndarray] = None
    info: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"granularity={self.granularity!r}: expected one of {GRANULARITIES}")
        if self.norm not in NORMS:
            raise ConfigError(f"norm={self.norm!r}: expected one of {NORMS}")
        if self.delta.dim() != 4 or self.delta.shape[-1] != 3:
            raise ValueError(f"delta must be (rows, H, W, 3) NHWC, got {tuple(self.delta.shape)}")

    def for_samples(self, idx: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """δ of the samples ``idx`` (with labels ``labels``): (B, H, W, 3) on delta's device."""
        rows = idx if self.granularity == "sample" else labels
        return self.delta.index_select(0, rows.to(self.delta.device))


def to_model(x_nhwc: torch.Tensor) -> torch.Tensor:
    """NHWC → logical NCHW (channels-last memory), no copy."""
    return x_nhwc.permute(0, 3, 1, 2)


def protected_mask(n: int, indices: Optional[np.ndarray]) -> np.ndarray:
    m = np.ones(n, dtype=bool) if indices is None else np.zeros(n, dtype=bool)
    if indices is not None:
        m[np.asarray(indices, dtype=np.int64)] = True
    return m


def select_indices(n: int, ratio: float, seed: int) -> Optional[np.ndarray]:
    """A seeded random ``ratio`` of range(n) (sorted), or None for ratio 1 (spec §6.4)."""
    if not (0.0 < ratio <= 1.0):
        raise ConfigError(f"ratio={ratio}: must be in (0, 1] (the fraction of training samples protected)")
    if ratio == 1.0:
        return None
    k = int(round(ratio * n))
    rng = np.random.default_rng([int(seed), 0x5E1EC7])
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)


def _grey_levels(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """round(255·clip(x + δ, 0, 1)) as floats: the published image's grey levels."""
    return (x + delta).clamp(0, 1).mul(255).round()


def quantise(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """The published image in [0, 1] (float): round(255·clip(x + δ, 0, 1))/255, the pixels
    :func:`apply` writes — for methods that measure their effect on what will be published."""
    return _grey_levels(x, delta).div(255)


def apply(x_u8: np.ndarray, y: np.ndarray, pert: Perturbation, *, chunk: int = 8192) -> np.ndarray:
    """The ONE place δ meets the images: x' = round(255·clip(x/255 + δ, 0, 1)) as uint8.

    x_u8 (N, H, W, 3) uint8, y (N,) labels. Samples outside ``pert.indices`` are copied
    unchanged. Works in chunks on δ's device, so a 50,000-image set never needs a float copy.
    """
    n = x_u8.shape[0]
    if pert.granularity == "sample" and pert.delta.shape[0] != n:
        raise DataError(f"sample-wise δ has {pert.delta.shape[0]} rows but the dataset has {n} images")
    if pert.delta.shape[1:] != tuple(x_u8.shape[1:]):
        raise DataError(f"δ is {tuple(pert.delta.shape[1:])} per image but images are {tuple(x_u8.shape[1:])}")
    out = np.array(x_u8, dtype=np.uint8, copy=True)
    mask = protected_mask(n, pert.indices)
    dev = pert.delta.device
    todo = np.nonzero(mask)[0]
    for s in range(0, len(todo), chunk):
        ii = todo[s:s + chunk]
        it = torch.from_numpy(ii).to(dev)
        xb = torch.from_numpy(np.ascontiguousarray(x_u8[ii])).to(dev).float().div_(255)
        d = pert.for_samples(it, torch.from_numpy(np.asarray(y)[ii]).to(dev)).float()
        xp = _grey_levels(xb, d).to(torch.uint8)
        out[ii] = xp.cpu().numpy()
    return out


@dataclass
class ProtectContext:
    """What a protection method gets.

    x, y:        the whole clean training set on ``device``: uint8 NHWC and int64 labels.
    num_classes: K.   classes: class names.
    cfg:         the method's resolved Config instance.
    seed:        base seed; methods draw every random number from generators seeded from it.
    device:      torch device.   rank, world_size: this process's place (generation sharding).
    shard:       int64 tensor of the sample indices this rank crafts (sample-wise methods); all
                 indices when world_size == 1. Methods that train a shared surrogate train it on
                 every rank identically (same seed) or on rank 0 and broadcast via ``broadcast``.
    progress:    show progress bars (rank 0 only).
    surrogate:   ``surrogate(model_name, epochs, **overrides) -> nn.Module`` — a model trained on
                 the CLEAN training set with the engine's trainer (spec §3.0 recipe unless
                 overridden), cached by config hash; returns it in eval mode on ``device``.
    gather:      ``gather(delta_rows_of_shard) -> full delta`` (identity on one process): every rank
                 passes its shard's rows; rank order follows ``shard``.
    broadcast:   ``broadcast(tensor, src=0) -> tensor`` (identity on one process).
    log:         ``log(dict)``: diagnostics shown on the progress bar and saved in the manifest.
    """
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    classes: list
    cfg: Any
    seed: int
    device: torch.device
    rank: int = 0
    world_size: int = 1
    shard: Optional[torch.Tensor] = None
    progress: bool = True
    surrogate: Optional[Callable[..., torch.nn.Module]] = None
    gather: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    broadcast: Optional[Callable[..., torch.Tensor]] = None
    log: Callable[[Dict[str, Any]], None] = lambda d: None

    def generator(self, *salt: int) -> torch.Generator:
        """A device generator seeded from (seed, *salt): reproducible streams per purpose."""
        g = torch.Generator(device=self.device)
        h = int(self.seed) & 0xFFFFFFFF
        for s in salt:
            h = (h * 1000003 + int(s)) & 0x7FFFFFFFFFFFFFFF
        g.manual_seed(h)
        return g


class Protection:
    """Base class of a protection method: set ``Config`` and implement ``generate``."""

    Config: type = object

    def generate(self, ctx: ProtectContext) -> Perturbation:  # pragma: no cover - interface
        raise NotImplementedError(f"{type(self).__name__} must implement generate(ctx)")
