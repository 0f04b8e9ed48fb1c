"""Experiments as Python functions returning a complete :class:`~ueperf.config.RunConfig`.

``RECIPES.get(name)()`` builds the config; the CLI then applies ``--set`` overrides. A recipe is
the whole record of an experiment's defaults, with the source of each number in a comment.
"""
from __future__ import annotations

from typing import List, Optional

from ..config import RunConfig
from ..registry import Registry


RECIPES: Registry = Registry("recipe", package=__name__)


def build(name: str, overrides: Optional[List[str]] = None, countermeasure: str = "",
          dataset: str = "", paradigm: str = "") -> RunConfig:
    """Recipe ``name`` + ``overrides`` (--set), then the paradigm's and countermeasure's defaults for
    every key the user did not set.

    ``countermeasure`` / ``dataset`` / ``paradigm`` (the CLI's flags) win over the same keys in
    ``overrides``.
    """
    from ..config import apply_overrides
    from ..countermeasures import configure

    cfg = RECIPES.get(name)()
    cfg.recipe = name
    apply_overrides(cfg, list(overrides or []))
    user = {o.split("=", 1)[0].strip() for o in overrides or []}
    if countermeasure:
        cfg.countermeasure = countermeasure
    if paradigm:
        cfg.paradigm = paradigm
    if dataset:
        cfg.data.dataset = dataset
        user.add("data.dataset")
    return configure(cfg, user)
