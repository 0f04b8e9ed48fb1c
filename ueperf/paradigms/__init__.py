"""Training paradigms (spec §5): how the victim starts and which of its layers learn.

| name | init | trainable | BN of frozen part | lr (SGD 0.9, wd 5e-4, cosine) | epochs |
| --- | --- | --- | --- | --- | --- |
| ``fs`` | random | all | – | 0.1 | recipe's |
| ``lp`` | pretrained | head only | eval | 0.1 | 30 |
| ``pf1``/``pf2``/``pf3`` | pretrained | stages k+1..4 + head (stem + stages 1..k frozen) | eval | 0.01 body, 0.1 head | 30 |
| ``ft`` | pretrained | all | train | 0.01 body, 0.1 head | 30 |

"Stage" is the model's resolution stage (``UEModel.group_stages()``: 0 = stem, 1..S = body
stages, S + 1 = head); PF-k freezes the groups with stage ≤ k. Frozen means no optimiser group
(requires_grad off, set before the optimiser and any DDP wrapper exist) and BN in eval mode, so
frozen weights and BN statistics stay exactly as loaded. The body/head lr split is a per-group
multiplier (0.1 body × base lr 0.1 = 0.01), which composes with ``optim.group_lr`` and with ST,
which then acts on the trainable groups only. The prior is ``model.pretrained`` (a local
torchvision-format state dict: ``python -m ueperf.prior`` builds one on a disjoint dataset).
"""
from __future__ import annotations

import re
from typing import Any, List, Set

from ..config import set_default
from ..engine.hooks import TrainHook
from ..errors import ConfigError
from ..registry import Registry

PARADIGMS: Registry = Registry("paradigm")
BODY_LR_MULT = 0.1   # 0.01 body / 0.1 head [spec §5, ours]
EPOCHS = 30          # LP / PF / FT [spec §5, ours]


def frozen_groups(model: Any, paradigm: str) -> List[int]:
    """The layer groups ``paradigm`` freezes on ``model`` (spec §5): ``lp`` every group but the head,
    ``pf<k>`` the groups of stage <= k (stem + stages 1..k; any k below the head, so crafting
    surrogates may freeze deeper than the registered pf1..pf3), ``fs`` / ``ft`` none."""
    stages = model.group_stages()
    head = max(stages)
    if paradigm in ("fs", "ft"):
        return []
    if paradigm == "lp":
        return [i for i, s in enumerate(stages) if s < head]
    k = int(paradigm[2:]) if paradigm.startswith("pf") and paradigm[2:].isdigit() else None
    if k is None:
        raise ConfigError(f"paradigm {paradigm!r}: expected fs, lp, pf<k> or ft (spec §5)")
    if not 1 <= k < head:
        raise ConfigError(f"paradigm {paradigm} would freeze the head of {getattr(model, 'arch', 'the model')} "
                          f"(stages 0..{head}); use pf1..pf{head - 1}")
    return [i for i, s in enumerate(stages) if s <= k]


def freeze(model: Any, paradigm: str) -> List[int]:
    """Freeze ``model`` as ``paradigm`` does (requires_grad off, BN in eval even in train(): see
    ``UEModel.freeze_groups``) and return the frozen groups: the trainer's paradigm hook and the
    surrogates of the prior-based protections (BAIT's ensemble, SSC's PF-k) use this one rule."""
    groups = frozen_groups(model, paradigm)
    model.freeze_groups(groups)
    return groups


class ParadigmHook(TrainHook):
    def __init__(self, name: str, body_mult: float):
        self.name, self.body_mult = name, body_mult
        self.frozen: List[int] = []

    def on_model(self, tr, model) -> None:
        stages = model.group_stages()
        head_stage = max(stages)
        self.frozen = freeze(model, self.name)
        mult = [1.0 if s == head_stage else self.body_mult for s in stages]
        base = tr.group_lr or [1.0] * len(stages)
        if len(base) != len(stages):
            raise ConfigError(f"optim.group_lr has {len(base)} values but the model has {len(stages)} layer groups")
        tr.group_lr = [b * m for b, m in zip(base, mult)]

    def on_epoch_end(self, tr, rec) -> None:
        if tr.epoch == 0:
            rec["paradigm"] = self.name
            rec["frozen_groups"] = list(self.frozen)


class Paradigm:
    name = ""
    summary = ""
    pretrained = True      # needs model.pretrained
    body_mult = BODY_LR_MULT

    def configure(self, cfg: Any, user: Set[str]) -> None:
        if self.pretrained:
            set_default(cfg, user, "train.epochs", EPOCHS)
            set_default(cfg, user, "optim.lr", 0.1)

    def check(self, cfg: Any) -> None:
        if self.pretrained and not cfg.model.pretrained:
            raise ConfigError(f"paradigm {self.name} starts from a pretrained prior: set model.pretrained=PATH "
                              f"(a torchvision-format state dict; `python -m ueperf.prior --recipe ...` builds one "
                              f"on a disjoint dataset and prints its path)")
        if not self.pretrained and cfg.model.pretrained:
            raise ConfigError(f"paradigm fs trains from scratch but model.pretrained={cfg.model.pretrained!r} is set; "
                              f"use paradigm=ft (or lp, pf1-3) to start from it, or clear model.pretrained")

    def hooks(self, cfg: Any) -> List[TrainHook]:
        if not self.pretrained:
            return []
        return [ParadigmHook(self.name, self.body_mult)]


def _register(name: str, summary: str, **attrs) -> None:
    cls = type(name.upper(), (Paradigm,), {"name": name, "summary": summary, **attrs})
    PARADIGMS.register(name)(cls)


_register("fs", "from scratch: random init, every layer trains, lr 0.1", pretrained=False)
_register("lp", "linear probe: pretrained, only the head trains (lr 0.1), BN frozen in eval",
          body_mult=1.0)
for _k in (1, 2, 3):
    _register(f"pf{_k}", f"partial freeze: pretrained, stem + stages 1..{_k} frozen (BN eval), "
                         f"body lr 0.01, head 0.1")
_register("ft", "full fine-tune: pretrained, every layer trains, body lr 0.01, head 0.1")


def get(name: str):
    """The paradigm class of ``name``: a registered one, or ``pf<k>`` for any k >= 1 (a transformer
    has 12 or more blocks to freeze the first k of; whether k leaves the head trainable is checked
    on the model, by :func:`frozen_groups`)."""
    m = re.fullmatch(r"pf([1-9][0-9]*)", name or "")
    if m and name not in PARADIGMS.names():
        _register(name, f"partial freeze: pretrained, stem + stages (blocks) 1..{m.group(1)} frozen (BN eval), "
                        f"body lr 0.01, head 0.1")
    return PARADIGMS.get(name)


def configure(cfg: Any, user: Set[str] = frozenset()) -> Any:
    get(cfg.paradigm)().configure(cfg, set(user))
    return cfg


def build_hooks(cfg: Any) -> List[TrainHook]:
    p = get(cfg.paradigm)()
    p.check(cfg)
    return p.hooks(cfg)
