"""Resumable checkpoints, written atomically.

A checkpoint holds everything an epoch boundary needs to continue bit-for-bit: model weights and
buffers (BN statistics), optimiser state (momentum), the epoch counter, hook states and the
records so far. Random streams need no saving: the data order and augmentation of epoch e are
functions of (seed, e) only. Files are loaded with ``weights_only=True`` (no code execution).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict

import torch

from ..errors import UeperfError
from ..files import torch_load_safe, torch_save_atomic


def save_checkpoint(path: os.PathLike, state: Dict[str, Any]) -> None:
    torch_save_atomic(path, state)


def load_checkpoint(path: os.PathLike) -> Dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise UeperfError(f"no checkpoint at {path}: nothing to resume (start the run without --resume)")
    return torch_load_safe(path, "checkpoint", "Delete it to restart the run from scratch.")


def snapshot(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    """An in-memory deep copy of weights, BN buffers and optimiser state (for rollback)."""
    import copy
    return {"model": {k: v.detach().clone() for k, v in module.state_dict().items()},
            "optimizer": copy.deepcopy(optimizer.state_dict())}


def restore(module: torch.nn.Module, optimizer: torch.optim.Optimizer, snap: Dict[str, Any]) -> None:
    module.load_state_dict(snap["model"])
    optimizer.load_state_dict(snap["optimizer"])
