"""ACM (spec §4.2), Progressive Staged Training (§4.3-4.5) and adversarial training (§3.1).

ACM is checked on constructed features of known geometry for every backend; ST's mechanics on
short synthetic runs: rollback restores weights, momentum and BN statistics exactly, a trigger
that never fires leaves training bit-identical to NT, frozen groups stay still, ST-Full's
fine-tune phase unfreezes everything, and an interrupted ST run resumes bit-for-bit.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ueperf.countermeasures import COUNTERMEASURES, build_hooks, parse
from ueperf.countermeasures.st import multipliers
from ueperf.engine.hooks import TrainHook
from ueperf.engine.trainer import Trainer, train
from ueperf.errors import ConfigError
from ueperf.metrics.acm import acm, cluster_measure, select_subset
from ueperf.recipes import build

BACKENDS = [("torch", "pca2"), ("torch", "raw"), ("tsne", "pca2"), ("faiss", "pca2"), ("faiss", "raw")]


def _clusters(spread: float, sep: float, k=5, n=30, d=64, seed=0):
    """k Gaussian clusters in d dims: centres sep·(random unit vectors), per-point noise ``spread``."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1) * sep
    y = torch.arange(k).repeat_interleave(n)
    return centres[y] + spread * torch.randn(k * n, d, generator=g), y


