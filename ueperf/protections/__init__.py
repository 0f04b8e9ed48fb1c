"""Protection methods: each crafts a perturbation δ that makes a clean dataset unlearnable.

One file per method, registered by name in :data:`PROTECTIONS` (every module of this package is
imported on the first lookup: a new method is one new file); a method is a class with a
``Config`` dataclass (its defaults, from spec §2, each tagged with its source) and
``generate(ctx) -> Perturbation``. :func:`ueperf.protections.base.apply` is the one place where
δ meets the images (x' = round(255·clip(x + δ, 0, 1))).
"""
from __future__ import annotations

from ..registry import Registry

PROTECTIONS: Registry = Registry("protection", package=__name__)
