"""Progressive Staged Training (ST) driven by ACM (spec §4): ``st``, ``st_cg``, ``st_full``.

Algorithm 1 of spec §4.4, with the model checked every ``st.check_every`` optimiser steps (and at
the end of every epoch) instead of once per epoch [ours, spec §4.9: the trap can close within an
epoch, and a once-per-epoch check rolls back to a point that already holds the shortcut]:

    lr_ℓ = v_ℓ · g(η⁰, t)                (v = 1 at first; v_ℓ = 0 ⇒ group ℓ frozen, BN in eval)
    every check:  a = ACM(f_θ, D_v)      (D_v: fixed seeded subset of the protected train set)
    if trigger(a): c ← c + 1; restore (θ, momentum, BN statistics) from the rollback point
                   (below); v ← v(c)
    else:          accept: this check becomes the newest rollback point
    ST ends when every v_ℓ = 0; the model it returns is the last accepted one

    geometric    v_ℓ(c) = α^max(0, c − ℓ + 1)          (ℓ = 1..L shallow → deep; spec §4.3 default)
    linear       v_ℓ(c) = clip(1 − α·c·(L − ℓ + 1)/L, 0, 1)        (spec §4.3 alternative)
    exponential  v_ℓ(c) = α^(c·(L − ℓ + 1)/L)    every group damped at each trigger, the shallowest
                                                 by α, the deepest by α^(1/L) [ours, spec §4.9]
    v_ℓ < v_min ⇒ 0

Triggers (``st.trigger``):

- ``jump`` (default) [ours, spec §4.9]: a > st.jump · a_ref, a_ref = the median ACM of the accepted
  checks of the last ``st.window`` epochs that the model descends from (after a rollback, the
  discarded branch's checks no longer count). Scale-free (a ratio), so one value serves every ACM
  backend, class count and dataset size. ACM rises in clean training too, but slowly (spec §4.9:
  ×3 over 20 epochs), while a shortcut being learnt multiplies it within a fraction of an epoch;
  the median over an epoch of checks absorbs the check-to-check noise (±25 % measured with the
  torch/pca2 backend on 1,000 D_v images). Measured on real CIFAR-10 (bench/results, ST evidence):
  clean training stayed below 1.4× its reference after the first epoch, EM-protected training
  passed 1.5× within a quarter epoch of the trap starting; hence jump 1.5, warm-up 1 epoch.
- ``rise``: a > st.jump · min of the accepted ACMs (a rise against the running minimum).
- ``absolute``: a > st.tau (the paper's form; τ depends on backend, classes and scale: calibrate
  it with ``python -m ueperf.calibrate`` on the 20 clean images the paper allows, spec §4.7).
- ``never``: measure and record ACM at every check, never roll back (for calibration: the run
  is NT with ACM records).

Checks before ``st.warmup_epochs`` (fractional epochs, default 1) and before ``st.warmup_steps``
optimiser steps (default 50), whichever is later, are recorded and accepted without a test: early
in training ACM rises as fast on clean data as on protected data (spec §4.9) — measured, about 2×
over the first ~40 steps of batch 128 on every real set tried, however many steps an epoch has.
The untrained model's ACM is the first accepted check (t = 0), so a rollback can reach the
initialisation (spec §4.4 notes).

Rollback point (``st.rollback``) [ours]: 0 (default) = the latest accepted check whose ACM is at
most √jump · a_ref — the last point before the rise, not the check just before the trigger (which,
when checks are frequent, is already on the way up); k ≥ 1 = the accepted check k checks back.
Only the checks of the reference window keep a snapshot (weights + momentum + BN statistics, on
the model's device: window × checks/epoch copies, e.g. 4 for the automatic interval on a small
set, up to 20 on a 1,000-step epoch).

Pipelines (spec §4.5): ``st``, ``st_cg`` (CG augmentation), ``st_full`` (``st_cg`` for T epochs,
then every group fine-tuned with CG for st.finetune_epochs at st.finetune_lr, cosine, fresh
momentum, no ACM). ``st.budget=extra`` (default, the paper's 200 + 30 epochs): T = train.epochs
and the fine-tune comes on top (config.json's train.epochs is the total); ``st.budget=matched``:
train.epochs counts both steps (T = train.epochs − st.finetune_epochs), the budget NT gets. At 10
epochs on 5,438 CIFAR images, matched ST-Full lost 6.4 points to NT on clean data (45.7 vs 52.1 %,
seed 0) with ST never firing: 7 epochs of ST-CG are 7 epochs. Base lr [ours]: ``st.base_lr=recipe`` (default) trains at the lr
NT trains with (``optim.lr``), so ST vs NT differ by the rollbacks and damping (and CG) only;
``st.base_lr=paper`` takes the paper's 0.1 (st) / 0.2 (st_cg, st_full). The paper's 0.2 belongs to
200 epochs of CIFAR-10 at batch 128; in 10-epoch runs on 5,438 images it cost ST-CG 5.3 points on
clean data against NT-CG (47.4 vs 52.7 %, seed 0; 49.9 % with a 1-epoch warm-up), with ST never
firing — the lr alone (bench/results/st_evidence_*). ``st.lr_scale=batch`` scales either base lr
with the batch (lr · batch/128, the paper's batch).

What it says (ST is never silent): the record of every epoch holds ``st_checks`` (each check's
fractional epoch ``t``, ``acm``, ``dv_acc`` = the checked model's accuracy on D_v in eval mode,
``ratio`` = a / a_ref for the relative triggers, ``accepted``, and for a rejected check
``rolled_back_to`` and the clean test accuracy of the rejected weights), ``acm`` (the epoch's last check), ``acm_ms``, ``rejected`` (any check of the epoch), ``st_counter``,
``st_v`` (multipliers now in force), ``dv_acc`` and ``phase``; ``test_acc`` is always the kept
model's. When the ST phase ends, a warning goes to the screen, the last ST epoch's record and
summary.json if ST never rolled back, rejected most checks, or froze every group. summary.json
holds ``st_rejections``, ``st_checks``, ``st_rejected_epochs``, ``st_kept`` (where the returned
model was accepted) and, for st/st_cg, ``final_train_acc`` = the kept model's D_v accuracy (the
running accuracy of the last epoch, which may belong to rejected weights, is
``final_train_acc_running``). ``st.png`` plots every check, rejected ones marked.

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
from ..config import set_default
from ..engine.hooks import TrainHook
from ..engine.schedule import lr_factor
from ..errors import ConfigError, require
from ..metrics.acm import check_options, embed, extract_features, select_subset, timed_acm
from . import COUNTERMEASURES, Countermeasure
from .standard import CG_OPTIONS, check_cg

TRIGGERS = ("jump", "rise", "absolute", "never")
MULTIPLIERS = ("geometric", "linear", "exponential")
LR_SCALES = ("none", "batch")
BASE_LRS = ("recipe", "paper")
BUDGETS = ("extra", "matched")
PAPER_BATCH = 128             # the batch the paper's lrs belong to (spec §4.6)
AUTO_CHECKS_PER_EPOCH = 4     # st.check_every=0: at least this many checks per epoch ...
AUTO_MAX_STEPS = 50           # ... and at most this many steps apart [ours]
MOST = 0.5                    # "rejected most checks": more than this fraction of the tested checks


def multipliers(c: int, L: int, alpha: float, form: str = "geometric", v_min: float = 1e-3) -> List[float]:
    """v_ℓ(c) for ℓ = 1..L (spec §4.3); entries below ``v_min`` are 0."""
    if form == "geometric":
        v = [alpha ** max(0, c - l + 1) for l in range(1, L + 1)]
    elif form == "linear":
        v = [min(1.0, max(0.0, 1 - alpha * c * (L - l + 1) / L)) for l in range(1, L + 1)]
    elif form == "exponential":
        v = [alpha ** (c * (L - l + 1) / L) for l in range(1, L + 1)]
    else:
        raise ConfigError(f"st.multiplier={form!r}: expected one of {', '.join(MULTIPLIERS)}")
    return [0.0 if x < v_min else float(x) for x in v]


def check_interval(n_steps: int, every: int) -> int:
    """Optimiser steps between two checks in an epoch of ``n_steps`` (``every`` = 0: automatic —
    at least AUTO_CHECKS_PER_EPOCH checks per epoch and at most AUTO_MAX_STEPS steps apart). The
    last step of an epoch is always checked as well."""
    if every > 0:
        return int(every)
    return max(1, min(AUTO_MAX_STEPS, math.ceil(n_steps / AUTO_CHECKS_PER_EPOCH)))


def check_st(cfg: Any, finetune: bool) -> None:
    s, a = cfg.st, cfg.acm
    check_options(a.backend, a.reduce, a.variant)
    bad = [(s.trigger in TRIGGERS, f"st.trigger={s.trigger!r}: expected one of {', '.join(TRIGGERS)}"),
           (s.multiplier in MULTIPLIERS, f"st.multiplier={s.multiplier!r}: expected one of {', '.join(MULTIPLIERS)}"),
           (s.lr_scale in LR_SCALES, f"st.lr_scale={s.lr_scale!r}: expected one of {', '.join(LR_SCALES)}"),
           (s.base_lr in BASE_LRS, f"st.base_lr={s.base_lr!r}: expected one of {', '.join(BASE_LRS)}"),
           (0 < s.alpha < 1, f"st.alpha={s.alpha}: must be in (0, 1)"),
           (math.isfinite(s.tau) and s.tau > 0, f"st.tau={s.tau}: must be a positive number"),
           (math.isfinite(s.jump) and s.jump > 1, f"st.jump={s.jump}: must be > 1 (a ratio of ACM values)"),
           (0 <= s.v_min < 1, f"st.v_min={s.v_min}: must be in [0, 1)"),
           (math.isfinite(s.warmup_epochs) and s.warmup_epochs >= 0,
            f"st.warmup_epochs={s.warmup_epochs}: must be >= 0 (epochs, fractions allowed)"),
           (s.warmup_steps >= 0, f"st.warmup_steps={s.warmup_steps}: must be >= 0 optimiser steps"),
           (s.check_every >= 0, f"st.check_every={s.check_every}: must be >= 0 steps (0 = automatic)"),
           (s.rollback >= 0, f"st.rollback={s.rollback}: must be >= 0 (0 = before the rise; k = k accepted checks back)"),
           (math.isfinite(s.window) and s.window > 0, f"st.window={s.window}: must be > 0 epochs"),
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
                (s.budget in BUDGETS, f"st.budget={s.budget!r}: expected one of {', '.join(BUDGETS)}"),
                (cfg.train.epochs > s.finetune_epochs,
                 f"train.epochs={cfg.train.epochs} must exceed st.finetune_epochs={s.finetune_epochs}: "
                 f"with st.budget=matched st_full runs ST-CG for train.epochs − st.finetune_epochs epochs, then fine-tunes"),
                (s.finetune_lr > 0, f"st.finetune_lr={s.finetune_lr}: must be > 0")]
    require(bad)


def trigger_text(s: Any) -> str:
    return {"absolute": f"ACM > τ = {s.tau:g}", "jump": f"ACM > {s.jump:g} × median of the last {s.window:g} epoch(s)",
            "rise": f"ACM > {s.jump:g} × the lowest accepted ACM", "never": "never (ACM recorded only)"}[s.trigger]


class STHook(TrainHook):
    """Algorithm 1 of spec §4.4 on the trainer's hook points (see the module docstring)."""

    def __init__(self, cfg: Any, finetune: bool = False):
        self.s, self.a = cfg.st, cfg.acm
        self.finetune = finetune
        self.T = cfg.train.epochs - (cfg.st.finetune_epochs if finetune else 0)
        self.state: Optional[Dict[str, Any]] = None   # c, v, rollback points, checks (resumable)

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
            m = self._measure(tr)
            first = {"t": 0.0, "acm": m["acm"], "dv_acc": m["dv_acc"], "accepted": True}
            self.state = {"c": 0, "v": [1.0] * self.L, "base_mult": self.base_mult, "finetuning": False,
                          "ring": [dict(first, snapshot=tr.snapshot())], "accepted": [m["acm"]],
                          "kept": first, "checks": 0, "tested": 0, "rejections": 0, "epoch_checks": [],
                          "rejected_epochs": [], "done": False, "warned": False, "initial": first}
        self._apply_v(tr)
        if self.state["finetuning"]:
            self._start_finetune(tr, fresh=False)

    def _measure(self, tr) -> Dict[str, Any]:
        """ACM of the model on D_v and its accuracy there (eval mode, no augmentation)."""
        feats = extract_features(tr.model, self.dv_x, tr.eval_transform, self.a.batch_size,
                                 autocast_dtype=tr.autocast_dtype)
        out = timed_acm(feats, self.dv_y, backend=self.a.backend, reduce=self.a.reduce, variant=self.a.variant,
                        perplexity=self.a.perplexity, seed=tr.cfg.train.seed)
        with torch.no_grad():
            dv_acc = (tr.model.head(feats.to(tr.model.head.weight.dtype)).argmax(1) == self.dv_y).double().mean()
        t = torch.tensor([out["acm"]], dtype=torch.float64, device=tr.ctx.device)
        out["acm"] = float(parallel.all_reduce_max(t, tr.ctx).item())  # one decision on every rank
        out["dv_acc"] = float(dv_acc.item())
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
        return o.lr * lr_factor(o.schedule, t, self.T, warmup=o.warmup_epochs, milestones=o.milestones, gamma=o.gamma,
                                warmup_start=o.warmup_start)

    def on_epoch_start(self, tr, epoch: int) -> None:
        if self.finetune and epoch == self.T and not self.state["finetuning"]:
            self._start_finetune(tr, fresh=True)
        self.state["epoch_checks"] = []

    def skip_epoch(self, tr, epoch: int) -> bool:
        return epoch < self.T and self.state["done"]  # ST finished early (st_full waits for step 2)

    def _start_finetune(self, tr, fresh: bool) -> None:
        """ST-Full step 2: every group ST froze trainable again at multiplier 1 (× base), fresh
        momentum, CG on (a paradigm's frozen groups stay frozen)."""
        if fresh:
            tr.restore(self.state["ring"][-1]["snapshot"])      # start from the model ST returns
            tr.reset_momentum()                                 # a new SGD: no momentum carried over
            self.state["finetuning"] = True
        for g in tr.param_groups:
            tr.model.set_group_trainable(g["index"], True)
        for j in range(len(tr.lr_mult)):
            tr.lr_mult[j] = self.base_mult[j]

    # -- the decision ----------------------------------------------------------------------
    def _reference(self) -> float:
        """a_ref of the jump trigger: median ACM of the last W accepted checks of the lineage."""
        acms = [e["acm"] for e in self.state["ring"][-self._window():]]
        return float(np.median(acms))

    def _window(self) -> int:
        """W: accepted checks in st.window epochs (at least 1)."""
        return max(1, round(self.s.window * self.state.get("checks_per_epoch", AUTO_CHECKS_PER_EPOCH)))

    def _ratio(self, a: float) -> Optional[float]:
        """a / a_ref of the relative triggers (jump: the window's median, rise: the lowest accepted;
        never records the jump's ratio, so a record-only run shows what the default would have done)."""
        if self.s.trigger not in ("jump", "rise", "never"):
            return None
        ref = min(self.state["accepted"]) if self.s.trigger == "rise" else self._reference()
        return a / max(ref, 1e-12)

    def _triggered(self, a: float) -> bool:
        s = self.s
        if s.trigger == "never":
            return False
        if s.trigger == "absolute":
            return a > s.tau
        return self._ratio(a) > s.jump

    def _rollback_point(self) -> Dict[str, Any]:
        """The accepted check a trigger restores (see the module docstring), and the ring trimmed to it."""
        ring, s = self.state["ring"], self.s
        if s.rollback >= 1:
            i = max(0, len(ring) - s.rollback)
        else:
            cap = math.sqrt(s.jump) * (self._reference() if s.trigger == "jump" else min(e["acm"] for e in ring))
            i = next((j for j in range(len(ring) - 1, -1, -1) if ring[j]["acm"] <= cap), 0)
        self.state["ring"] = ring[:i + 1]
        return ring[i]

    def on_step_end(self, tr, step: int, n_steps: int) -> None:
        st = self.state
        if st["finetuning"] or st["done"] or tr.epoch >= self.T:
            return
        every = check_interval(n_steps, self.s.check_every)
        st["checks_per_epoch"] = math.ceil(n_steps / every)
        st["steps_per_epoch"] = n_steps
        if (step + 1) % every and step + 1 != n_steps:
            return
        self._check(tr, tr.epoch + (step + 1) / n_steps)

    def _check(self, tr, t: float) -> None:
        st, s = self.state, self.s
        m = self._measure(tr)
        a = m["acm"]
        st["checks"] += 1
        warm = max(s.warmup_epochs, s.warmup_steps / max(1, st.get("steps_per_epoch", 1)))
        tested = t > warm + 1e-12
        reject = tested and self._triggered(a)
        st["tested"] += int(tested)
        entry = {"t": round(t, 6), "acm": a, "acm_ms": m["acm_ms"], "dv_acc": m["dv_acc"], "accepted": not reject}
        ratio = self._ratio(a)
        if ratio is not None:
            entry["ratio"] = ratio                                # what the relative trigger compared
        if reject:
            entry["test_acc_rejected"] = tr.evaluate().get("test_acc")  # monitoring only, never decides
            st["c"] += 1
            st["rejections"] += 1
            back = self._rollback_point()
            tr.restore(back["snapshot"])                          # weights, momentum, BN statistics
            entry["rolled_back_to"] = back["t"]
            st["v"] = multipliers(st["c"], self.L, s.alpha, s.multiplier, s.v_min)
            self._apply_v(tr)
            tr.set_lr(t)  # the restore brought back the snapshot's lrs: the damped ones are in force now
            if max(st["v"]) == 0.0:   # nothing left to train: ST ends here
                st["done"] = True
                tr.end_epoch()
        else:
            keep = {k: entry[k] for k in ("t", "acm", "dv_acc")}
            depth = max(s.rollback, self._window()) + 1     # the reference window and the rollback reach
            st["ring"] = (st["ring"] + [dict(keep, snapshot=tr.snapshot())])[-depth:]
            st["accepted"].append(a)
            st["kept"] = keep
        st["epoch_checks"].append(entry)

    def on_epoch_end(self, tr, rec: Dict[str, Any]) -> None:
        st = self.state
        if st["finetuning"]:  # ST-Full step 2: every group at its base multiplier, no ACM test
            # no checks in this phase; dv_acc None: the ST-phase D_v accuracy no longer describes the model
            rec.update(phase="finetune", rejected=False, rejected_checks=0, st_checks=[], dv_acc=None,
                       st_counter=st["c"], st_v=[1.0] * self.L)
            return
        checks = st["epoch_checks"]
        rec["phase"] = "st"
        rec["st_checks"] = checks
        if checks:
            rec["acm"] = checks[-1]["acm"] if checks[-1]["accepted"] else st["kept"]["acm"]
            rec["acm_ms"] = sum(c["acm_ms"] for c in checks)
        n_rej = sum(not c["accepted"] for c in checks)
        rec["rejected"] = n_rej > 0
        rec["rejected_checks"] = n_rej
        rec["dv_acc"] = st["kept"]["dv_acc"]
        rec["st_counter"] = st["c"]
        rec["st_v"] = list(st["v"])
        if n_rej:
            st["rejected_epochs"].append(tr.epoch + 1)
            rec.setdefault("notes", []).append(
                f"ST rolled back {n_rej}× (c={st['c']}; model from epoch {st['kept']['t']:.2f}, ACM {st['kept']['acm']:.3f})")
        elif checks:
            rec.setdefault("notes", []).append(f"ACM {checks[-1]['acm']:.3f} accepted")
        last_st_epoch = tr.epoch + 1 >= self.T or st["done"]
        if last_st_epoch and not st["warned"]:
            st["warned"] = True
            for w in self._warnings():
                tr.warn(w)
                rec.setdefault("warnings", []).append(w)
        if st["done"] and not self.finetune:
            rec["stop"] = True
            rec.setdefault("notes", []).append("every group frozen: ST stops")

    def _warnings(self) -> List[str]:
        st, s = self.state, self.s
        kept = st["kept"]
        out = []
        if s.trigger == "never":
            return out
        if st["rejections"] == 0:
            out.append(f"ST never rolled back in {st['checks']} checks (trigger: {trigger_text(s)}): this run "
                       f"trained as NT{'-CG' if self.s_cg else ''} does. Expected on clean data; on protected data "
                       f"the trigger did not see a shortcut being learnt — see st.png (lower st.jump, or "
                       f"calibrate with python -m ueperf.calibrate)")
        elif st["rejections"] > MOST * max(1, st["tested"]):
            out.append(f"ST rejected {st['rejections']} of {st['tested']} checks; the model it returns was accepted "
                       f"at epoch {kept['t']:.2f} (ACM {kept['acm']:.3f}, D_v accuracy {100 * kept['dv_acc']:.1f} %) — "
                       f"see st.png")
        if st["done"]:
            out.append(f"ST froze every layer group after {st['c']} rollbacks and stopped early; the model it "
                       f"returns was accepted at epoch {kept['t']:.2f}")
        return out

    s_cg = False

    def on_train_end(self, tr, summary: Dict[str, Any]) -> None:
        st = self.state
        summary["st_rejections"] = st["rejections"]
        summary["st_checks"] = st["checks"]
        summary["st_rejected_epochs"] = list(st["rejected_epochs"])
        summary["st_kept"] = dict(st["kept"])
        summary["st_v"] = list(st["v"])
        if not st["finetuning"]:  # the kept model's training accuracy, not a rejected epoch's
            summary["final_train_acc_running"] = summary.get("final_train_acc")
            summary["final_train_acc"] = st["kept"]["dv_acc"]
        if not tr.ctx.is_main:
            return
        try:
            from ..reports.plots import plot_acm_scatter, plot_st
        except ImportError:
            return
        thr = self.s.tau if self.s.trigger == "absolute" else None
        plot_st(tr.records, tr.run_dir / "st.png", threshold=thr, group_names=[g["name"] for g in tr.param_groups],
                initial=st["initial"], title=f"{tr.cfg.countermeasure}: trigger {trigger_text(self.s)}, "
                                             f"{st['rejections']} rollbacks in {st['checks']} checks")
        m = self._measure(tr)
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


