"""Mixed precision, decided once: bf16 autocast on CUDA (tensor cores), fp32 elsewhere.

``train.precision`` chooses for training (``auto`` = this rule); crafting loops and feature
passes use the same rule through :func:`autocast_dtype`. On CPU, bf16 is slower and less exact,
so ``auto`` keeps fp32 there.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

from .errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp32")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype of ``train.precision`` on ``device``: auto → bf16 on CUDA, fp32 elsewhere."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp32":
        return torch.float32
    raise ConfigError(f"train.precision={precision!r}: expected one of {', '.join(PRECISIONS)}")


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of the ``auto`` rule on ``device`` (None = no autocast)."""
    dt = resolve_precision("auto", device)
    return dt if dt != torch.float32 else None


def autocast(device: torch.device, dtype: Optional[torch.dtype] = None):
    """``torch.autocast(device.type, dtype)``, or a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def autocast_auto(device: torch.device):
    """Autocast by the ``auto`` rule on ``device`` (bf16 on CUDA, nothing elsewhere)."""
    return autocast(device, autocast_dtype(device))
