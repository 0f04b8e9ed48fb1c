"""Experiments as Python functions returning a complete :class:`~ueperf.config.RunConfig`.

``RECIPES.get(name)()`` builds the config; the CLI then applies ``--set`` overrides. A recipe is
the whole record of an experiment's defaults, with the source of each number in a comment.
"""
from __future__ import annotations

from ..config import RunConfig
from ..registry import Registry


def _load() -> None:
    from . import standard  # noqa: F401


RECIPES: Registry = Registry("recipe", loader=_load)


def build(name: str) -> RunConfig:
    cfg = RECIPES.get(name)()
    cfg.recipe = name
    return cfg