# ───────────────────────────────────────────── ACM ──
def test_cluster_measure_hand_checked():
    # two classes in 1-D: {0, 2} (μ 1, intra 1, radius 1) and {10, 14} (μ 12, intra 2, radius 2)
    z = torch.tensor([[0.0], [2.0], [10.0], [14.0]])
    y = torch.tensor([0, 0, 1, 1])
    assert cluster_measure(z, y, "db_inverse") == pytest.approx(11 / 3)
    assert cluster_measure(z, y, "radius_margin") == pytest.approx(11 / 3)
    z2 = torch.tensor([[0.0], [1.0], [4.0], [10.0], [14.0], [12.0]])  # class 0: μ 5/3, intra 14/9, r 7/3
    y2 = torch.tensor([0, 0, 0, 1, 1, 1])                              # class 1: μ 12, intra 4/3, r 2
    assert cluster_measure(z2, y2, "db_inverse") == pytest.approx((12 - 5 / 3) / (14 / 9 + 4 / 3))
    assert cluster_measure(z2, y2, "radius_margin") == pytest.approx((12 - 5 / 3) / (7 / 3 + 2))
    with pytest.raises(ConfigError, match="2 classes"):
        cluster_measure(z, torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("backend,reduce,variant", [(b, r, v) for b, r in BACKENDS for v in ("db_inverse", "radius_margin")
                                                     if not (b == "tsne" and v == "radius_margin")])  # t-SNE: seconds; once
def test_acm_orders_geometry_for_every_backend(backend, reduce, variant):
    if backend == "faiss":
        pytest.importorskip("faiss")
    if backend == "tsne":
        pytest.importorskip("sklearn")
    tight, y = _clusters(spread=0.05, sep=4.0)
    loose, _ = _clusters(spread=1.5, sep=1.0)
    kw = dict(backend=backend, reduce=reduce, variant=variant, perplexity=20)
    a_tight, a_loose = acm(tight, y, **kw), acm(loose, y, **kw)
    assert a_tight > 1.5 * a_loose, (a_tight, a_loose)
    assert math.isfinite(a_tight) and a_loose > 0


def test_select_subset_is_balanced_seeded_and_first_classes():
    y = np.repeat(np.arange(20), 30)
    idx = select_subset(y, 100, 10, seed=3)
    assert len(idx) == 100 and set(np.unique(y[idx])) == set(range(10))
    assert all((y[idx] == c).sum() == 10 for c in range(10))
    assert np.array_equal(idx, select_subset(y, 100, 10, seed=3))
    assert not np.array_equal(idx, select_subset(y, 100, 10, seed=4))
    assert len(set(np.unique(y[select_subset(y, 100, 0, seed=0)]))) == 20


def test_bad_acm_options_are_config_errors():
    f, y = _clusters(0.1, 1.0)
    for kw, needle in [({"backend": "umap"}, "acm.backend"), ({"reduce": "pca3"}, "acm.reduce"),
                       ({"variant": "csd"}, "acm.variant")]:
        with pytest.raises(ConfigError, match=needle):
            acm(f, y, **kw)


# ───────────────────────────────────────────── multipliers ──
def test_multipliers_geometric_and_linear():
    assert multipliers(0, 4, 0.5) == [1, 1, 1, 1]
    assert multipliers(1, 4, 0.5) == [0.5, 1, 1, 1]
    assert multipliers(3, 4, 0.5) == [0.125, 0.25, 0.5, 1]
    assert multipliers(12, 4, 0.5) == [0, 0, 0, 0.5 ** 9]            # v_min = 1e-3 zeroes the rest
    assert multipliers(40, 4, 0.5) == [0, 0, 0, 0]
    assert multipliers(1, 4, 0.5, "linear") == pytest.approx([0.5, 0.625, 0.75, 0.875])
    assert multipliers(2, 4, 0.5, "linear") == pytest.approx([0, 0.25, 0.5, 0.75])
    assert multipliers(2, 4, 0.5, "exponential") == pytest.approx([0.25, 0.5 ** 1.5, 0.5, 0.5 ** 0.5])
    with pytest.raises(ConfigError, match="st.multiplier"):
        multipliers(1, 4, 0.5, "cubic")


# ───────────────────────────────────────────── ST on short runs ──
def _st_cfg(tmp_path, name, cm="st", **sets):
    """A short synthetic ST run checked once per epoch (at its end) with the absolute trigger, unless
    ``sets`` say otherwise."""
    base = {"out_dir": str(tmp_path), "name": name, "train.progress": "false", "train.epochs": 3,
            "train.deterministic": "true", "train.threads": 1, "acm.subset": 100,
            "st.check_every": 10 ** 6, "st.trigger": "absolute", "st.warmup_epochs": 0,
            "st.warmup_steps": 0}
    base.update(sets)
    return build("synthetic_smoke", [f"{k}={v}" for k, v in base.items()], countermeasure=cm)


def _state(tr):
    return {k: v.detach().clone() for k, v in tr.model.state_dict().items()}


def test_rollback_restores_weights_momentum_and_bn_exactly(tmp_path):
    """τ tiny: every epoch is rejected, so after each the model is the initial one again —
    weights and BN running statistics bit-for-bit, and no momentum."""
    cfg = _st_cfg(tmp_path, "rej", **{"st.tau": 1e-9, "train.epochs": 2})
    tr = Trainer(cfg, hooks=build_hooks(cfg)).setup()
    init = _state(tr)
    tr.fit()
    after = _state(tr)
    for k in init:
        assert torch.equal(init[k], after[k]), k
    assert len(tr.wrapped.optimizer.state) == 0                        # momentum buffers rolled back too
    recs = tr.records
    assert [r["rejected"] for r in recs] == [True, True]
    assert [r["st_counter"] for r in recs] == [1, 2]
    assert recs[1]["st_v"] == multipliers(2, 10, 0.5)
    assert recs[0]["st_checks"][0]["test_acc_rejected"] is not None     # monitoring of the rejected weights
    assert recs[0]["st_checks"][0]["rolled_back_to"] == 0.0            # the initialisation
    tr.close()


def test_st_that_never_triggers_is_nt_bit_for_bit(tmp_path):
    nt = train(_st_cfg(tmp_path, "nt", cm="nt"))
    cfg = _st_cfg(tmp_path, "st", **{"st.tau": 1e9})
    st = train(cfg, hooks=build_hooks(cfg))
    a = torch.load(tmp_path / "nt" / "checkpoint.pt", weights_only=True)["trainer"]["model"]
    b = torch.load(tmp_path / "st" / "checkpoint.pt", weights_only=True)["trainer"]["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert st["final_test_acc"] == nt["final_test_acc"]
    recs = [json.loads(l) for l in (tmp_path / "st" / "records.jsonl").read_text().splitlines()]
    assert all(not r["rejected"] and r["acm"] > 0 and r["st_v"] == [1.0] * 10 for r in recs)
    assert (tmp_path / "st" / "st.png").stat().st_size > 0 and (tmp_path / "st" / "acm_scatter.png").exists()


def test_frozen_groups_do_not_change_and_all_frozen_stops(tmp_path):
    """α = 0.01, v_min 0.5: one trigger zeroes group 0; with τ tiny every epoch triggers until
    all are frozen, and ST stops early."""
    cfg = _st_cfg(tmp_path, "frz", **{"st.tau": 1e-9, "st.alpha": 0.01, "st.v_min": 0.5, "train.epochs": 30})
    tr = Trainer(cfg, hooks=build_hooks(cfg)).setup()
    tr.fit()
    recs = tr.records
    assert recs[0]["st_v"][0] == 0 and recs[0]["st_v"][1:] == [1.0] * 9
    assert recs[-1]["stop"] and recs[-1]["st_v"] == [0.0] * 10 and len(recs) == 10
    assert tr.model.frozen_groups() == list(range(10))
    assert not any(p.requires_grad for p in tr.model.parameters())
    tr.close()


def test_frozen_group_stays_still_while_the_rest_trains(tmp_path):
    """Only epoch 1 is rejected and α tiny freezes group 0: in epochs 2 and 3 every other group
    trains while group 0's weights and BN statistics stay exactly where the rollback put them."""
    class Record(TrainHook):
        stems, heads = [], []

        def on_epoch_end(self, tr, rec):
            self.stems.append({k: v.clone() for k, v in tr.model.layer_groups()[0][1].state_dict().items()})
            self.heads.append(tr.model.head.weight.detach().clone())

    cfg = _st_cfg(tmp_path, "part", **{"st.alpha": 0.01, "st.v_min": 0.5, "train.epochs": 3})
    hooks = build_hooks(cfg)
    st = hooks[0]
    st._triggered = lambda a: st.state["c"] == 0          # reject the first epoch only
    rec = Record()
    tr = Trainer(cfg, hooks=hooks + [rec]).setup()         # ST's hook runs first: rec sees post-rollback state
    tr.fit()
    assert [r["rejected"] for r in tr.records] == [True, False, False]
    assert tr.records[-1]["st_v"] == [0.0] + [1.0] * 9
    lr = tr.records[0]["lr"]                               # the epoch that ended in the rollback records the
    assert lr[0] == 0.0 and lr[1] == lr[-1] > 0            # damped lrs in force after it, not the snapshot's
    for e in (1, 2):
        for k in rec.stems[0]:
            assert torch.equal(rec.stems[0][k], rec.stems[e][k]), (e, k)
    assert not torch.equal(rec.heads[1], rec.heads[2])
    tr.close()


def test_st_full_fine_tunes_every_group_after_st(tmp_path):
    cfg = _st_cfg(tmp_path, "full", cm="st_full", **{"st.finetune_epochs": 2, "train.epochs": 2, "st.tau": 1e-9,
                                                     "st.alpha": 0.01, "st.v_min": 0.5})
    assert cfg.optim.lr == 0.1 and cfg.augment.cg          # st.base_lr=recipe: the lr NT trains with
    assert cfg.train.epochs == 4                            # st.budget=extra: 2 ST-CG + 2 fine-tune
    tr = Trainer(cfg, hooks=build_hooks(cfg)).setup()
    tr.fit()
    recs = tr.records
    assert [r.get("phase") for r in recs] == ["st", "st", "finetune", "finetune"]
    assert recs[2]["lr"][0] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * (1 - 1 / 8) / 2)), rel=1e-6)
    assert tr.model.frozen_groups() == [] and all(p.requires_grad for p in tr.model.parameters())
    assert all(l > 0 for l in recs[3]["lr"])
    tr.close()


