"""AEP and HYPO: the surrogate-based protections, on real CIFAR-10 images.

One small clean surrogate (1/8-width ResNet-18, 3 epochs on 2,048 real training images) is
trained through the real ``ctx.surrogate`` provider (:func:`make_surrogate_fn`, the engine's
trainer, cached); the methods then craft against it on the first ``N_CRAFT`` images with few PGD
steps. Checked here: the budget after uint8 quantisation, that the methods' own diagnostics agree
with a re-measurement on the published bytes, restarts keeping the per-sample best, the same seed
giving the same bytes, presets and ``norm=l2`` budgets, the context contract (shards, gather,
the surrogate request) and bad configs. Against this weak surrogate only the accuracy drops are
far enough from their bounds to be gate checks (``margin``, seeds from UEPERF_GATE_SEED).

How strongly each method moves its surrogate (AEP's targeted success and its paugment EOT, the
untargeted loss, HYPO's easing) moves with the seed and the thread count by more than a third of
its margin (bench/results/gate_margins_*): those are measured over seeds by bench/effects.py, with
the victim-level effects.
"""
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ueperf.config import DataConfig
from ueperf.data import prepare_dataset
from ueperf.errors import ConfigError
from ueperf.kernels.augment import augment_ref
from ueperf.protections import PROTECTIONS
from ueperf.protections.aep import AEP, AEPConfig
from ueperf.data.budget import measure, size_limit
from ueperf.protections.base import ProtectContext, apply
from ueperf.protections.hypo import HYPO, HYPOConfig
from ueperf.protections.runner import resolve_config
from ueperf.protections.surrogate import make_surrogate_fn

from margins import GATE_SEED

N_TRAIN, N_TEST = 2048, 256   # the clean store the surrogate is trained on
N_CRAFT = 96                  # images crafted per effect test
SUR = dict(surrogate_width=0.125, surrogate_epochs=3)  # what the methods ask ctx.surrogate for


@pytest.fixture(scope="module")
def env(tmp_path_factory, cifar_root):
    cache = tmp_path_factory.mktemp("protect_surrogate")
    clean = prepare_dataset(DataConfig(dataset="cifar10", root=str(cifar_root), cache_dir=str(cache),
                                       train_limit=N_TRAIN, test_limit=N_TEST))
    calls = []
    real = make_surrogate_fn(clean, device=torch.device("cpu"), seed=GATE_SEED, cache_dir=cache, progress=False,
                             forced=["train.batch_size=128"])

    def surrogate(name, epochs, **kw):
        calls.append((name, epochs, kw))
        return real(name, epochs, **kw)

    return {"clean": clean, "surrogate": surrogate, "calls": calls, "runs": {}}


def _ctx(env, cfg, n=N_CRAFT, seed=GATE_SEED, **extra):
    clean = env["clean"]
    fields = dict(x=torch.from_numpy(np.array(clean.train.x[:n])), y=torch.from_numpy(np.asarray(clean.train.y[:n])),
                  num_classes=clean.num_classes, classes=clean.classes, cfg=cfg, seed=seed,
                  device=torch.device("cpu"), progress=False, surrogate=env["surrogate"])
    fields.update(extra)
    return ProtectContext(**fields)


def run(env, method, n=N_CRAFT, seed=GATE_SEED, **kw):
    """(Perturbation, clean uint8, labels, published uint8) of ``method`` with Config(**SUR, **kw);
    cached per module."""
    key = (method, n, seed, tuple(sorted(kw.items())))
    if key not in env["runs"]:
        cls = PROTECTIONS.get(method)
        cfg = cls.Config(**{**SUR, **kw})
        ctx = _ctx(env, cfg, n=n, seed=seed)
        pert = cls().generate(ctx)
        x, y = ctx.x.numpy(), ctx.y.numpy()
        env["runs"][key] = (pert, x, y, apply(x, y, pert))
    return env["runs"][key]


def surrogate_logits(env, x_u8, params=None):
    """The surrogate's logits on uint8 NHWC images (optionally augmented with ``params``)."""
    m = env["surrogate"]("resnet18", SUR["surrogate_epochs"], width=SUR["surrogate_width"])
    xf = torch.from_numpy(np.asarray(x_u8)).float() / 255
    with torch.no_grad():
        return m(augment_ref(xf, params) if params is not None else xf.permute(0, 3, 1, 2)).float()


def rates(env, x_u8, y, t=None):
    lo = surrogate_logits(env, x_u8)
    y = torch.from_numpy(y)
    out = {"acc": (lo.argmax(1) == y).float().mean().item(), "loss": F.cross_entropy(lo, y).item()}
    if t is not None:
        out["target"] = (lo.argmax(1) == t).float().mean().item()
    return out


def check_bound(pert, x, xp):
    size = measure(x, xp, pert.norm)
    assert size["size"] <= size_limit(pert.norm, pert.eps, 32 * 32 * 3) + 1e-9, size
    return size


