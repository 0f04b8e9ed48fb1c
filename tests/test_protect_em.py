"""EM and REM (spec §2.1, §2.2, §2.12): the bound, the stop rule and its record, determinism,
class-wise noise, the -T variants' CG EOT, REM end to end, bad configs.

Whether EM makes real images unlearnable (a victim's clean test accuracy over seeds) is measured
by the effects benchmark (bench/effects.py, check ``em_lowers_accuracy``), not here.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ueperf.config import DataConfig
from ueperf.errors import ConfigError
from ueperf.protections import PROTECTIONS
from ueperf.augment import eot as eot_mod
from ueperf.data.budget import measure
from ueperf.protections.base import ProtectContext, apply

EPS = 8 / 255


def _ctx(x, y, cfg, num_classes=10, seed=0):
    return ProtectContext(x=torch.as_tensor(np.ascontiguousarray(x)), y=torch.as_tensor(np.asarray(y)),
                          num_classes=num_classes, classes=[str(k) for k in range(num_classes)], cfg=cfg,
                          seed=seed, device=torch.device("cpu"), progress=False)


def _generate(name, x, y, num_classes=10, seed=0, **fields):
    cls = PROTECTIONS.get(name)
    cfg = cls.Config(**fields)
    return cls().generate(_ctx(x, y, cfg, num_classes, seed))


@pytest.fixture(scope="module")
def cifar(cifar_root, tmp_path_factory):
    from ueperf.data import prepare_dataset
    return prepare_dataset(DataConfig(dataset="cifar10", root=str(cifar_root),
                                      cache_dir=str(tmp_path_factory.mktemp("cache"))))


@pytest.fixture(scope="module")
def small(cifar):
    """The first 96 real training images (10 classes): for the mechanics tests."""
    return np.array(cifar.train.x[:96]), np.array(cifar.train.y[:96])


# =====================================================================================
# Mechanics
# =====================================================================================


def test_sample_wise_em_bound_stop_record_and_determinism(small):
    x, y = small
    kw = dict(width=0.125, steps=2, alpha=2 / 255, max_rounds=2, train_steps=2, train_batch_size=32,
              batch_size=48)
    p = _generate("em", x, y, **kw)
    assert p.granularity == "sample" and p.delta.shape == x.shape and p.delta.dtype == torch.float32
    assert float(p.delta.abs().max()) <= EPS + 1e-6
    assert p.delta.abs().sum() > 0
    assert 1 <= p.info["rounds"] <= 2 and len(p.info["acc_history"]) == p.info["rounds"]
    assert 0.0 <= p.info["surrogate_acc"] <= 1.0 and p.info["steps"] == 2
    assert p.info["surrogate"]["sgd_steps"] == 2 * p.info["rounds"]
    xp = apply(x, y, p)
    assert xp.dtype == np.uint8 and xp.shape == x.shape
    assert measure(x, xp, "linf")["size"] <= 8
    # same seed → same bytes; another seed → other noise
    assert torch.equal(_generate("em", x, y, **kw).delta, p.delta)
    assert not torch.equal(_generate("em", x, y, seed=1, **kw).delta, p.delta)


def test_stop_rule_ends_when_surrogate_fits_the_perturbed_set(small):
    x, y = small
    # stop_error = 1 - tiny: any accuracy above ~0 passes, so the first round stops
    p = _generate("em", x, y, width=0.125, steps=1, max_rounds=5, train_steps=1, train_batch_size=32,
                  stop_error=0.999999)
    assert p.info["rounds"] == 1 and p.info["stopped"]


def test_class_wise_em_gives_one_delta_per_class(small):
    x, y = small
    p = _generate("em", x, y, granularity="class", width=0.125, max_rounds=2, train_steps=2,
                  train_batch_size=16, class_portion=0.5)
    assert p.granularity == "class" and p.delta.shape == (10,) + x.shape[1:]
    assert float(p.delta.abs().max()) <= EPS + 1e-6
    assert p.info["steps"] == 1  # class-wise default T = 1 per batch [code]
    xp = apply(x, y, p)
    diff = xp.astype(np.int16) - x.astype(np.int16)
    assert np.abs(diff).max() <= 8
    # every sample of a class gets its class's δ: where no clipping happened, the differences agree
    k = int(np.bincount(y).argmax())
    rows = np.nonzero(y == k)[0]
    inside = (x[rows].min(axis=0) >= 8) & (x[rows].max(axis=0) <= 247)  # no clipping at these entries
    assert inside.any()
    assert (diff[rows][:, inside] == diff[rows][:1, inside]).all()


def test_em_t_crafts_with_cg_eot_and_plain_em_without(small, monkeypatch):
    """eot_cg=True: every PGD gradient is taken through crop+flip+CG draws (J folded into the
    batch); eot_cg=False: no augmentation touches the crafting at all (spec §2.1 vs §2.12)."""
    x, y = small
    x, y = x[:32], y[:32]
    calls = []
    real = eot_mod.augment_ref

    def spy(img, params, **kw):
        calls.append((img.shape[0], bool(params.jitter_on.any()), bool(params.gray.any()),
                      bool((params.factors[:, :3] != 1).any()), img.requires_grad))
        return real(img, params, **kw)

    monkeypatch.setattr(eot_mod, "augment_ref", spy)
    kw = dict(width=0.125, steps=2, alpha=2 / 255, max_rounds=1, train_steps=1, train_batch_size=32,
              batch_size=32)
    plain = _generate("em", x, y, **kw)
    assert calls == []
    t = _generate("em", x, y, eot_cg=True, eot=3, **kw)
    crafting = [c for c in calls if c[4]]  # differentiable calls = the PGD's EOT
    assert len(crafting) == 2  # one per PGD step (steps=2), the 3 draws folded into one batch
    assert all(c[0] == 3 * 32 for c in crafting)
    assert any(c[1] for c in crafting) and any(c[2] for c in crafting) and any(c[3] for c in crafting)
    assert t.info["eot"] == "crop+flip+CG x3" and plain.info["eot"] == "none"
    assert not torch.equal(plain.delta, t.delta)
    assert float(t.delta.abs().max()) <= EPS + 1e-6


def test_rem_runs_end_to_end_within_the_bound(small, monkeypatch):
    x, y = small
    x, y = x[:48], y[:48]
    calls = []
    real = eot_mod.augment_ref

    def spy(img, params, **kw):
        calls.append(bool(params.jitter_on.any() or params.gray.any()))
        return real(img, params, **kw)

    monkeypatch.setattr(eot_mod, "augment_ref", spy)
    kw = dict(width=0.125, iterations=2, steps=2, adv_steps=2, eot=2, batch_size=16, regen_batch_size=24,
              log_every=1)
    p = _generate("rem", x, y, **kw)
    assert p.granularity == "sample" and p.delta.shape == x.shape
    assert float(p.delta.abs().max()) <= EPS + 1e-6 and p.delta.abs().sum() > 0
    assert p.info["iterations"] == 2 and len(p.info["loss_history"]) == 2
    assert all(np.isfinite(p.info["loss_history"]))
    assert measure(x, apply(x, y, p), "linf")["size"] <= 8
    assert calls and not any(calls)  # REM: crop + flip only
    calls.clear()
    pt = _generate("rem", x, y, eot_cg=True, **kw)
    assert any(calls) and pt.info["eot"] == "crop+flip+CG x2"  # REM-T: CG inside the EOT
    assert float(pt.delta.abs().max()) <= EPS + 1e-6


@pytest.mark.parametrize("name,field,value", [
    ("em", "granularity", "pixel"), ("em", "norm", "l0"), ("em", "eps", 0.0), ("em", "max_rounds", 0),
    ("em", "stop_error", 1.0), ("rem", "steps", 0), ("rem", "adv_eps", -1.0), ("rem", "eot", 0),
])
def test_bad_config_is_a_config_error(small, name, field, value):
    x, y = small
    with pytest.raises(ConfigError, match=field):
        _generate(name, x[:8], y[:8], **{field: value})
