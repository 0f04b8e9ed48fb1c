"""Hook points through which countermeasures and paradigms act on the one training loop.

A hook overrides any subset of these methods; the trainer calls every registered hook in order.
The base methods do nothing, so a hook only states what it changes.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch


class TrainHook:
    """Base class; every method is optional."""

    def on_train_start(self, trainer: Any) -> None:
        """Once, after model/optimiser/loaders exist and before the first epoch (also on resume)."""

    def on_batch(self, trainer: Any, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor):
        """Transform an augmented float batch; return ``(x, y)``."""
        return x, y

    def loss(self, trainer: Any, logits: torch.Tensor, y: torch.Tensor) -> Optional[torch.Tensor]:
        """Return a replacement loss, or None to keep cross-entropy."""
        return None

    def on_epoch_end(self, trainer: Any, record: Dict[str, Any]) -> None:
        """After evaluation, before the record is written; may add keys to ``record``."""

    def state_dict(self) -> Dict[str, Any]:
        """Whatever this hook must carry across a resume."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass
