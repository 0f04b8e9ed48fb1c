"""Experiments as Python functions returning a complete :class:`~ueperf.config.RunConfig`.

``RECIPES.get(name)()`` builds the config; the CLI then applies ``--set`` overrides. A recipe is
the whole record of an experiment's defaults, with the source of each number in a comment.

A recipe whose schedule is part of what it is (the fast victim's 10 epochs at lr 1.5) names those
keys in a ``keeps`` attribute of its function: countermeasures and paradigms then leave them as the
recipe set them (as they do with every key given by --set), instead of putting in their own
defaults (UEraser's 200 epochs at lr 0.1, the pretrained paradigms' 30 at 0.1).
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
    user |= set(getattr(RECIPES.get(name), "keeps", ()))
    if countermeasure:
        cfg.countermeasure = countermeasure
    if paradigm:
        cfg.paradigm = paradigm
    if dataset:
        cfg.data.dataset = dataset
        user.add("data.dataset")
    return configure(cfg, user)
