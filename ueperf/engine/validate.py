"""Every value of a run's config that can divide, index or loop, checked before anything runs.

:func:`check_run_config` covers the engine's sections (data, model, augment, optim, train,
parallel, fast); each countermeasure checks its own options (``Countermeasure.check``), and
``countermeasures.build_hooks`` runs both, so ``python -m ueperf.train``, the sweep's up-front
validation and the trainer itself refuse a bad value with a ConfigError naming the key — before a
run folder is written or an epoch is spent (``train.eval_every=0`` used to fail after a full epoch).
"""
from __future__ import annotations

import math
from typing import Any, List, Tuple

from ..errors import ConfigError, require
from ..precision import PRECISIONS
from .fast import check as fast_checks
from .schedule import SCHEDULES

LOADERS = ("auto", "gpu", "cpu", "ffcv")                  # data.loader (ueperf.data.loaders.BACKENDS)
STEMS = ("auto", "cifar", "imagenet")                      # model.stem
PARALLEL = ("auto", "none", "ddp", "deepspeed")            # parallel.backend
DIST = ("auto", "nccl", "gloo")                            # parallel.dist_backend


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _checks(cfg: Any) -> List[Tuple[bool, str]]:
    d, m, a, o, t, p = cfg.data, cfg.model, cfg.augment, cfg.optim, cfg.train, cfg.parallel
    jit = tuple(a.jitter)
    return [
        # data
        (d.train_limit >= 0, f"data.train_limit={d.train_limit}: must be >= 0 images (0 = all)"),
        (d.test_limit >= 0, f"data.test_limit={d.test_limit}: must be >= 0 images (0 = all)"),
        (d.image_size == 0 or d.image_size >= 4, f"data.image_size={d.image_size}: must be 0 (native) or >= 4 pixels"),
        (d.test_holdout >= 0, f"data.test_holdout={d.test_holdout}: must be >= 0 images"),
        (d.loader in LOADERS, f"data.loader={d.loader!r}: expected one of {', '.join(LOADERS)}"),
        (d.synthetic_classes >= 2, f"data.synthetic_classes={d.synthetic_classes}: need at least 2 classes"),
        (d.synthetic_train >= 1, f"data.synthetic_train={d.synthetic_train}: must be >= 1 image"),
        (d.synthetic_test >= 1, f"data.synthetic_test={d.synthetic_test}: must be >= 1 image"),
        (d.synthetic_size >= 4, f"data.synthetic_size={d.synthetic_size}: need at least 4 pixels per side"),
        # model
        (_finite(m.width) and m.width > 0, f"model.width={m.width}: must be > 0 (channel-width multiplier)"),
        (_finite(m.dropout) and 0 <= m.dropout < 1, f"model.dropout={m.dropout}: must be in [0, 1)"),
        (m.stem in STEMS, f"model.stem={m.stem!r}: expected one of {', '.join(STEMS)}"),
        # augment
        (a.crop_padding >= 0, f"augment.crop_padding={a.crop_padding}: must be >= 0 pixels"),
        (0 <= a.jitter_p <= 1, f"augment.jitter_p={a.jitter_p}: a probability, must be in [0, 1]"),
        (0 <= a.gray_p <= 1, f"augment.gray_p={a.gray_p}: a probability, must be in [0, 1]"),
        (len(jit) == 4 and all(_finite(v) and v >= 0 for v in jit) and jit[3] <= 0.5,
         f"augment.jitter={jit}: expected 4 strengths >= 0 (brightness, contrast, saturation, hue <= 0.5)"),
        (len(a.mean) == 3 and all(_finite(v) for v in a.mean), f"augment.mean={a.mean}: expected 3 numbers (R, G, B)"),
        (len(a.std) == 3 and all(_finite(v) and v > 0 for v in a.std),
         f"augment.std={a.std}: expected 3 numbers > 0 (R, G, B)"),
        # optim
        (_finite(o.lr) and o.lr >= 0, f"optim.lr={o.lr}: must be a finite number >= 0"),
        (0 <= o.momentum < 1, f"optim.momentum={o.momentum}: must be in [0, 1)"),
        (_finite(o.weight_decay) and o.weight_decay >= 0, f"optim.weight_decay={o.weight_decay}: must be >= 0"),
        (o.optimizer in ("sgd", "adamw"), f"optim.optimizer={o.optimizer!r}: expected sgd or adamw"),
        (not (o.optimizer == "adamw" and o.nesterov), "optim.nesterov=true is SGD's: set optim.nesterov=false "
                                                      "with optim.optimizer=adamw"),
        (_finite(o.beta2) and 0 <= o.beta2 < 1, f"optim.beta2={o.beta2}: must be in [0, 1)"),
        (_finite(o.eps) and o.eps > 0, f"optim.eps={o.eps}: must be > 0"),
        (o.wd_exclude in ("none", "timm"), f"optim.wd_exclude={o.wd_exclude!r}: expected none (weight decay on every "
                                           f"parameter) or timm (none on biases, norms, pos_embed and cls_token)"),
        (o.schedule in SCHEDULES, f"optim.schedule={o.schedule!r}: expected one of {', '.join(SCHEDULES)}"),
        (all(_finite(v) and 0 <= v <= 1 for v in o.milestones),
         f"optim.milestones={tuple(o.milestones)}: fractions of the run, each in [0, 1]"),
        (_finite(o.gamma) and o.gamma > 0, f"optim.gamma={o.gamma}: must be > 0 (multistep decay factor)"),
        (_finite(o.warmup_epochs) and o.warmup_epochs >= 0, f"optim.warmup_epochs={o.warmup_epochs}: must be >= 0"),
        (_finite(o.warmup_start) and 0 <= o.warmup_start <= 1,
         f"optim.warmup_start={o.warmup_start}: a fraction of the lr, must be in [0, 1]"),
        (all(_finite(v) and v >= 0 for v in o.group_lr),
         f"optim.group_lr={tuple(o.group_lr)}: multipliers must be >= 0"),
        (_finite(o.grad_clip) and o.grad_clip >= 0, f"optim.grad_clip={o.grad_clip}: must be >= 0 (0 = off)"),
        # train
        (t.epochs >= 1, f"train.epochs={t.epochs}: must be >= 1"),
        (t.batch_size >= 1, f"train.batch_size={t.batch_size}: must be >= 1"),
        (t.eval_batch_size >= 1, f"train.eval_batch_size={t.eval_batch_size}: must be >= 1"),
        (t.precision in PRECISIONS, f"train.precision={t.precision!r}: expected one of {', '.join(PRECISIONS)}"),
        (t.seed >= 0, f"train.seed={t.seed}: must be >= 0"),
        (t.eval_every >= 1, f"train.eval_every={t.eval_every}: must be >= 1 epoch (the last epoch is always evaluated)"),
        (t.checkpoint_every >= 1, f"train.checkpoint_every={t.checkpoint_every}: must be >= 1 epoch "
                                  f"(the last epoch is always saved)"),
        (t.log_every >= 1, f"train.log_every={t.log_every}: must be >= 1 step"),
        (t.threads >= 0, f"train.threads={t.threads}: must be >= 0 (0 = torch's default)"),
        # parallel
        (p.backend in PARALLEL, f"parallel.backend={p.backend!r}: expected one of {', '.join(PARALLEL)}"),
        (p.zero_stage in (1, 2), f"parallel.zero_stage={p.zero_stage}: ueperf supports ZeRO stages 1 and 2"),
        (p.dist_backend in DIST, f"parallel.dist_backend={p.dist_backend!r}: expected one of {', '.join(DIST)}"),
        # fast (the airbench techniques, engine.fast)
        *fast_checks(cfg.fast, p.backend),
    ]


def check_run_config(cfg: Any) -> None:
    """ConfigError (naming the key and what it must be) for the first bad value of the engine's
    sections of ``cfg``."""
    try:
        require(_checks(cfg))
    except TypeError as e:  # a value of the wrong type (only possible when set in Python, not with --set)
        raise ConfigError(f"a config value has the wrong type ({e}); set it with --set key=value") from None
