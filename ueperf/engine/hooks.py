"""Hook points through which countermeasures and paradigms act on the one training loop.

A hook overrides any subset of these methods; the trainer calls every registered hook in order.
The base methods do nothing, so a hook only states what it changes.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
import torch


class TrainHook:
    """Base class; every method is optional."""

    def on_model(self, trainer: Any, model: Any) -> None:
        """Once, after the model is built (and its pretrained weights loaded), before the optimiser
        exists: freeze groups here (frozen parameters get no optimiser group), or set
        ``trainer.group_lr`` (per-layer-group lr multipliers, shallow → deep)."""

    def on_train_start(self, trainer: Any) -> None:
        """Once, after model/optimiser/loaders exist and before the first epoch (also on resume)."""

    def transform_train_images(self, trainer: Any, x: np.ndarray) -> Optional[np.ndarray]:
        """Once, before the loaders are built: return a replacement for the training images
        (N, H, W, 3) uint8 (same shape; e.g. image shortcut squeezing), or None to keep them.
        Test images are never passed here."""
        return None

    def lr_at(self, trainer: Any, t: float) -> Optional[float]:
        """The learning rate of a multiplier-1 group at fractional epoch ``t`` (base lr × schedule),
        or None for the config's schedule. The first hook that answers wins."""
        return None

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        """Before epoch ``epoch`` (0-based) trains (or is skipped)."""

    def skip_epoch(self, trainer: Any, epoch: int) -> bool:
        """True to skip training in ``epoch`` (e.g. every group frozen); it is recorded as skipped."""
        return False

    def on_batch(self, trainer: Any, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor):
        """Transform an augmented float batch; return ``(x, y)``."""
        return x, y

    def loss(self, trainer: Any, logits: torch.Tensor, y: torch.Tensor) -> Optional[torch.Tensor]:
        """Return a replacement loss, or None to keep cross-entropy."""
        return None

    def on_epoch_end(self, trainer: Any, record: Dict[str, Any]) -> None:
        """After evaluation, before the record is written; may add keys to ``record``."""

    def on_train_end(self, trainer: Any, summary: Dict[str, Any]) -> None:
        """After the last epoch, on every rank, once the summary exists (plots, extra files)."""

    def state_dict(self) -> Dict[str, Any]:
        """Whatever this hook must carry across a resume."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass
