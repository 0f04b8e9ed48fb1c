"""The one PGD (engine/pgd.py): sign convention, budget, EOT, starts."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ueperf.engine.pgd import pgd, random_start
from ueperf.augment.pipeline import Augmenter
from ueperf.kernels.augment import augment_ref


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


def _data(n=6, s=9):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, s, s, 3, generator=g), torch.randint(0, 4, (n,), generator=g)


def _loss(m, x, y, d):
    return F.cross_entropy(m((x + d).permute(0, 3, 1, 2)), y).item()


def test_sign_minus_lowers_and_plus_raises_the_loss():
    m, (x, y) = _model(), _data()
    z = torch.zeros_like(x)
    lo = pgd(m, x, y, z, eps=8 / 255, alpha=2 / 255, steps=5, sign=-1)
    hi = pgd(m, x, y, z, eps=8 / 255, alpha=2 / 255, steps=5, sign=+1)
    base = _loss(m, x, y, z)
    assert _loss(m, x, y, lo) < base < _loss(m, x, y, hi)
    for d in (lo, hi):
        assert d.abs().max() <= 8 / 255 + 1e-6
        assert ((x + d) >= -1e-6).all() and ((x + d) <= 1 + 1e-6).all()
    assert all(p.grad is None for p in m.parameters())  # only δ gets gradients


def test_l2_budget_and_random_start():
    m, (x, y) = _model(), _data()
    g = torch.Generator().manual_seed(0)
    d0 = random_start(x, eps=0.5, norm="l2", generator=g)
    assert (d0.flatten(1).norm(dim=1) <= 0.5 + 1e-5).all() and d0.abs().sum() > 0
    d = pgd(m, x, y, None, eps=0.5, alpha=0.1, steps=4, norm="l2", sign=+1, start="random", generator=g)
    assert (d.flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()
    assert _loss(m, x, y, d) > _loss(m, x, y, torch.zeros_like(x))


def test_eot_over_augmentation_runs_and_differs_from_plain():
    m, (x, y) = _model(), _data(s=16)
    aug = Augmenter(crop_padding=2, flip=True, cg=True)

    def augment(xa, gen):
        return augment_ref(xa, aug.sample(xa, gen))

    g = torch.Generator().manual_seed(0)
    d_eot = pgd(m, x, y, None, eps=8 / 255, alpha=1 / 255, steps=3, start="zero", augment=augment, eot=3, generator=g)
    d_plain = pgd(m, x, y, None, eps=8 / 255, alpha=1 / 255, steps=3, start="zero")
    assert d_eot.abs().max() <= 8 / 255 + 1e-6
    assert not torch.equal(d_eot, d_plain)
