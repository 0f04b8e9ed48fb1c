"""Perturbation budgets and their measurement on published uint8 images: the one home of the bound.

A protected image x' = round(255·clip(x + δ, 0, 1)) differs from its clean x by at most what the
budget allows after quantisation (docs/ARCHITECTURE.md §4). Sizes are in grey levels (uint8 units), ℓ0 in
changed pixels:

    linf  max |x' − x|                  limit ceil(255 ε)
    l2    ‖x' − x‖₂                     limit 255 ε + ½·√d   (rounding adds at most ½ level per entry)
    l0    #pixels with any change       limit ε

:func:`size_limit` is the bound the protection runner checks when it writes a store and the data
layer when it opens one; :func:`per_sample_size` (numpy, per image: names the worst image) and
:func:`measure` (set-wide statistics, torch on any device in integer arithmetic) measure.
"""
from __future__ import annotations

import math
from typing import Dict, Union

import numpy as np

from ..errors import DataError

NORMS = ("linf", "l2", "l0")
_CHUNK = 4096  # images per chunk: 4096·3072 int16 = 25 MB of temporaries


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise DataError(f"norm={norm!r}: expected one of {', '.join(NORMS)}")
    return norm


def size_limit(norm: str, eps: float, image_numel: int) -> float:
    """The largest per-image size (module docstring) a published image may have under the
    budget ``(norm, eps)``; ``image_numel`` = H·W·C (for the ℓ2 rounding slack)."""
    check_norm(norm)
    if norm == "linf":
        return float(math.ceil(255 * eps - 1e-9))
    if norm == "l2":
        return 255 * eps + 0.5 * math.sqrt(image_numel)
    return float(eps)


def per_sample_size(x_clean: np.ndarray, x_prot: np.ndarray, norm: str, *, chunk: int = _CHUNK) -> np.ndarray:
    """Per-image perturbation size, (N,) float64 (module docstring's units).

    x_clean, x_prot: (N, H, W, 3) uint8 (memmaps are read in chunks)."""
    check_norm(norm)
    if x_clean.shape != x_prot.shape:
        raise DataError(f"protected images are {x_prot.shape} but the clean ones are {x_clean.shape}")
    n = x_clean.shape[0]
    out = np.zeros(n, dtype=np.float64)
    for s in range(0, n, chunk):
        a = np.asarray(x_clean[s:s + chunk], dtype=np.int16)
        d = np.abs(np.asarray(x_prot[s:s + chunk], dtype=np.int16) - a)
        flat = d.reshape(d.shape[0], -1)
        if norm == "linf":
            out[s:s + chunk] = flat.max(axis=1) if flat.shape[1] else 0
        elif norm == "l2":
            out[s:s + chunk] = np.sqrt(np.einsum("ij,ij->i", flat, flat, dtype=np.float64))
        else:
            out[s:s + chunk] = (d.max(axis=3) > 0).reshape(d.shape[0], -1).sum(axis=1)
    return out


def measure(x_clean: np.ndarray, x_prot: np.ndarray, norm: str, *, device: Union[str, "object"] = "cpu",
            chunk: int = 8192) -> Dict[str, float]:
    """Set-wide size of a protected set: ``max_abs`` and ``mean_abs`` |x'−x| over all entries (grey
    levels), the largest per-image ℓ2 (grey levels) and ℓ0 (pixels), and ``size`` = the one of
    ``norm``, which :func:`size_limit` bounds.

    Torch on ``device`` in integer arithmetic (sums of squared grey levels are exact in int64), so
    the numbers are the same on every device and a 50,000-image check is fast on a GPU."""
    import torch
    check_norm(norm)
    dev = torch.device(device)
    n = x_clean.shape[0]
    mx = torch.zeros((), dtype=torch.int32, device=dev)
    tot = torch.zeros((), dtype=torch.int64, device=dev)
    l2 = torch.zeros((), dtype=torch.int64, device=dev)
    l0 = torch.zeros((), dtype=torch.int64, device=dev)
    for s in range(0, n, chunk):
        # np.array: an owned copy of the (read-only, memory-mapped) rows, as torch requires
        a = torch.from_numpy(np.array(x_clean[s:s + chunk])).to(dev).to(torch.int16)
        b = torch.from_numpy(np.array(x_prot[s:s + chunk])).to(dev).to(torch.int16)
        d = b.sub_(a).abs_()
        if d.numel():
            mx = torch.maximum(mx, d.max().to(torch.int32))
            tot += d.sum(dtype=torch.int64)
            d32 = d.to(torch.int32)
            l2 = torch.maximum(l2, d32.mul_(d32).flatten(1).sum(1, dtype=torch.int64).max())
            l0 = torch.maximum(l0, (d.amax(dim=3) > 0).flatten(1).sum(1).max())
    cnt = int(np.prod(x_clean.shape))
    l2max = math.sqrt(int(l2))
    out = {"max_abs": int(mx), "mean_abs": int(tot) / max(cnt, 1), "max_l2": l2max, "max_l0": int(l0)}
    out["size"] = {"linf": float(out["max_abs"]), "l2": l2max, "l0": float(out["max_l0"])}[norm]
    return out
