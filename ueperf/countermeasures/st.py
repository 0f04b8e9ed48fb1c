"""Progressive Staged Training (ST) driven by ACM (spec §4): ``st``, ``st_cg``, ``st_full``.

Per epoch t of the nominal budget T (spec §4.4, Algorithm 1):

    lr_ℓ = v_ℓ · g(η⁰, t)                (v = 1 at first; v_ℓ = 0 ⇒ group ℓ frozen, BN in eval)
    train one epoch;  a_t = ACM(f_θ, D_v)  (D_v: fixed seeded subset of the protected train set)
    if trigger(a_t):  c ← c + 1; restore (θ, momentum, BN statistics) from C; v ← v(c)
    else:             C ← (θ, momentum, BN statistics)
    stop when every v_ℓ = 0; the result is the model in C

    geometric v_ℓ(c) = α^max(0, c − ℓ + 1)          (ℓ = 1..L shallow → deep; spec §4.3 default)
    linear    v_ℓ(c) = clip(1 − α·c·(L − ℓ + 1)/L, 0, 1)
    v_ℓ < v_min ⇒ 0

Triggers (``st.trigger``): ``absolute`` a_t > τ (spec); ``jump`` a_t > jump · a of the last accepted
epoch; ``rise`` a_t > jump · min of the accepted a's — the relative forms of spec §4.9,
scale-free, so one value serves every ACM backend. A relative trigger accepts the first epoch
(it has nothing to compare with; ACM does not see the trap at epoch 1, spec §4.9): comparing
with the untrained model's ACM instead rejected every early epoch on real data (measured).

Pipelines (spec §4.5): ``st`` (lr 0.1), ``st_cg`` (CG augmentation, lr 0.2), ``st_full``
(``st_cg`` for T = train.epochs − st.finetune_epochs epochs — ``train.epochs`` counts both steps;
left unset it is the recipe's epochs + st.finetune_epochs — then every group fine-tuned with CG
at st.finetune_lr, cosine, fresh momentum, no ACM). The record of every epoch holds ``acm``,
``acm_ms``, ``rejected``, ``st_counter``, ``st_v`` (the multipliers now in force) and ``phase``.
Rejected epochs keep the clean test accuracy the rejected weights had as ``test_acc_rejected``;
``test_acc`` is the accepted model's (the one ST returns).

Under a paradigm (spec §5) ST acts on the trainable groups only: v has one entry per optimiser
group, shallow → deep, and a paradigm's frozen groups stay frozen.

Distributed: every rank measures ACM on the same D_v and the ranks take the max, so all ranks
make the same decision; a frozen group keeps ``requires_grad`` under DDP (the reducer's parameter
set is fixed) and is held by a zero learning rate. DeepSpeed shards the optimiser state, which an
in-memory rollback cannot copy: ST refuses ``parallel.backend=deepspeed``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from .. import parallel
from ..engine.hooks import TrainHook
from ..engine.schedule import lr_factor
from ..errors import ConfigError, require
from ..metrics.acm import check_options, embed, extract_features, select_subset, timed_acm
from ..config import set_default
from . import COUNTERMEASURES, Countermeasure
from .standard import CG_OPTIONS, check_cg

TRIGGERS = ("absolute", "jump", "rise")
MULTIPLIERS = ("geometric", "linear")


def multipliers(c: int, L: int, alpha: float, form: str = "geometric", v_min: float = 1e-3) -> List[float]:
    """v_ℓ(c) for ℓ = 1..L (spec §4.3); entries below ``v_min`` are 0."""
    if form == "geometric":
        v = [alpha ** max(0, c - l + 1) for l in range(1, L + 1)]
    elif form == "linear":
        v = [min(1.0, max(0.0, 1 - alpha * c * (L - l + 1) / L)) for l in range(1, L + 1)]
    else:
        raise ConfigError(f"st.multiplier={form!r}: expected one of {', '.join(MULTIPLIERS)}")
    return [0.0 if x < v_min else float(x) for x in v]


def check_st(cfg: Any, finetune: bool) -> None:
    s, a = cfg.st, cfg.acm
    check_options(a.backend, a.reduce, a.variant)
    bad = [(s.trigger in TRIGGERS, f"st.trigger={s.trigger!r}: expected one of {', '.join(TRIGGERS)}"),
           (s.multiplier in MULTIPLIERS, f"st.multiplier={s.multiplier!r}: expected one of {', '.join(MULTIPLIERS)}"),
           (0 < s.alpha < 1, f"st.alpha={s.alpha}: must be in (0, 1)"),
           (math.isfinite(s.tau) and s.tau > 0, f"st.tau={s.tau}: must be a positive number"),
           (s.jump > 1, f"st.jump={s.jump}: must be > 1 (a ratio of ACM values)"),
           (0 <= s.v_min < 1, f"st.v_min={s.v_min}: must be in [0, 1)"),
           (s.warmup_epochs >= 0, f"st.warmup_epochs={s.warmup_epochs}: must be >= 0"),
           (a.subset >= 4, f"acm.subset={a.subset}: must be >= 4 images"),
           (a.classes >= 0, f"acm.classes={a.classes}: must be >= 0 (0 = all)"),
           (math.isfinite(a.perplexity) and a.perplexity > 0,
            f"acm.perplexity={a.perplexity}: must be > 0 (t-SNE's effective neighbour count, spec §4.2: 30)"),
           (a.batch_size >= 1, f"acm.batch_size={a.batch_size}: must be >= 1 image"),
           (cfg.parallel.backend != "deepspeed",
            "ST rolls back optimiser state in memory, which DeepSpeed shards: use parallel.backend=ddp "
            "(or none) with ST")]
    if finetune:
        bad += [(s.finetune_epochs >= 1, f"st.finetune_epochs={s.finetune_epochs}: must be >= 1"),
                (cfg.train.epochs > s.finetune_epochs,
                 f"train.epochs={cfg.train.epochs} must exceed st.finetune_epochs={s.finetune_epochs}: "
                 f"st_full runs ST-CG for train.epochs − st.finetune_epochs epochs, then fine-tunes"),
                (s.finetune_lr > 0, f"st.finetune_lr={s.finetune_lr}: must be > 0")]
    require(bad)


class STHook(TrainHook):
    """Algorithm 1 of spec §4.4 on the trainer's hook points (see the module docstring)."""

    def __init__(self, cfg: Any, finetune: bool = False):
        self.s, self.a = cfg.st, cfg.acm
        self.finetune = finetune
        self.T = cfg.train.epochs - (cfg.st.finetune_epochs if finetune else 0)
        self.state: Optional[Dict[str, Any]] = None   # c, v, snapshot C, ACM history (resumable)

    # -- set-up ----------------------------------------------------------------------------
    def on_train_start(self, tr) -> None:
        self.L = len(tr.param_groups)  # the trainable groups: a paradigm's frozen ones are not ST's
        self.base_mult = list(tr.lr_mult) if self.state is None else self.state["base_mult"]
        split = tr.train_split
        idx = select_subset(np.asarray(split.y), self.a.subset, self.a.classes, tr.cfg.train.seed)
        self.dv_x = torch.from_numpy(np.ascontiguousarray(np.asarray(split.x)[idx])).to(tr.ctx.device)
        self.dv_y = torch.from_numpy(np.asarray(split.y)[idx]).to(tr.ctx.device)
        self.dv_idx = idx
        if self.state is None:
            self.state = {"c": 0, "v": [1.0] * self.L, "snapshot": self._snapshot(tr), "base_mult": self.base_mult,
                          "accepted": [], "accepted_eval": None, "finetuning": False}
        self._apply_v(tr)
        if self.state["finetuning"]:
            self._start_finetune(tr, fresh=False)

    def _snapshot(self, tr) -> Dict[str, Any]:
        return tr.snapshot()

    def _acm(self, tr, keep_points: bool = False) -> Dict[str, Any]:
        feats = extract_features(tr.model, self.dv_x, tr.eval_transform, self.a.batch_size,
                                 autocast_dtype=tr.autocast_dtype)
        out = timed_acm(feats, self.dv_y, backend=self.a.backend, reduce=self.a.reduce, variant=self.a.variant,
                        perplexity=self.a.perplexity, seed=tr.cfg.train.seed)
        t = torch.tensor([out["acm"]], dtype=torch.float64, device=tr.ctx.device)
        out["acm"] = float(parallel.all_reduce_max(t, tr.ctx).item())  # one decision on every rank
        if keep_points:
            out["features"] = feats
        return out

    def _apply_v(self, tr) -> None:
        """lr multipliers ← v (× any base multiplier), frozen groups ← v_ℓ = 0."""
        v = self.state["v"]
        keep = tr.ctx.world_size > 1
        for j, g in enumerate(tr.param_groups):   # v_j belongs to the j-th trainable group, shallow → deep
            tr.lr_mult[j] = self.base_mult[j] * v[j]
            if v[j] == 0.0 and g["index"] not in tr.model.frozen_groups():
                tr.model.set_group_trainable(g["index"], False, keep_requires_grad=keep)

    # -- schedule --------------------------------------------------------------------------
    def lr_at(self, tr, t: float) -> Optional[float]:
        o = tr.cfg.optim
        if self.finetune and t >= self.T:
            return self.s.finetune_lr * lr_factor("cosine", t - self.T, tr.cfg.train.epochs - self.T)
        return o.lr * lr_factor(o.schedule, t, self.T, warmup=o.warmup_epochs, milestones=o.milestones, gamma=o.gamma)

    def on_epoch_start(self, tr, epoch: int) -> None:
        if self.finetune and epoch == self.T and not self.state["finetuning"]:
            self._start_finetune(tr, fresh=True)

    def skip_epoch(self, tr, epoch: int) -> bool:
        return epoch < self.T and max(self.state["v"]) == 0.0  # ST finished early (st_full waits for step 2)

    def _start_finetune(self, tr, fresh: bool) -> None:
        """ST-Full step 2: every group ST froze trainable again at multiplier 1 (× base), fresh
        momentum, CG on (a paradigm's frozen groups stay frozen)."""
        if fresh:
            tr.restore(self.state["snapshot"])                  # start from the model ST returns
            tr.reset_momentum()                                 # a new SGD: no momentum carried over
            self.state["finetuning"] = True
        for g in tr.param_groups:
            tr.model.set_group_trainable(g["index"], True)
        for j in range(len(tr.lr_mult)):
            tr.lr_mult[j] = self.base_mult[j]

    # -- the decision ----------------------------------------------------------------------
    def _triggered(self, a: float) -> bool:
        s, acc = self.s, self.state["accepted"]
        if s.trigger == "absolute":
            return a > s.tau
        if not acc:  # relative triggers need an accepted epoch to compare with: the first is accepted
            return False
        return a > s.jump * (acc[-1] if s.trigger == "jump" else min(acc))

    def on_epoch_end(self, tr, rec: Dict[str, Any]) -> None:
        epoch, st = tr.epoch, self.state
        if st["finetuning"]:  # ST-Full step 2: every group at its base multiplier, no ACM test
            rec.update(phase="finetune", rejected=False, st_counter=st["c"], st_v=[1.0] * self.L)
            return
        rec["phase"] = "st"
        m = self._acm(tr)
        a = m["acm"]
        rec["acm"], rec["acm_ms"] = a, m["acm_ms"]
        reject = epoch >= self.s.warmup_epochs and self._triggered(a)
        test_keys = [k for k in ("test_acc", "test_loss") if k in rec]
        if reject:
            st["c"] += 1
            tr.restore(st["snapshot"])                          # rollback: weights, momentum, BN stats
            st["v"] = multipliers(st["c"], self.L, self.s.alpha, self.s.multiplier, self.s.v_min)
            self._apply_v(tr)
            if test_keys:  # report the model ST would return, keep the rejected one's for the plots
                rec["test_acc_rejected"] = rec.get("test_acc")
                if st["accepted_eval"] is not None:
                    rec.update(st["accepted_eval"])
                else:
                    rec.update({k: v for k, v in tr.evaluate().items() if k in test_keys})
            rec.setdefault("notes", []).append(f"ACM {a:.3f} → rolled back (c={st['c']})")
        else:
            st["snapshot"] = self._snapshot(tr)
            st["accepted"].append(a)
            st["accepted_eval"] = {k: rec[k] for k in test_keys} or None
            rec.setdefault("notes", []).append(f"ACM {a:.3f} accepted")
        rec["rejected"] = bool(reject)
        rec["st_counter"] = st["c"]
        rec["st_v"] = list(st["v"])
        if max(st["v"]) == 0.0 and not self.finetune:
            rec["stop"] = True
            rec["notes"].append("every group frozen: ST stops")

    def on_train_end(self, tr, summary: Dict[str, Any]) -> None:
        summary["st_rejections"] = self.state["c"]
        summary["st_v"] = list(self.state["v"])
        if not tr.ctx.is_main:
            return
        try:
            from ..reports.plots import plot_acm_scatter, plot_st
        except ImportError:
            return
        thr = self.s.tau if self.s.trigger == "absolute" else None
        plot_st(tr.records, tr.run_dir / "st.png", threshold=thr, group_names=[g["name"] for g in tr.param_groups])
        m = self._acm(tr, keep_points=True)
        pts = embed(m["features"], "torch", "pca2") if self.a.backend != "tsne" else \
            embed(m["features"], "tsne", perplexity=self.a.perplexity, seed=tr.cfg.train.seed)
        plot_acm_scatter(pts.cpu().numpy(), self.dv_y.cpu().numpy(), tr.run_dir / "acm_scatter.png",
                         title=f"D_v penultimate activations, final model (ACM {m['acm']:.3f}, "
                               f"{'t-SNE' if self.a.backend == 'tsne' else 'PCA'})")

    # -- resume ----------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return dict(self.state) if self.state is not None else {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.state = dict(state) if state else None