def test_st_full_epochs_default_and_user_values():
    assert build("demo", [], countermeasure="st_full").train.epochs == 12 + 30
    assert build("demo", ["st.finetune_epochs=5"], countermeasure="st_full").train.epochs == 17
    cfg = build("demo", ["train.epochs=8", "optim.lr=0.05"], countermeasure="st_full")
    assert cfg.train.epochs == 8 + 30 and cfg.optim.lr == 0.05     # extra: the fine-tune comes on top
    assert build("demo", ["train.epochs=8", "st.budget=matched"], countermeasure="st_full").train.epochs == 8
    assert build("demo", ["st.budget=matched", "st.finetune_epochs=4"], countermeasure="st_full").train.epochs == 12
    with pytest.raises(ConfigError, match="st.finetune_epochs"):
        build_hooks(build("demo", ["train.epochs=30", "st.budget=matched"], countermeasure="st_full"))
    with pytest.raises(ConfigError, match="st.budget"):
        build_hooks(build("demo", ["st.budget=more"], countermeasure="st_full"))


class _Crash(TrainHook):
    def __init__(self, at):
        self.at = at

    def on_batch(self, tr, x, y, idx):
        if tr.epoch == self.at:
            raise KeyboardInterrupt
        return x, y


def test_st_resume_is_bit_for_bit(tmp_path):
    sets = {"st.trigger": "jump", "st.jump": 1.05, "train.epochs": 4, "st.check_every": 2}
    cfg = _st_cfg(tmp_path, "full", **sets)
    train(cfg, hooks=build_hooks(cfg))
    cut = _st_cfg(tmp_path, "cut", **sets)
    with pytest.raises(KeyboardInterrupt):
        train(cut, hooks=build_hooks(cut) + [_Crash(2)])
    cut = _st_cfg(tmp_path, "cut", **sets)
    train(cut, hooks=build_hooks(cut), resume=True)
    timing = ("images_per_s", "train_time_s", "elapsed_s", "acm_ms")

    def strip(r):
        r = {k: v for k, v in r.items() if k not in timing}
        r["st_checks"] = [{k: v for k, v in c.items() if k not in timing} for c in r.get("st_checks", [])]
        return r
    ra = [strip(json.loads(l)) for l in (tmp_path / "full" / "records.jsonl").read_text().splitlines()]
    rb = [strip(json.loads(l)) for l in (tmp_path / "cut" / "records.jsonl").read_text().splitlines()]
    assert ra == rb
    checks = [c["accepted"] for r in ra for c in r["st_checks"]]
    assert any(checks) and not all(checks)                                # both branches exercised
    assert len({r["st_counter"] for r in ra}) > 1                         # rollbacks across the cut


