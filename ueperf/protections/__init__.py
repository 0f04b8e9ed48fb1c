"""Protection methods: each crafts a perturbation δ that makes a clean dataset unlearnable.

One file per method, registered by name in :data:`PROTECTIONS`; a method is a class with a
``Config`` dataclass (its defaults, from spec §2, each tagged with its source) and
``generate(ctx) -> Perturbation``. :func:`ueperf.protections.base.apply` is the one place where
δ meets the images (x' = round(255·clip(x + δ, 0, 1))).
"""
from __future__ import annotations

from ..registry import Registry

_METHOD_MODULES = ("random_noise", "em", "rem", "sp", "ops", "ap", "aep", "hypo", "bait", "ssc")


def _load() -> None:
    import importlib
    for m in _METHOD_MODULES:
        try:
            importlib.import_module(f"{__name__}.{m}")
        except ModuleNotFoundError as e:  # a method file not written yet must not break the others
            if e.name != f"{__name__}.{m}":
                raise


PROTECTIONS: Registry = Registry("protection", loader=_load)