# ───────────────────────────────────────────── registry + configs ──
def test_registered_with_spec_defaults():
    assert PROTECTIONS.get("aep") is AEP and PROTECTIONS.get("hypo") is HYPO
    a = AEPConfig()
    assert (a.eps, a.norm, a.steps, a.tau, a.restarts, a.init, a.paugment, a.eot, a.batch_size) == \
        (8 / 255, "linf", 250, 0.05, 1, "randn", True, 1, 512)
    assert a.targeted and (a.surrogate_model, a.surrogate_epochs) == ("resnet18", 40)
    h = HYPOConfig()
    assert (h.preset, h.norm, h.steps, h.batch_size, h.surrogate_epochs) == ("eps8", "linf", 100, 512, 60)
    assert h.budget() == pytest.approx((8 / 255, 0.8 / 255))


def test_hypo_presets_and_overrides():
    """The budget table of hypo's docstring, reached the way the CLI does (``--set``)."""
    def budget(*sets):
        return resolve_config("hypo", list(sets))[1].budget()
    assert budget("preset=eps16") == pytest.approx((16 / 255, 1.6 / 255))
    assert budget("norm=l2") == pytest.approx((0.5, 0.1))                      # Delusive-Adversary: ε/5
    assert budget("norm=l2", "eps=1.0") == pytest.approx((1.0, 0.2))
    assert budget("eps=12/255") == pytest.approx((12 / 255, 1.2 / 255))        # step scales with ε
    assert budget("preset=eps16", "step=1/255") == pytest.approx((16 / 255, 1 / 255))
    assert budget("preset=eps16", "eps=4/255") == pytest.approx((4 / 255, 0.4 / 255))  # explicit ε wins
    with pytest.raises(ConfigError, match="preset"):
        budget("preset=eps32")
    with pytest.raises(ConfigError, match="norm=l2"):
        budget("preset=eps16", "norm=l2")


@pytest.mark.parametrize("method,bad,match", [
    ("aep", dict(tau=0.0), "tau"), ("aep", dict(restarts=0), "restarts"), ("aep", dict(init="gauss"), "init"),
    ("aep", dict(eps=8.0), "8/255"), ("aep", dict(eot=0), "eot"), ("aep", dict(norm="l0"), "norm"),
    ("hypo", dict(steps=-1), "steps"), ("hypo", dict(batch_size=0), "batch_size"),
    ("aep", dict(surrogate_epochs=0), "surrogate_epochs"),
])
def test_bad_configs_raise_config_error(env, method, bad, match):
    cls = PROTECTIONS.get(method)
    with pytest.raises(ConfigError, match=match):
        cls().generate(_ctx(env, cls.Config(**{**SUR, **bad}), n=4))


def test_no_surrogate_provider_is_a_config_error(env):
    with pytest.raises(ConfigError, match="surrogate"):
        AEP().generate(_ctx(env, AEPConfig(**SUR), n=4, surrogate=None))


# ───────────────────────────────────────────── AEP ──
FAST_AEP = dict(steps=20, tau=0.2)  # 20 steps of ε/5: 4ε of travel (defaults: 250 of ε/20)


@pytest.mark.margin
def test_aep_targeted_success(env, margin):
    pert, x, y, xp = run(env, "aep", paugment=False, **FAST_AEP)
    t = (torch.from_numpy(y) + 1) % 10
    before, after = rates(env, x, y, t), rates(env, xp, y, t)
    # the surrogate now reads most published images as π(y); clean images are π(y) by chance only
    # spread over seeds 0-2 × threads 1-2: 0.010; min margin 0.24 (bench/results/gate_margins_*).
    # Targeted success itself (0.61-0.79, spread 0.17) is too noisy for the gate: bench/effects.py.
    margin.below("accuracy on published", after["acc"], before["acc"])
    # the method's own diagnostics agree with the re-measurement on the published bytes
    assert pert.info["target_rate_protected"] == pytest.approx(after["target"], abs=1e-6)
    assert pert.info["target_rate_clean"] == pytest.approx(before["target"], abs=1e-6)
    assert pert.info["mode"] == "targeted" and pert.info["surrogate"]["width"] == 0.125
    assert pert.granularity == "sample" and pert.norm == "linf" and pert.eps == pytest.approx(8 / 255)
    assert pert.delta.dtype == torch.float32 and pert.delta.shape == (N_CRAFT, 32, 32, 3)
    assert check_bound(pert, x, xp)["max_abs"] == 8  # the whole budget is used, not more


@pytest.mark.margin
def test_aep_untargeted_lowers_surrogate_accuracy(env, margin):
    pert, x, y, xp = run(env, "aep", targeted=False, paugment=False, steps=10, tau=0.1)
    before, after = rates(env, x, y), rates(env, xp, y)
    # spread over seeds 0-2 × threads 1-2: 0.016; min margin 0.12 (bench/results/gate_margins_*).
    # The loss rise (margin 0.57, spread 0.30) is too noisy for the gate: bench/effects.py.
    margin.below("accuracy on published", after["acc"], 0.5 * before["acc"])
    assert pert.info["mode"] == "untargeted" and "target_rate_protected" not in pert.info
    assert pert.info["surrogate_acc_protected"] == pytest.approx(after["acc"], abs=1e-6)
    check_bound(pert, x, xp)


