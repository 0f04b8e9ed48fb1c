"""The fast victim (``fastnet`` + the ``fast_victim`` recipe, ``ueperf.engine.fast``): exact contracts of
each airbench technique, its off value, resume with all of them on, the CLI end to end, and the
promise that no other recipe's config (nor the reuse of runs made before these keys existed) changes.
No accuracy is asserted here; bench/fast_victim.py measures it."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ueperf.augment.pipeline import Augmenter
from ueperf.config import LATER_KEYS, apply_overrides, result_keys, to_dict
from ueperf.countermeasures import build_hooks
from ueperf.engine import fast
from ueperf.engine.hooks import TrainHook
from ueperf.engine.schedule import lr_factor
from ueperf.engine.trainer import Trainer, config_diff, seed_everything, train
from ueperf.errors import ConfigError
from ueperf.models import build_model
from ueperf.recipes import RECIPES, build

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "ueperf" / "data" / "embedded" / "cifar10_sample.npz"

# 256 synthetic 16-px images of 4 classes, an eighth-width fastnet (widths 8/32/32): 4 steps an epoch
SMALL = {"data.dataset": "synthetic", "data.synthetic_train": 256, "data.synthetic_test": 64,
         "data.synthetic_size": 16, "data.synthetic_classes": 4, "train.batch_size": 64, "model.width": 0.125,
         "train.epochs": 1, "optim.warmup_epochs": 0.2, "train.progress": "false", "train.threads": 1,
         "train.device": "cpu"}
OFF = {"fast.whiten": "false", "fast.identity_init": "false", "fast.bn_momentum": 0, "fast.bn_bias_lr": 1,
       "fast.label_smoothing": 0, "fast.lookahead": "false", "fast.tta": "none"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(tmp_path, name, **sets):
    base = {**SMALL, "out_dir": str(tmp_path), "name": name, "data.cache_dir": str(tmp_path / "cache"), **sets}
    return build("fast_victim", [f"{k}={v}" for k, v in base.items()])


def _reference_model(cfg):
    """The model the trainer builds before any fast.* switch acts on it (same seed, same call)."""
    seed_everything(cfg.train.seed)
    return build_model("fastnet", cfg.data.synthetic_classes, cfg.data.synthetic_size, width=cfg.model.width)


# ───────────────────────────────────────────── the model ──
@pytest.mark.parametrize("width", [1.0, 0.25])
def test_layer_groups_cover_every_parameter_and_buffer_once(width):
    with torch.device("meta"):
        m = build_model("fastnet", 10, 32, width=width)
    groups = m.layer_groups()
    assert [n for n, _ in groups] == ["whiten", "block1", "block2", "block3", "head"]
    assert m.group_stages() == [0, 1, 2, 3, 4]
    for kind in ("parameters", "buffers"):
        seen = [id(t) for _, mod in groups for t in getattr(mod, kind)()]
        assert len(seen) == len(set(seen)) and set(seen) == {id(t) for t in getattr(m, kind)()}, kind
    if width == 1.0:  # 312 + 50,816 + 737,792 + 1,180,160 + 2,560 (module docstring)
        assert sum(p.numel() for p in m.parameters()) == 1_971_640
    assert m.whiten.weight.shape == (24, 3, 2, 2)  # 2 · (3 · 2 · 2) at every width


def test_head_is_bias_free_linear_scaled_by_a_ninth():
    torch.manual_seed(0)
    m = build_model("fastnet", 7, 32, width=0.25).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        f = m.features(x)
        assert torch.equal(m(x), m.head(f)) and m.head.bias is None
        torch.testing.assert_close(m(x), f @ m.head.weight.T / 9)
    # BatchNorm learns only its shift: no scale parameter anywhere
    assert not any(n.endswith("norm1.weight") or n.endswith("norm2.weight") for n, _ in m.named_parameters())


# ───────────────────────────────────────────── whitening ──
def test_whitening_makes_the_patch_covariance_the_identity():
    """On the 2,000 real CIFAR-10 images shipped in the package: after fit_whitening, the first 24/2 = 12
    outputs of the conv (before the GELU) over every 2×2 patch of those images have mean 0 and
    covariance diag(λ / (λ + ε)) — the identity once each channel is scaled by √((λ + ε) / λ) — and the
    other 12 are their negatives. Tolerance 1e-5 on unit-variance entries: the covariance is taken in
    float64 over float32 conv outputs, each a sum of 12 products carrying ~12 · 2^-24 ≈ 1e-6 relative
    rounding; measured 3e-7 (the eigendecomposition itself is float64)."""
    x = np.load(EMBEDDED)["train_x"]
    transform = Augmenter(normalize=True).eval_transform
    torch.manual_seed(0)
    conv = build_model("fastnet", 10, 32, width=0.25).whiten
    eps = 5e-4
    info = fast.fit_whitening(conv, x, transform, eps=eps)
    lam = torch.tensor(info["eigenvalues"], dtype=torch.float64)
    assert info["images"] == 2000 and info["patches"] == 2000 * 31 * 31
    assert torch.all(lam[:-1] >= lam[1:]) and lam[-1] > 0  # descending, all directions present
    with torch.no_grad():
        z = torch.cat([conv(transform(torch.from_numpy(x[i:i + 250]))).permute(0, 2, 3, 1).reshape(-1, 24)
                       for i in range(0, 2000, 250)]).double()
    mean = z.mean(0)
    cov = (z - mean).T @ (z - mean) / z.shape[0]
    assert mean.abs().max() < 1e-5
    torch.testing.assert_close(cov[:12, :12], torch.diag(lam / (lam + eps)), atol=1e-5, rtol=0)
    s = torch.sqrt((lam + eps) / lam)
    torch.testing.assert_close(cov[:12, :12] * s[:, None] * s[None, :], torch.eye(12, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    assert torch.equal(z[:, 12:], -z[:, :12])


def test_the_trainer_whitens_on_the_training_images_freezes_the_weights_and_stops_the_bias(tmp_path):
    class Biases(TrainHook):
        def __init__(self):
            self.seen = []

        def on_epoch_end(self, tr, rec):
            self.seen.append(tr.model.whiten.bias.detach().clone())

    cfg = _cfg(tmp_path, "w", **{"train.epochs": 2, "fast.whiten_bias_epochs": 1, "fast.whiten_images": 100,
                                 "fast.lookahead": "false"})
    hook = Biases()
    with Trainer(cfg, hooks=[hook]) as tr:
        conv = tr.model.whiten
        fitted = conv.weight.detach().clone(), conv.bias.detach().clone()
        ref = nn.Conv2d(3, 24, 2)
        fast.fit_whitening(ref, tr.store.train.x, Augmenter.from_config(cfg.augment).eval_transform,
                           eps=cfg.fast.whiten_eps, n_images=100, seed=cfg.train.seed)
        assert torch.equal(fitted[0], ref.weight) and torch.equal(fitted[1], ref.bias)   # training images only
        assert not conv.weight.requires_grad
        opt_params = {id(p) for g in tr.wrapped.param_groups for p in g["params"]}
        assert id(conv.weight) not in opt_params and id(conv.bias) in opt_params
        tr.fit()
        assert torch.equal(conv.weight, fitted[0])                  # frozen
    assert not torch.equal(hook.seen[0], fitted[1])                 # the bias trained in epoch 1 ...
    assert torch.equal(hook.seen[1], hook.seen[0])                  # ... and not after whiten_bias_epochs


# ───────────────────────────────────────────── off means off ──
def test_every_off_value_leaves_the_model_and_optimiser_as_without_the_recipe(tmp_path):
    cfg = _cfg(tmp_path, "off", **OFF)
    ref = _reference_model(cfg)
    with Trainer(cfg) as tr:
        m = tr.model
        for (k, v), (k2, v2) in zip(m.state_dict().items(), ref.state_dict().items()):
            assert k == k2 and torch.equal(v, v2), k          # whitening and identity init off: default init
        assert all(p.requires_grad for p in m.parameters())   # the first conv trains
        assert all(b.momentum == 0.1 for b in m.modules() if isinstance(b, nn.BatchNorm2d))
        assert len(tr.wrapped.param_groups) == len(m.layer_groups()) == 5   # no split groups
        assert tr.wrapped.param_groups is tr.wrapped.optimizer.param_groups
        assert [g["params"] for g in tr.wrapped.param_groups] == [list(mod.parameters()) for _, mod in m.layer_groups()]
        assert tr.lookahead is None and tr.whitening is None
        tr.fit()
    assert "fast" not in torch.load(tmp_path / "off" / "checkpoint.pt", weights_only=True)


def test_every_on_value_acts_as_specified(tmp_path):
    cfg = _cfg(tmp_path, "on", **{"fast.whiten_bias_epochs": 0.5})
    ref = _reference_model(cfg)
    with Trainer(cfg) as tr:
        m = tr.model
        assert not torch.equal(m.whiten.weight, ref.whiten.weight)
        for name in ("block1.conv2", "block2.conv1", "block2.conv2", "block3.conv1", "block3.conv2"):
            w, w0 = m.get_submodule(name).weight, ref.get_submodule(name).weight
            cin = w.shape[1]
            dirac = torch.zeros(cin, cin, 3, 3)
            dirac[range(cin), range(cin), 1, 1] = 1
            assert torch.equal(w[:cin], dirac) and torch.equal(w[cin:], w0[cin:]), name
        # at width 1/8 block1.conv1 maps 24 channels to 8: fewer outputs than inputs, no identity
        assert m.block1.conv1.weight.shape[:2] == (8, 24) and torch.equal(m.block1.conv1.weight, ref.block1.conv1.weight)
        assert all(b.momentum == 0.4 for b in m.modules() if isinstance(b, nn.BatchNorm2d))
        # 5 layer groups, then the whitening bias and each block's BN biases in groups of their own
        groups = tr.wrapped.param_groups
        assert [g["name"] for g in groups] == ["whiten", "block1", "block2", "block3", "head", "whiten.whiten_bias",
                                               "block1.bn_bias", "block2.bn_bias", "block3.bn_bias"]
        bn_bias = {id(b.bias) for b in m.modules() if isinstance(b, nn.BatchNorm2d)}
        assert {id(p) for g in groups[6:] for p in g["params"]} == bn_bias
        assert not bn_bias & {id(p) for g in groups[:6] for p in g["params"]}
        wd = cfg.optim.weight_decay
        assert [g["weight_decay"] for g in groups] == [wd] * 6 + [wd / 64] * 3
        tr.set_lr(0.25)
        lr = tr.scheduled_lr(0.25)
        assert [g["lr"] for g in groups] == [lr] * 6 + [lr * 64] * 3
        tr.set_lr(0.5)                                          # fast.whiten_bias_epochs: the whitening bias stops
        lr = tr.scheduled_lr(0.5)
        assert lr > 0 and [g["lr"] for g in groups] == [lr] * 5 + [0.0] + [lr * 64] * 3
        assert isinstance(tr.lookahead, fast.Lookahead) and tr.whitening["images"] == 256


def test_a_model_without_whitening_stem_is_refused(tmp_path):
    cfg = _cfg(tmp_path, "r18", **{"model.name": "resnet18"})
    with pytest.raises(ConfigError, match="fast.whiten=true needs a model with a patch-whitening stem"):
        train(cfg)


@pytest.mark.parametrize("key,value", [("fast.tta", "hflip"), ("fast.label_smoothing", 1), ("fast.bn_bias_lr", 0),
                                       ("fast.bn_momentum", 1.5), ("fast.lookahead_every", 0),
                                       ("optim.warmup_start", 2)])
def test_bad_values_are_refused_by_name_before_anything_runs(tmp_path, key, value):
    cfg = _cfg(tmp_path, "bad", **{key: value})
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_hooks(cfg)
    assert not (tmp_path / "bad").exists()


# ───────────────────────────────────────────── label smoothing ──
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_the_training_loss_is_the_label_smoothing_formula(tmp_path, eps):
    """One step (a batch of every image): the recorded training loss is
    −(1/B) Σ_b [(1 − ε) log p_b,y_b + (ε/K) Σ_k log p_b,k] of the logits the step saw; ε = 0 is plain CE."""
    class Grab(TrainHook):
        def loss(self, tr, logits, y):
            self.logits, self.y = logits.detach().double(), y.clone()
            return None  # keep the trainer's loss

    grab = Grab()
    cfg = _cfg(tmp_path, f"ls{eps}", **{"train.batch_size": 256, "fast.label_smoothing": eps, "fast.lookahead": "false"})
    train(cfg, hooks=[grab])
    rec = json.loads((tmp_path / f"ls{eps}" / "records.jsonl").read_text().splitlines()[0])
    logp = F.log_softmax(grab.logits, 1)
    K = logp.shape[1]
    want = -((1 - eps) * logp.gather(1, grab.y[:, None])[:, 0] + eps / K * logp.sum(1)).mean()
    assert rec["train_loss"] == pytest.approx(float(want), abs=2e-6)
    if eps == 0:
        assert rec["train_loss"] == pytest.approx(float(F.cross_entropy(grab.logits, grab.y)), abs=2e-6)


# ───────────────────────────────────────────── lookahead ──
def test_lookahead_follows_its_formula_on_a_toy_model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    every, decay, total = 2, 0.9, 7
    la = fast.Lookahead(m, every, decay, total)
    floats = {k: v for k, v in m.state_dict().items() if v.is_floating_point()}
    assert set(la.slow) == set(floats) and "1.num_batches_tracked" not in la.slow   # weights and BN statistics
    slow = {k: v.clone().double() for k, v in floats.items()}
    for t in range(1, total + 1):
        with torch.no_grad():                                   # a stand-in for an optimiser step
            for v in floats.values():
                v.add_(torch.randn_like(v))
        fast_w = {k: v.clone().double() for k, v in floats.items()}
        la.after_step(t)
        if t % every == 0:
            d = decay ** every * (t / total) ** 3
            assert la.decay_at(t) == pytest.approx(d)
            slow = {k: d * slow[k] + (1 - d) * fast_w[k] for k in slow}
            want = slow
        else:
            want = fast_w
        if t == total:
            want = slow                                        # the end keeps the slow weights
        for k, v in floats.items():
            torch.testing.assert_close(v.double(), want[k], rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(la.slow[k].double(), slow[k], rtol=1e-6, atol=1e-6)


# ───────────────────────────────────────────── test-time augmentation ──
def test_tta_is_the_weighted_mean_of_the_views():
    torch.manual_seed(0)
    m = build_model("fastnet", 5, 16, width=0.125).eval()
    x = torch.rand(4, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(fast.tta_logits(m, x, "none"), m(x))
        assert torch.equal(fast.tta_logits(m, x, "flip"), (m(x) + m(x.flip(-1))) / 2)
        pad = F.pad(x, (1, 1, 1, 1), mode="reflect")
        a, b = pad[..., :16, :16], pad[..., 2:, 2:]
        assert torch.equal(a[..., 1:, 1:], x[..., :-1, :-1]) and torch.equal(b[..., :-1, :-1], x[..., 1:, 1:])
        want = (m(x) + m(x.flip(-1))) / 4 + (m(a) + m(a.flip(-1)) + m(b) + m(b.flip(-1))) / 8
        torch.testing.assert_close(fast.tta_logits(m, x, "multicrop"), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["none", "flip"])
def test_evaluation_uses_the_tta_logits(tmp_path, mode):
    cfg = _cfg(tmp_path, f"tta-{mode}", **{"fast.tta": mode})
    with Trainer(cfg) as tr:
        got = tr.evaluate()
        m = tr.model.eval()
        loss = corr = n = 0.0
        with torch.no_grad():
            for xb, yb, _ in tr.test_loader:
                x = tr.augmenter.eval_transform(xb)
                z = m(x) if mode == "none" else (m(x) + m(x.flip(-1))) / 2
                loss += float(F.cross_entropy(z.float(), yb, reduction="sum"))
                corr += float((z.argmax(1) == yb).sum())
                n += len(yb)
    assert got["test_images"] == n == 64
    assert got["test_acc"] == corr / n and got["test_loss"] == pytest.approx(loss / n, rel=1e-6)


# ───────────────────────────────────────────── resume ──
class Crash(TrainHook):
    def __init__(self, at):
        self.at = at

    def on_batch(self, trainer, x, y, idx):
        if trainer.epoch == self.at:
            raise KeyboardInterrupt
        return x, y


def test_resume_with_every_option_on_equals_an_uninterrupted_run_bitwise(tmp_path):
    """3 epochs of 4 steps with every technique on: the whitening bias stops after epoch 1, Lookahead syncs
    every 3 steps (so across epoch boundaries), multicrop TTA evaluates; cut in epoch 3, resumed."""
    sets = {"train.epochs": 3, "optim.warmup_epochs": 0.6, "train.deterministic": "true",
            "fast.whiten_bias_epochs": 1, "fast.lookahead_every": 3}
    full = train(_cfg(tmp_path, "full", **sets))
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path, "cut", **sets), hooks=[Crash(at=2)])
    assert len((tmp_path / "cut" / "records.jsonl").read_text().splitlines()) == 2
    resumed = train(_cfg(tmp_path, "cut", **sets), resume=True)
    assert resumed["final_test_acc"] == full["final_test_acc"]
    ca, cb = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for d in ("full", "cut"))
    for key, a, b in [("model", ca["trainer"]["model"], cb["trainer"]["model"]),
                      ("slow", ca["fast"]["lookahead"]["slow"], cb["fast"]["lookahead"]["slow"])]:
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (key, k)
    ma, mb = ca["trainer"]["optimizer"]["state"], cb["trainer"]["optimizer"]["state"]
    assert all(torch.equal(ma[i]["momentum_buffer"], mb[i]["momentum_buffer"]) for i in ma)
    strip = lambda r: {k: v for k, v in r.items() if k not in ("images_per_s", "train_time_s", "elapsed_s")}  # noqa: E731
    ra, rb = ([strip(json.loads(line)) for line in (tmp_path / d / "records.jsonl").read_text().splitlines()]
              for d in ("full", "cut"))
    assert ra == rb and ra[1]["lr"][5] == 0.0   # epoch 2: the whitening bias's group has lr 0


# ───────────────────────────────────────────── the CLI ──
def test_the_recipe_runs_one_epoch_through_the_train_cli(tmp_path):
    sets = {**SMALL, "out_dir": str(tmp_path), "name": "cli", "data.cache_dir": str(tmp_path / "cache")}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "ueperf.train", "--recipe", "fast_victim", *args], env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["model"] == "fastnet" and 0 <= summary["final_test_acc"] <= 1
    saved = json.loads((tmp_path / "cli" / "config.json").read_text())["config"]
    assert saved["recipe"] == "fast_victim" and saved["fast"]["whiten"] and saved["fast"]["tta"] == "multicrop"
    assert len((tmp_path / "cli" / "records.jsonl").read_text().splitlines()) == 1


# ───────────────────────────────────────────── schedule ──
def test_the_linear_schedule_warms_up_from_a_fraction_then_decays_to_zero():
    f = lambda t: lr_factor("linear", t, 10, warmup=2, warmup_start=0.2)  # noqa: E731
    assert [f(t) for t in (0, 1, 2, 6, 10)] == pytest.approx([0.2, 0.6, 1.0, 0.5, 0.0])
    # warmup_start 0 is the warm-up every other recipe had: from ~0 at t = 0, t / w after
    for sched in ("cosine", "constant", "multistep"):
        assert lr_factor(sched, 0.0, 10, warmup=2) == lr_factor(sched, 0.0, 10, warmup=2, warmup_start=0.0) == 1 / 2000
        assert lr_factor(sched, 1.0, 10, warmup=2) == pytest.approx(0.5 * lr_factor(sched, 1.0, 10))


# ───────────────────────────────────────────── nothing else changes ──
def _old_style(d):
    """A config dict as the code before the fast keys wrote it."""
    old = copy.deepcopy(d)
    old.pop("fast")
    old["optim"].pop("warmup_start")
    return old


@pytest.mark.parametrize("recipe", [r for r in RECIPES.names() if r != "fast_victim"])
def test_other_recipes_keep_their_configs_and_cache_keys(recipe):
    cfg = build(recipe)
    d = to_dict(cfg)
    assert d["fast"] == to_dict(type(cfg)())["fast"] and d["optim"]["warmup_start"] == 0.0   # every switch off
    assert config_diff(_old_style(d), d) == []             # runs written before the keys resume and are reused
    assert not set(result_keys(cfg)) & set(LATER_KEYS)    # surrogate / prior cache keys hash what they hashed


def test_a_run_made_before_the_keys_is_still_a_finished_sweep_cell_but_the_fast_recipe_is_not(tmp_path):
    from ueperf.grid import Cell, Grid, GridRunner, Row
    runner = GridRunner(Grid(dataset="synthetic", rows=[Row("clean")], countermeasures=["nt"], out=tmp_path,
                             recipe="synthetic_smoke"))
    cell = Cell("clean", "nt")
    cfg = runner.cell_config(cell, "/some/store")
    run = runner.run_dir(cell)
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"config": _old_style(to_dict(cfg))}))
    (run / "summary.json").write_text(json.dumps({"final_test_acc": 0.5}))
    assert runner.finished(cell, cfg) == {"final_test_acc": 0.5}
    fv = build("fast_victim")
    diff = config_diff(_old_style(to_dict(fv)), to_dict(fv))
    assert any(line.startswith("fast.whiten:") for line in diff) and any("optim.warmup_start" in x for x in diff)
    apply_overrides(cfg, ["fast.label_smoothing=0.1"])     # a later key away from its default is a change
    with pytest.raises(ConfigError, match="fast.label_smoothing"):
        runner.finished(cell, cfg)


@pytest.mark.parametrize("cm,paradigm", [("ueraser_lite", ""), ("ueraser", ""), ("nt", "ft")])
def test_countermeasures_and_paradigms_keep_the_recipe_schedule(cm, paradigm):
    """UEraser's and the pretrained paradigms' own defaults (200 / 30 epochs at lr 0.1, momentum 0.9)
    replace the standard recipe's, not the fast victim's; --set still wins over both."""
    from ueperf.recipes import build
    sets = ["model.pretrained=x.pt"] if paradigm else []
    fast = build("fast_victim", sets, countermeasure=cm, paradigm=paradigm or "fs")
    base = build("fast_victim", [])
    assert (fast.train.epochs, fast.optim.lr, fast.optim.momentum) == \
        (base.train.epochs, base.optim.lr, base.optim.momentum) == (10, pytest.approx(1.5), 0.85)
    std = build("cifar10_resnet18", sets, countermeasure=cm, paradigm=paradigm or "fs")
    assert std.train.epochs in (200, 30) and std.optim.lr == 0.1
    mine = build("fast_victim", sets + ["train.epochs=3", "optim.lr=0.2"], countermeasure=cm, paradigm=paradigm or "fs")
    assert (mine.train.epochs, mine.optim.lr) == (3, 0.2)