def test_base_lr_is_the_recipes_or_the_papers_and_scales_with_the_batch(tmp_path):
    nt = build("synthetic_smoke", [], countermeasure="nt").optim.lr
    for cm, paper in (("st", 0.1), ("st_cg", 0.2), ("st_full", 0.2)):
        assert build("synthetic_smoke", [], countermeasure=cm).optim.lr == nt
        assert build("synthetic_smoke", ["st.base_lr=paper"], countermeasure=cm).optim.lr == paper
        assert build("synthetic_smoke", ["st.base_lr=paper", "st.lr_scale=batch", "train.batch_size=64"],
                     countermeasure=cm).optim.lr == pytest.approx(paper / 2)
        assert build("synthetic_smoke", ["st.lr_scale=batch", "train.batch_size=256"],
                     countermeasure=cm).optim.lr == pytest.approx(2 * nt)
        assert build("synthetic_smoke", ["st.base_lr=paper", "optim.lr=0.03"], countermeasure=cm).optim.lr == 0.03


def test_bad_st_values_and_deepspeed_are_refused():
    for sets, needle in [(["st.alpha=1.5"], "st.alpha"), (["st.trigger=often"], "st.trigger"),
                         (["st.check_every=-1"], "st.check_every"), (["st.rollback=-1"], "st.rollback"), (["st.window=0"], "st.window"),
                         (["st.lr_scale=sqrt"], "st.lr_scale"), (["st.base_lr=0.2"], "st.base_lr"), (["st.warmup_epochs=-0.5"], "st.warmup_epochs"),
                         (["st.jump=0.9"], "st.jump"), (["acm.backend=umap"], "acm.backend"),
                         (["parallel.backend=deepspeed"], "DeepSpeed")]:
        with pytest.raises(ConfigError, match=needle):
            build_hooks(build("demo", sets, countermeasure="st"))


