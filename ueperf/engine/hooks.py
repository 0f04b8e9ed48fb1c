"""Hook points through which countermeasures and paradigms act on the one training loop.

A hook overrides any subset of these methods; the trainer calls every registered hook in order.
The base methods do nothing, so a hook only states what it changes.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional

import numpy as np
import torch


# ───────────────────────────────────────────── per-epoch random streams ──
def _mix(*xs: int) -> int:
    """Deterministic 63-bit seed from integers (SplitMix64-style), for per-epoch streams."""
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h = (h ^ (int(x) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def epoch_generator(device: torch.device, *xs: int) -> torch.Generator:
    """A generator on ``device`` seeded from integers, e.g. (seed, epoch, rank, salt): the trainer
    and every hook draw their per-epoch randomness from one, so a resumed run repeats it exactly."""
    g = torch.Generator(device=device)
    g.manual_seed(_mix(*xs))
    return g


# ───────────────────────────────────────────── what a hook sees ──
class TrainerView:
    """The part of the trainer a hook may read and use; the rest is the engine's business.

    Read: ``cfg`` (the RunConfig), ``ctx`` (device, rank, world_size, is_main), ``epoch`` (0-based,
    of the epoch in progress), ``run_dir``, ``records`` (the epochs so far), ``model`` (the bare
    model: layer groups, freezing), ``train_split`` (after any image transform), ``num_classes``,
    ``param_groups`` (the optimiser's groups, shallow → deep: ``name``, ``index`` = layer group,
    ``lr``), ``autocast_dtype`` (None = fp32). Change: ``lr_mult[j]`` (group j's learning-rate
    multiplier, between epochs), ``group_lr`` (per-layer-group multipliers, in ``on_model`` only).
    Do: :meth:`eval_transform`, :meth:`evaluate`, :meth:`snapshot` / :meth:`restore` (weights,
    BN statistics and optimiser state), :meth:`set_lr`, :meth:`reset_momentum`, :meth:`end_epoch`,
    :meth:`warn`.
    """

    def __init__(self, trainer: Any):
        self._t = trainer

    cfg = property(lambda self: self._t.cfg)
    ctx = property(lambda self: self._t.ctx)
    epoch = property(lambda self: self._t.epoch)
    run_dir = property(lambda self: self._t.run_dir)
    records = property(lambda self: self._t.records)
    model = property(lambda self: self._t.model)
    train_split = property(lambda self: self._t.train_split)
    num_classes = property(lambda self: int(self._t.store.num_classes))
    param_groups = property(lambda self: self._t.param_groups)
    lr_mult = property(lambda self: self._t.lr_mult)

    @property
    def group_lr(self) -> List[float]:
        return self._t.group_lr

    @group_lr.setter
    def group_lr(self, value: List[float]) -> None:
        self._t.group_lr = list(value)

    @property
    def autocast_dtype(self) -> Optional[torch.dtype]:
        return torch.bfloat16 if self._t.autocast else None

    def eval_transform(self, x_u8: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC images → the float NCHW batch the model sees at test time (no randomness)."""
        return self._t.augmenter.eval_transform(x_u8, out_dtype=self._t.input_dtype)

    def evaluate(self, loader: Any = None) -> Dict[str, float]:
        """Clean accuracy and loss over ``loader`` (default: the test set), summed over ranks."""
        return self._t.evaluate(loader)

    def snapshot(self) -> Dict[str, Any]:
        """A copy of the model's weights and BN statistics and the optimiser's state (momentum)."""
        return copy.deepcopy(self._t.wrapped.state_dict())

    def restore(self, state: Dict[str, Any]) -> None:
        """Load a :meth:`snapshot` back: weights, BN statistics and momentum."""
        self._t.wrapped.load_state_dict(state)

    def set_lr(self, t: float) -> None:
        """Put the lrs of fractional epoch ``t`` (schedule × ``lr_mult``) into the optimiser now —
        after changing ``lr_mult`` or a :meth:`restore` mid-epoch (which brings the snapshot's lrs
        back), so that what the epoch's record shows is what is in force; the next step sets them
        again anyway."""
        self._t.set_lr(t)

    def warn(self, message: str) -> None:
        """Tell the user something went other than they likely wanted: printed once and kept in
        summary.json's ``warnings``."""
        self._t.warn(message)

    def end_epoch(self) -> None:
        """From :meth:`TrainHook.on_step_end`: train no further steps in this epoch (e.g. every
        group frozen). Every rank must decide the same."""
        self._t._end_epoch = True

    def reset_momentum(self) -> None:
        """Forget the optimiser's state: the next steps are those of a fresh SGD."""
        self._t.wrapped.optimizer.state.clear()


class TrainHook:
    """Base class; every method is optional. ``trainer`` is a :class:`TrainerView`."""

    def epoch_stream(self, trainer: Any, salt: int) -> torch.Generator:
        """This hook's random stream for the epoch in progress, seeded by (seed, epoch, rank,
        ``salt``): the same generator for every batch of the epoch, a fresh one each epoch, so a
        resumed run draws exactly what an uninterrupted one would."""
        key = (trainer.epoch, salt)
        cached = getattr(self, "_epoch_stream", None)
        if cached is None or cached[0] != key:
            g = epoch_generator(trainer.ctx.device, trainer.cfg.train.seed, trainer.epoch, trainer.ctx.rank, salt)
            self._epoch_stream = cached = (key, g)
        return cached[1]

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

    def on_step_end(self, trainer: Any, step: int, n_steps: int) -> None:
        """After the optimiser step ``step`` (0-based) of the ``n_steps`` of the epoch in progress:
        a hook may measure the model here and :meth:`TrainerView.restore` a snapshot (ST's checks
        within an epoch). The next step uses whatever weights and learning-rate multipliers it leaves."""

    def on_epoch_end(self, trainer: Any, record: Dict[str, Any]) -> None:
        """After evaluation, before the record is written; may add keys to ``record``."""

    def on_train_end(self, trainer: Any, summary: Dict[str, Any]) -> None:
        """After the last epoch, on every rank, once the summary exists (plots, extra files)."""

    def state_dict(self) -> Dict[str, Any]:
        """Whatever this hook must carry across a resume."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass
