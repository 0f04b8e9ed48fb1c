"""Crafting against a pretrained prior: the surrogate of BAIT (spec §2.10) and SSC (§2.11).

Both start from a prior θ_pre (``python -m ueperf.prior`` builds one on a disjoint dataset, or any
local torchvision-format checkpoint) plus a fresh head for the data being protected, and freeze it
as a victim's paradigm would (:func:`ueperf.paradigms.freeze`).
"""
from __future__ import annotations

import os
from typing import Dict, Tuple

import torch

from ..errors import ModelError
from ..files import sha256_file
from .base import ProtectContext
from .crafting import fresh_model

PRIOR_HELP = ("{name} crafts against a surrogate fine-tuned from a pretrained prior (spec §2.10, §2.11, §5). "
              "Set prior=PATH (--set prior=PATH) to a torchvision-format state dict of the surrogate "
              "architecture (fields model/width/stem): `python -m ueperf.prior --recipe ...` trains one on a "
              "dataset disjoint from the one you protect and prints its path, or use any local "
              "torchvision-format checkpoint (nothing is downloaded).")


SALT_HEAD = 0xBA0  # the fresh head's random stream (ProtectContext.generator), BAIT's and SSC's


def build_from_prior(cfg, ctx: ProtectContext, method: str, salt: int = SALT_HEAD) -> Tuple[torch.nn.Module, Dict]:
    """θ_pre + fresh head on ``ctx.device``, train mode, and a record of the prior.

    ``cfg`` has the fields ``prior``, ``model``, ``width``, ``stem`` (BAIT's and SSC's Configs);
    ``method`` names the method in errors. The fresh head's initial weights depend only on
    (ctx.seed, ``salt``) (:func:`~ueperf.protections.crafting.fresh_model`). The body must fit the
    prior exactly (:func:`ueperf.models.load_pretrained`); a prior head is never kept, even when
    its class count matches (spec §2.10: "plus a fresh head").
    """
    from ..models import load_pretrained
    path = os.path.expanduser(str(cfg.prior))
    model = fresh_model(cfg.model, cfg.width, ctx, salt, stem=cfg.stem)
    fresh_head = {k: v.clone() for k, v in model.head.state_dict().items()}
    try:
        report = load_pretrained(model, path)
    except ModelError as e:
        raise ModelError(f"{method}.prior={cfg.prior!r}: {e} ({method}'s surrogate is set by its own fields: "
                         f"model={cfg.model!r}, width={cfg.width}, stem={cfg.stem!r}; give the prior's "
                         f"architecture there.)") from None
    if report["head_loaded"]:
        model.head.load_state_dict(fresh_head)
        head = "the prior's head (same class count) replaced by a fresh one"
    else:
        head = "fresh (the prior's head does not fit this dataset's classes, or it has none)"
    record = {"path": os.path.abspath(path), "sha256": sha256_file(path), "head": head,
              "loaded_keys": len(report["loaded"]), "notes": report["notes"]}
    return model.train(), record