# ───────────────────────────────────────────── AT ──
def test_at_batches_are_adversarial_within_the_budget(tmp_path):
    cfg = _st_cfg(tmp_path, "at", cm="at", **{"train.epochs": 1})
    (hook,) = build_hooks(cfg)
    tr = Trainer(cfg, hooks=[]).setup()
    xb, yb, ib = next(iter(tr.train_loader))
    x = tr.augmenter(xb, out_dtype=torch.float32)
    xa, ya = hook.on_batch(tr.view, x, yb, ib)
    assert xa.shape == x.shape and torch.equal(ya, yb)
    assert float((xa - x).abs().max()) <= cfg.at.eps + 1e-6 and float((xa - x).abs().max()) > cfg.at.eps / 2
    assert 0 <= float(xa.min()) and float(xa.max()) <= 1
    tr.model.eval()
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy
        assert ce(tr.model(xa), yb) > ce(tr.model(x), yb)
    tr.close()


def test_registry_and_combinations():
    names = COUNTERMEASURES.names()
    for n in ("nt", "nt_cg", "st", "st_cg", "st_full", "at"):
        assert n in names
    assert [c.name for c in parse("st_cg+at")] == ["st_cg", "at"]
    assert [c.name for c in parse("nt+at")] == ["at"]
    with pytest.raises(ConfigError, match="twice"):
        parse("at+at")
    with pytest.raises(ConfigError, match="unknown countermeasure"):
        parse("stt")


# ───────────────────────────────────────────── ST on a real shortcut (the gate's honest check) ──
# Real images (the embedded 2,000 CIFAR-10 sample at 16 px) without crop/flip. The shortcut is
# class-wise noise (``random``, granularity class, ε = 128/255: one fixed pattern per class), made
# available from epoch SHORTCUT_FROM on: before it, the batches are the clean images (a hook swaps
# them in), so the model first learns real features — the paper's "golden window", made explicit —
# and then picks the pattern up within an epoch. A record-only run (``st.trigger=never``) shows
# ACM multiplied ~10× by it; clean training of the same length moves ACM by far less once its own
# early learning has settled (ACM grows 0.2 → 0.7 over the first ~3.5 epochs of real learning, hence
# the warm-up of SHORTCUT_FROM epochs). ST runs at its defaults but for that warm-up, a check every 4
# steps, a smaller D_v, a constant lr, a reference window of 2.5 epochs (the default 1 epoch is 16
# steps here) and jump 2 (clean training reaches 1.3-1.4 here). Measured over seeds 0-2 × threads
# 1-2 (bench/results/gate_margins_cpu-2core_2026-12-06.md): ACM doublings from the shortcut
# 3.01-3.36 against a bound of 1 (min margin 2.01, spread 0.36: 5.6×); clean training's largest
# ratio 1.32-1.35 against 2 (min margin 0.65, spread 0.03: 21×).
SHORTCUT_FROM = 4
GATE_ST = {"st.warmup_epochs": SHORTCUT_FROM, "st.check_every": 4, "st.jump": 2.0, "st.window": 2.5,
           "acm.subset": 500, "optim.schedule": "constant"}


class _CleanUntil(TrainHook):
    """Train on the clean images (same order and labels) until epoch ``until``."""

    def __init__(self, clean_x, until):
        self.clean_x, self.until = torch.from_numpy(np.array(clean_x)), until

    def on_batch(self, tr, x, y, idx):
        if tr.epoch < self.until:
            x = tr.eval_transform(self.clean_x[idx.cpu()].to(x.device)).to(x.dtype)
        return x, y


@pytest.fixture(scope="module")
def shortcut_stores(tmp_path_factory):
    from ueperf.config import DataConfig
    from ueperf.data import prepare_dataset
    from ueperf.protections.runner import generate_protected
    tmp = tmp_path_factory.mktemp("st_gate")
    clean = prepare_dataset(DataConfig(dataset="embedded", image_size=16, cache_dir=str(tmp / "cache")))
    shortcut = generate_protected("random", clean, overrides=["granularity=class", "eps=128/255"],
                                  out=tmp / "shortcut", progress=False, grid=False)
    return {"clean": clean, "shortcut": shortcut}