ST_OPTIONS = ("st.trigger", "st.tau", "st.jump", "st.alpha", "st.multiplier", "st.v_min", "st.warmup_epochs",
              "acm.backend", "acm.reduce", "acm.variant", "acm.subset", "acm.classes", "acm.perplexity",
              "acm.batch_size")


class _ST(Countermeasure):
    finetune = False
    lr = 0.1
    cg = False
    options = ST_OPTIONS
    records = ("phase", "rejected", "st_counter", "st_v")   # + acm, acm_ms in the ST phase

    def configure(self, cfg, user=frozenset()) -> None:
        set_default(cfg, user, "optim.lr", self.lr)
        if self.cg:
            set_default(cfg, user, "augment.cg", True)
        if self.finetune:  # the recipe's epochs are ST-CG's nominal T; the fine-tune epochs come after
            set_default(cfg, user, "train.epochs", cfg.train.epochs + cfg.st.finetune_epochs)

    def check(self, cfg) -> None:
        check_st(cfg, self.finetune)
        if self.cg:
            check_cg(cfg)

    def hooks(self, cfg) -> List[TrainHook]:
        return [STHook(cfg, finetune=self.finetune)]


@COUNTERMEASURES.register("st")
class ST(_ST):
    summary = "progressive staged training: ACM-triggered rollback + shallow-to-deep lr damping (spec §4)"


@COUNTERMEASURES.register("st_cg")
class STCG(_ST):
    summary = "ST with CG augmentation, base lr 0.2 (spec §4.5)"
    lr, cg = 0.2, True
    options = ST_OPTIONS + CG_OPTIONS


@COUNTERMEASURES.register("st_full")
class STFull(_ST):
    summary = "ST-CG, then fine-tune every layer with CG (lr 0.01, 30 epochs; spec §4.5)"
    lr, cg, finetune = 0.2, True, True
    options = ST_OPTIONS + CG_OPTIONS + ("st.finetune_epochs", "st.finetune_lr")
