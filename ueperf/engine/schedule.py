"""Learning-rate schedules as pure functions of progress.

``lr_factor(cfg, t)`` gives the multiplier of the base lr at fractional epoch ``t`` ∈ [0, T]; the
trainer multiplies it by the base lr and by each layer group's multiplier. Computed on the host
from the step counter (no device syncs).
"""
from __future__ import annotations

import math
from typing import Sequence

from ..errors import ConfigError

SCHEDULES = ("cosine", "constant", "multistep", "linear")


def lr_factor(schedule: str, t: float, total: float, *, warmup: float = 0.0,
              milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1, warmup_start: float = 0.0) -> float:
    """Multiplier of the base lr at fractional epoch ``t`` of a ``total``-epoch run.

    cosine: ½(1 + cos(π t / T)), annealing to 0 at T [spec §3.0];
    multistep: γ^(number of milestones passed), milestones as fractions of T;
    constant: 1;
    linear: 1 until the warm-up ends (t = w), then (T − t) / (T − w), straight down to 0 at T
    (airbench's triangle, with ``warmup_start`` 0.2 and w = 0.2 T).
    A linear warm-up over the first ``warmup`` epochs multiplies any of them, rising from
    ``warmup_start`` (a fraction of the lr; 0 = from 0) to 1.
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"optim.schedule={schedule!r}: expected one of {', '.join(SCHEDULES)}")
    total = max(float(total), 1e-12)
    p = min(max(t / total, 0.0), 1.0)
    if schedule == "cosine":
        f = 0.5 * (1.0 + math.cos(math.pi * p))
    elif schedule == "multistep":
        f = gamma ** sum(p >= m for m in milestones)
    elif schedule == "linear":
        w = min(max(float(warmup), 0.0), total)
        f = 1.0 if t <= w or total <= w else max(0.0, (total - t) / (total - w))
    else:
        f = 1.0
    if warmup > 0 and t < warmup:
        if warmup_start > 0:
            f *= warmup_start + (1.0 - warmup_start) * max(t, 0.0) / warmup
        else:
            f *= (t + 1e-12) / warmup if t > 0 else 1.0 / max(1.0, warmup * 1000)
    return f