def _gate_run(tmp_path, stores, which, name, epochs=8, **st):
    from margins import GATE_SEED
    sets = {"data.dataset": stores[which].path, "model.width": 0.125, "train.epochs": epochs,
            "train.batch_size": 128, "train.seed": GATE_SEED, "train.progress": "false",
            "out_dir": str(tmp_path), "name": name, "augment.crop_padding": 0, "augment.flip": "false",
            **GATE_ST, **st}
    cfg = build("synthetic_smoke", [f"{k}={v}" for k, v in sets.items()], countermeasure="st")
    hooks = build_hooks(cfg) + [_CleanUntil(np.asarray(stores["clean"].train.x), SHORTCUT_FROM)]
    summary = train(cfg, hooks=hooks)
    recs = [json.loads(l) for l in (tmp_path / name / "records.jsonl").read_text().splitlines()]
    return summary, recs, [c for r in recs for c in r["st_checks"]]


def _median(checks, lo, hi):
    return float(np.median([c["acm"] for c in checks if lo < c["t"] <= hi]))


@pytest.mark.margin
def test_st_fires_on_a_shortcut_and_rolls_back_to_before_it(shortcut_stores, tmp_path, margin):
    jump = GATE_ST["st.jump"]
    # the record-only trace: what the shortcut does to ACM, and the ratio the trigger would see
    _, _, trace = _gate_run(tmp_path, shortcut_stores, "shortcut", "trace", **{"st.trigger": "never"})
    assert all(c["accepted"] for c in trace)
    # ACM doublings (log2: the growth is multiplicative; 8-12× measured) against the jump's
    margin.above("ACM doublings from the shortcut (log2 last epoch's median / the epoch before it)",
                 math.log2(_median(trace, 7, 8) / _median(trace, SHORTCUT_FROM - 1, SHORTCUT_FROM)), math.log2(jump))
    due = next(c for c in trace if c["t"] > SHORTCUT_FROM and c["ratio"] > jump)
    assert all(c["ratio"] <= jump for c in trace if SHORTCUT_FROM < c["t"] < due["t"])

    s, recs, checks = _gate_run(tmp_path, shortcut_stores, "shortcut", "st")
    first = next(c for c in checks if not c["accepted"])
    # up to the trigger ST trains exactly as the record-only run; it fires at the first check over the jump
    assert first["t"] == due["t"] and first["acm"] == pytest.approx(due["acm"], rel=1e-5)
    assert [c["t"] for c in checks if c["t"] < first["t"]] == [c["t"] for c in trace if c["t"] < due["t"]]
    # ... and rolls back to a check before the rise: earlier, and within √jump of the reference
    back = next(c for c in checks if c["accepted"] and c["t"] == first["rolled_back_to"])
    assert back["t"] < first["t"] <= SHORTCUT_FROM + 1
    assert back["acm"] <= math.sqrt(jump) * first["acm"] / first["ratio"] + 1e-9
    assert s["st_rejections"] >= 1 and s["st_rejected_epochs"][0] == math.ceil(first["t"])
    # damping goes shallow → deep: after c rollbacks v is exactly the geometric front of spec §4.3
    for r in recs:
        assert r["st_v"] == multipliers(r["st_counter"], 10, 0.5)
    after_first = next(r for r in recs if r["st_counter"] >= 1)
    assert after_first["st_v"][0] < 1.0 and after_first["st_v"][-1] == 1.0
    # what ST returns is the kept model: its D_v accuracy, not the last rejected weights' running one
    assert s["final_train_acc"] == s["st_kept"]["dv_acc"] and "final_train_acc_running" in s
    assert (tmp_path / "st" / "st.png").stat().st_size > 0


@pytest.mark.margin
def test_st_stays_quiet_on_clean_training_of_the_same_length(shortcut_stores, tmp_path, margin, capsys):
    s, recs, checks = _gate_run(tmp_path, shortcut_stores, "clean", "clean")
    margin.below("largest ACM ratio in clean training after the warm-up",
                 max(c["ratio"] for c in checks if c["t"] > SHORTCUT_FROM), GATE_ST["st.jump"])
    assert s["st_rejections"] == 0 and all(c["accepted"] for c in checks)
    assert all(r["st_v"] == [1.0] * 10 for r in recs)
    # ... and says so: it trained as NT does
    assert any("ST never rolled back" in w for w in s["warnings"])
    assert any("ST never rolled back" in w for w in recs[-1].get("warnings", []))
    assert "ST never rolled back" in capsys.readouterr().err