ST_OPTIONS = ("st.trigger", "st.tau", "st.jump", "st.window", "st.alpha", "st.multiplier", "st.v_min", "st.warmup_epochs",
              "st.warmup_steps",
              "st.check_every", "st.rollback", "st.base_lr", "st.lr_scale",
              "acm.backend", "acm.reduce", "acm.variant", "acm.subset", "acm.classes", "acm.perplexity",
              "acm.batch_size")


class _ST(Countermeasure):
    finetune = False
    lr = 0.1          # the paper's base lr (st.base_lr=paper)
    cg = False
    options = ST_OPTIONS
    records = ("phase", "rejected", "rejected_checks", "st_checks", "st_counter", "st_v", "dv_acc")  # + acm, acm_ms

    def configure(self, cfg, user=frozenset()) -> None:
        base = self.lr if cfg.st.base_lr == "paper" else cfg.optim.lr
        if cfg.st.base_lr == "paper" or cfg.st.lr_scale == "batch":
            set_default(cfg, user, "optim.lr", base * (cfg.train.batch_size / PAPER_BATCH
                                                       if cfg.st.lr_scale == "batch" else 1.0))
        if self.cg:
            set_default(cfg, user, "augment.cg", True)
        if self.finetune and cfg.st.budget == "extra":
            cfg.train.epochs += cfg.st.finetune_epochs   # T = the epochs set; the fine-tune comes after

    def check(self, cfg) -> None:
        check_st(cfg, self.finetune)
        if self.cg:
            check_cg(cfg)

    def hooks(self, cfg) -> List[TrainHook]:
        h = STHook(cfg, finetune=self.finetune)
        h.s_cg = self.cg
        return [h]


@COUNTERMEASURES.register("st")
class ST(_ST):
    summary = "progressive staged training: ACM-triggered rollback + shallow-to-deep lr damping (spec §4)"


@COUNTERMEASURES.register("st_cg")
class STCG(_ST):
    summary = "ST with CG augmentation (spec §4.5; the paper's lr 0.2 with st.base_lr=paper)"
    lr, cg = 0.2, True
    options = ST_OPTIONS + CG_OPTIONS


@COUNTERMEASURES.register("st_full")
class STFull(_ST):
    summary = "ST-CG, then fine-tune every layer with CG (lr 0.01, 30 epochs; spec §4.5)"
    lr, cg, finetune = 0.2, True, True
    options = ST_OPTIONS + CG_OPTIONS + ("st.finetune_epochs", "st.finetune_lr", "st.budget")