@pytest.mark.margin
def test_aep_restarts_keep_the_per_sample_best(env, margin):
    """Restart 0 is the same stream whatever ``restarts`` is, so with 3 restarts every sample's
    objective CE(f(x'), π(y)) is at most its 1-restart value, and some improve."""
    kw = dict(paugment=False, steps=3, tau=0.2)
    one, three = run(env, "aep", n=32, restarts=1, **kw), run(env, "aep", n=32, restarts=3, **kw)
    t = (torch.from_numpy(one[2]) + 1) % 10
    j1 = F.cross_entropy(surrogate_logits(env, one[3]), t, reduction="none")
    j3 = F.cross_entropy(surrogate_logits(env, three[3]), t, reduction="none")
    assert bool((j3 <= j1 + 1e-5).all()), (j3 - j1).max()
    # measured 19-22 of 32 over seeds 0-2 × threads 1-2 (spread 3 against a margin of 16.5)
    margin.above("samples improved by 3 restarts (of 32)", int((j3 < j1 - 1e-3).sum()), 2.5)
    assert three[0].info["objective"] == pytest.approx(j3.mean().item(), abs=1e-5)


def test_same_seed_same_bytes(env):
    a = run(env, "aep", n=16, steps=2)[3]
    b = AEP().generate(_ctx(env, AEPConfig(**SUR, steps=2), n=16))
    assert np.array_equal(a, apply(np.array(env["clean"].train.x[:16]), np.asarray(env["clean"].train.y[:16]), b))
    c = run(env, "aep", n=16, steps=2, seed=GATE_SEED + 1)[3]
    assert not np.array_equal(a, c)


# ───────────────────────────────────────────── HYPO ──
def test_hypo_records_its_effect_and_uses_the_budget(env):
    pert, x, y, xp = run(env, "hypo", steps=10)  # default budget: ε 8/255, step 0.8/255
    after = rates(env, xp, y)
    # How much HYPO eases its surrogate (loss 1.08-1.21 vs 1.94 clean; margin 0.42 but spread 0.16
    # over seeds 0-2 × threads 1-2) is measured by bench/effects.py, not asserted here.
    assert pert.info["surrogate_loss_protected"] == pytest.approx(after["loss"], rel=1e-5)
    assert pert.eps == pytest.approx(8 / 255) and pert.info["step"] == pytest.approx(0.8 / 255)
    assert check_bound(pert, x, xp)["max_abs"] == 8


def test_hypo_eps16_and_l2_budgets(env):
    p16, x, y, xp16 = run(env, "hypo", n=32, steps=10, preset="eps16")
    assert p16.eps == pytest.approx(16 / 255) and p16.info["preset"] == "eps16"
    assert check_bound(p16, x, xp16)["max_abs"] == 16  # twice the default budget, all of it used
    pl2, _, _, xpl2 = run(env, "hypo", n=32, steps=10, norm="l2")
    assert pl2.norm == "l2" and pl2.eps == pytest.approx(0.5) and pl2.info["step"] == pytest.approx(0.1)
    norms = pl2.delta.flatten(1).norm(dim=1)
    assert float(norms.max()) <= 0.5 + 1e-5 and float(norms.mean()) > 0.4
    check_bound(pl2, x, xpl2)


# ───────────────────────────────────────────── context contract ──
@pytest.mark.parametrize("method", ["aep", "hypo"])
def test_crafts_only_the_shard_and_returns_the_gather(env, method):
    """Under ``world_size`` > 1 a rank crafts its shard's rows and returns ``ctx.gather``'s tensor;
    the surrogate is requested with the Config's model, epochs and width."""
    n, seen = 24, []
    shard = torch.arange(n)[1::2]

    def gather(rows):
        seen.append(rows.clone())
        full = torch.zeros((n, *rows.shape[1:]))
        full[shard] = rows
        return full

    env["calls"].clear()
    cls = PROTECTIONS.get(method)
    ctx = _ctx(env, cls.Config(**SUR, steps=2), n=n, rank=1, world_size=2, shard=shard, gather=gather)
    pert = cls().generate(ctx)
    assert len(seen) == 1 and seen[0].shape == (12, 32, 32, 3)
    assert pert.delta.shape == (n, 32, 32, 3) and torch.equal(pert.delta[shard], seen[0])
    assert float(pert.delta[0::2].abs().max()) == 0.0 and float(seen[0].abs().max()) > 0
    assert pert.info["crafted_on_this_rank"] == 12
    assert env["calls"] == [("resnet18", 3, {"width": 0.125})]
    assert dataclasses.is_dataclass(ctx.cfg)
