"""Augmentation-type countermeasures (spec §3.2-§3.4): UEraser, ISS and the counter-overfitting
augmentations, and the ops behind them (:mod:`ueperf.augment.policies`, :mod:`ueperf.augment.squeeze`).

Each op is checked against its definition on small tensors (the plasma step against kornia's
convolution form, equalize against torchvision's per-channel loop, PIL for grayscale and JPEG);
UEraser's repeat schedule is checked on short runs, the ISS squeezes on real CIFAR-10 images;
bad config values are ConfigErrors. Every countermeasure's one-epoch run and option checks are in
tests/test_countermeasures_registry.py; whether each helps a victim (or keeps clean training
working) is measured over seeds by bench/effects.py.
"""
from __future__ import annotations

import io
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ueperf.countermeasures import COUNTERMEASURES, build_hooks
from ueperf.augment import policies as A
from ueperf.augment import squeeze as S
from ueperf.engine.trainer import Trainer, train
from ueperf.errors import ConfigError
from ueperf.recipes import build

MINE = ["ueraser_lite", "ueraser", "ueraser_max", "iss_gray", "iss_jpeg", "iss_bdr", "cutout", "mixup",
        "cutmix", "randaugment", "trivialaugment", "autoaugment", "gaussian"]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _images(b=6, h=16, w=16, seed=0):
    return torch.rand(b, 3, h, w, generator=_gen(seed))


def _grid_images(b=6, h=16, w=16, seed=0):
    """Images on the uint8 grid k/255."""
    return torch.randint(0, 256, (b, 3, h, w), generator=_gen(seed)).float() / 255


# ═════════════════════════════════════════════ ops vs their definitions ══
def test_grayscale_is_601_luma_and_u8_matches_pil():
    from PIL import Image
    x = _images()
    g = A.grayscale(x)
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for c in range(3):
        assert torch.allclose(g[:, c], luma, atol=1e-6)
    u8 = np.random.default_rng(0).integers(0, 256, (5, 9, 7, 3), dtype=np.uint8)
    out = S.grayscale_u8(u8)
    for i in range(5):
        pil = np.asarray(Image.fromarray(u8[i]).convert("L"))
        for c in range(3):
            assert np.array_equal(out[i, ..., c], pil)


def test_posterize_keeps_the_top_bits():
    levels = torch.arange(256).float()
    x = (levels / 255).view(1, 1, 16, 16).expand(1, 3, 16, 16).contiguous()
    u8 = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    for b in range(1, 9):
        mask = (0xFF << (8 - b)) & 0xFF
        want = (levels.long() & mask).float() / 255
        assert torch.equal(A.posterize(x, b)[0, 0].flatten(), want)
        assert np.array_equal(S.posterize_u8(u8, b)[0, ..., 0].ravel(), np.arange(256) & mask)
    per = A.posterize(x.expand(2, 3, 16, 16), torch.tensor([2, 8]))      # per-sample bits
    assert torch.equal(per[0], A.posterize(x, 2)[0]) and torch.allclose(per[1], x[0], atol=1e-7)


def test_solarize_autocontrast_equalize():
    x = _grid_images()
    s = A.solarize(x, 0.5)
    assert torch.equal(s, torch.where(x >= 0.5, 1 - x, x))
    # autocontrast: every channel spans [0, 1]; a constant channel is kept
    y = x * 0.5 + 0.2
    y[0, 1] = 0.3
    ac = A.autocontrast(y)
    assert torch.allclose(ac[1:].amin(dim=(2, 3)), torch.zeros(5, 3), atol=1e-6)
    assert torch.allclose(ac[1:].amax(dim=(2, 3)), torch.ones(5, 3), atol=1e-6)
    assert torch.allclose(ac[0, 1], y[0, 1])
    # equalize: torchvision's per-channel algorithm, written as a loop
    x = (torch.rand(4, 3, 16, 16, generator=_gen(1)) ** 2 * 0.6)  # skewed histograms
    x[0, 2] = 0.5                                                  # a constant channel: unchanged
    eq = A.equalize(x)
    q = torch.round(x * 255).long()
    for b in range(4):
        for c in range(3):
            ch = q[b, c].flatten()
            hist = torch.bincount(ch, minlength=256)
            nz = hist[hist != 0]
            step = int(nz[:-1].sum()) // 255
            if step == 0:
                want = ch
            else:
                lut = (torch.cumsum(hist, 0) + step // 2) // step
                lut = F.pad(lut, [1, 0])[:-1].clamp(0, 255)
                want = lut[ch]
            assert torch.equal(torch.round(eq[b, c].flatten() * 255).long(), want), (b, c)


def test_channel_shuffle_permutes_channels():
    b = 64
    x = torch.tensor([0.1, 0.5, 0.9]).view(1, 3, 1, 1).expand(b, 3, 4, 4).contiguous()
    out = A.channel_shuffle(x, p=1.0, generator=_gen())
    vals = out[:, :, 0, 0]
    assert torch.equal(vals.sort(dim=1).values, x[:, :, 0, 0])    # a permutation of the channels
    assert (out == out[:, :, :1, :1]).all()                        # whole channels move
    perms = {tuple(v.tolist()) for v in vals}
    assert len(perms) == 6                                          # all 3! permutations occur
    assert torch.equal(A.channel_shuffle(x, p=0.0, generator=_gen()), x)


def _kornia_step_reference(img, scale, g):
    """kornia ``_one_diamond_one_square`` as written there: two reflect-padded 3×3 filters."""
    dk = torch.tensor([[0.25, 0, 0.25], [0, 0, 0], [0.25, 0, 0.25]]).view(1, 1, 3, 3)
    sk = torch.tensor([[0, 0.25, 0], [0.25, 0, 0.25], [0, 0.25, 0]]).view(1, 1, 3, 3)
    filt = lambda t, k: F.conv2d(F.pad(t, (1, 1, 1, 1), mode="reflect"), k)  # noqa: E731
    n, _, h, w = img.shape
    new = torch.zeros(n, 1, 2 * h - 1, 2 * w - 1)
    new[:, :, ::2, ::2] = img
    pc = torch.ones_like(new)
    pc[..., 0] = pc[..., -1] = 1 / 0.75
    pc[..., 0, :] = pc[..., -1, :] = 1 / 0.75
    rnd = torch.rand(new.size(), generator=g) * scale
    dr = filt(new, dk)
    dc = (dr > 0).float()
    new = new + (1 - scale) * dr * dc + dc * rnd
    sr = filt(new, sk) * pc
    sc = (sr > 0).float()
    return new + sc * rnd + (1 - scale) * sc * sr


def test_plasma_matches_kornia_and_stays_in_range():
    img = torch.rand(5, 1, 5, 9, generator=_gen(2)) + 0.01
    s = torch.rand(5, 1, 1, 1, generator=_gen(3))
    ref = _kornia_step_reference(img, s, _gen(4))[:, 0]
    ours = A._one_diamond_one_square(img[:, 0], s[:, :, 0], _gen(4))
    assert torch.allclose(ours, ref, atol=1e-6)
    maps = A.diamond_square(8, 32, 24, torch.linspace(0.3, 0.7, 8), generator=_gen())
    assert maps.shape == (8, 32, 24) and maps.min() >= 0 and 0.3 < maps.mean() < 0.7
    x = _images(16, 32, 32)
    for fn in (A.plasma_brightness, A.plasma_contrast):
        out = fn(x, p=1.0, generator=_gen(5))
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
        assert ((out - x).abs().flatten(1).amax(1) > 0).all()   # p = 1: every image changed
        assert torch.equal(fn(x, p=0.0, generator=_gen(5)), x)
        assert torch.equal(out, fn(x, p=1.0, generator=_gen(5)))  # same generator seed, same maps
    # the fields themselves: x' = clamp(x + a·(2P − 1)) and clamp((x − ½)·4P + ½), P the maps drawn
    # after the (apply, roughness[, intensity]) draws of the same generator
    B = 4
    mid = torch.rand(B, 3, 32, 32, generator=_gen(6))
    g = _gen(9)
    torch.rand(B, generator=g)
    r = torch.rand(B, generator=g) * 0.4 + 0.3
    torch.rand(B, generator=g)
    P = A.diamond_square(B * 3, 32, 32, r.repeat_interleave(3), generator=g).view(B, 3, 32, 32)
    want = (mid + 0.2 * (2 * P - 1)).clamp(0, 1)
    got = A.plasma_brightness(mid, intensity=(0.2, 0.2), p=1.0, generator=_gen(9))
    assert torch.allclose(got, want, atol=1e-6)
    g = _gen(9)
    torch.rand(B, generator=g)
    r = torch.rand(B, generator=g) * 0.4 + 0.3
    P = A.diamond_square(B * 3, 32, 32, r.repeat_interleave(3), generator=g).view(B, 3, 32, 32)
    got = A.plasma_contrast(mid, p=1.0, generator=_gen(9))
    assert torch.allclose(got, ((mid - 0.5) * 4 * P + 0.5).clamp(0, 1), atol=1e-6)


def test_apply_ops_geometry_and_colour_definitions():
    x = _grid_images(4, 8, 8)
    n = x.shape[0]
    op = lambda name: torch.full((n,), A.OPS.index(name))  # noqa: E731
    mag = lambda v: torch.full((n,), float(v))              # noqa: E731
    assert torch.equal(A.apply_ops(x, op("identity"), mag(0)), x)
    # translate_x by +2 px: content moves right, zeros enter on the left
    t = A.apply_ops(x, op("translate_x"), mag(2))
    assert torch.equal(t[..., 2:], x[..., :-2]) and (t[..., :2] == 0).all()
    t = A.apply_ops(x, op("translate_y"), mag(-3))
    assert torch.equal(t[..., :-3, :], x[..., 3:, :]) and (t[..., -3:, :] == 0).all()
    # rotate 90° about the centre = rot90 (counter-clockwise on screen)
    assert torch.equal(A.apply_ops(x, op("rotate"), mag(90)), torch.rot90(x, 1, dims=(2, 3)))
    # shear_x m = ½: row i (centre y = i + ½) samples x + ½(i + ½); nearest → column j + ⌊(i + 1)/2⌋
    s = A.apply_ops(x, op("shear_x"), mag(0.5))
    for i in range(8):
        o = (i + 1) // 2
        assert torch.equal(s[:, :, i, : 8 - o], x[:, :, i, o:]) and (s[:, :, i, 8 - o:] == 0).all(), i
    # colour blends: clamp(f·x + (1 − f)·D), f = 1 + m
    gray = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    blends = {"brightness": torch.zeros_like(gray), "color": gray,
              "contrast": gray.mean(dim=(1, 2, 3), keepdim=True)}
    for name, deg in blends.items():
        for m in (-0.5, 0.7):
            want = ((1 + m) * x + (-m) * deg).clamp(0, 1)
            assert torch.allclose(A.apply_ops(x, op(name), mag(m)), want, atol=1e-6), (name, m)
    sharp = A.apply_ops(x, op("sharpness"), mag(-1))                 # f = 0: the degenerate image
    k = torch.tensor([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13
    assert torch.allclose(sharp[0, 0, 3, 4], (x[0, 0, 2:5, 3:6] * k).sum(), atol=1e-6)
    assert torch.equal(sharp[..., 0, :], x[..., 0, :])               # border kept
    assert torch.equal(A.apply_ops(x, op("posterize"), mag(3)), A.posterize(x, 3))
    assert torch.equal(A.apply_ops(x, op("solarize"), mag(0.4)), A.solarize(x, 0.4))
    assert torch.equal(A.apply_ops(x, op("equalize"), mag(0)), A.equalize(x))
    # one op per image: a mixed batch equals the ops applied one by one
    ops = torch.tensor([A.OPS.index(o) for o in ("rotate", "color", "equalize", "solarize")])
    mags = torch.tensor([30.0, 0.5, 0.0, 0.3])
    mixed = A.apply_ops(x, ops, mags)
    for b in range(n):
        assert torch.equal(mixed[b:b + 1], A.apply_ops(x[b:b + 1], ops[b:b + 1], mags[b:b + 1])), b


@pytest.mark.parametrize("fn", [A.trivial_augment, A.rand_augment, A.auto_augment])
def test_auto_augment_shape_range_determinism(fn):
    x = _images(32, 16, 16).contiguous(memory_format=torch.channels_last)
    a = fn(x, generator=_gen(7))
    assert a.shape == x.shape and a.dtype == x.dtype and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, fn(x, generator=_gen(7)))
    assert not torch.equal(a, fn(x, generator=_gen(8)))
    assert (a != x).flatten(1).any(1).float().mean() > 0.5         # most images changed


def test_auto_augment_applies_its_sub_policies():
    """A sub-policy's two ops in order, each with its probability, at RandAugment's 10-bin
    magnitudes: invert then posterize bin 7 (8 − round(7 / 2.25) = 5 bits); p = 0 is identity."""
    x = _grid_images(8, 16, 16)
    both = A.auto_augment(x, generator=_gen(1), policy=((("invert", 1.0, None), ("posterize", 1.0, 7)),))
    assert torch.equal(both, A.posterize(1 - x, torch.full((8,), 5.0)))
    assert torch.equal(A.auto_augment(x, generator=_gen(1), policy=((("rotate", 0.0, 9), ("invert", 0.0, None)),)), x)
    rot = A.auto_augment(x, generator=_gen(2), policy=((("rotate", 1.0, 9), ("invert", 0.0, None)),))
    one = torch.tensor([A.OPS.index("rotate")])
    for b in range(8):   # bin 9 of RandAugment's 0-30°, with a random sign per image
        assert any(torch.equal(rot[b], A.apply_ops(x[b:b + 1], one, torch.tensor([deg]))[0]) for deg in (30.0, -30.0))
    assert len(A.AUTOAUGMENT_CIFAR10) == 25 and all(len(sp) == 2 for sp in A.AUTOAUGMENT_CIFAR10)
    # TrivialAugment / RandAugment never draw invert
    assert A.INVERT == len(A.OPS)


def test_magnitude_tables_match_torchvision():
    wide, signed = A.magnitude_table("wide", 32, 32, "cpu")
    row = lambda name: wide[A.OPS.index(name)]  # noqa: E731
    assert row("shear_x")[-1] == pytest.approx(0.99) and row("translate_x")[-1] == 32
    assert row("rotate")[-1] == 135 and row("posterize").tolist()[:2] == [8, 8] and row("posterize")[-1] == 2
    assert row("solarize")[0] == 1 and row("solarize")[-1] == 0
    rand, _ = A.magnitude_table("rand", 32, 64, "cpu")
    assert rand[A.OPS.index("translate_x"), -1] == pytest.approx(150 / 331 * 64)
    assert rand[A.OPS.index("translate_y"), -1] == pytest.approx(150 / 331 * 32)
    assert rand[A.OPS.index("posterize"), -1] == 4 and rand[A.OPS.index("rotate"), 9] == pytest.approx(9.0)
    assert signed.tolist() == [o in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness",
                                     "color", "contrast", "sharpness") for o in A.OPS]


def test_cutout_zeroes_exactly_a_square():
    L, H = 6, 20
    x = torch.rand(200, 3, H, H, generator=_gen()) * 0.9 + 0.05     # no zeros of its own
    out = A.cutout(x, L, generator=_gen(1))
    inside = 0
    for b in range(200):
        hole = (out[b] == 0).all(0)
        assert ((out[b] == 0).any(0) == hole).all()                  # all channels together
        rows, cols = hole.any(1).nonzero().flatten(), hole.any(0).nonzero().flatten()
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        assert hole.sum() == (r1 - r0) * (c1 - c0) and hole[r0:r1, c0:c1].all()   # one rectangle
        assert torch.equal(out[b][:, ~hole], x[b][:, ~hole])          # the rest untouched
        h, w = int(r1 - r0), int(c1 - c0)
        assert h <= L and w <= L
        assert h == L or r0 == 0 or r1 == H                          # clipped only at the border
        assert w == L or c0 == 0 or c1 == H
        inside += (h == L and w == L)
    assert inside > 50


def test_mixup_and_cutmix_labels_match_the_pixels():
    """Each image is a constant v_k of its class k: the mean of a mixed image must equal the
    label-weighted Σ_k y'_k v_k (mixup: λ; cutmix: the pasted area), and labels sum to 1."""
    K, B = 5, 32
    y = torch.arange(B) % K
    v = torch.linspace(0.1, 0.9, K)
    x = v[y].view(B, 1, 1, 1).expand(B, 3, 16, 16).contiguous()
    seen_lams = set()
    for seed in range(6):
        for fn in (A.mixup, A.cutmix):
            xm, ys = fn(x, y, K, 1.0, generator=_gen(seed))
            assert ys.shape == (B, K) and torch.allclose(ys.sum(1), torch.ones(B))
            assert (ys >= 0).all()
            assert torch.allclose(xm.mean(dim=(1, 2, 3)), ys @ v, atol=1e-5)
            if fn is A.cutmix:   # one box for the batch: the pasted fraction is 1 − λ'
                frac = (xm != x).all(1).float().mean(dim=(1, 2))
                moved = ys.max(1).values < 1   # images whose partner has another class
                if moved.any():
                    lam = 1 - frac[moved]
                    assert torch.allclose(ys[moved].gather(1, y[moved, None]).squeeze(1), lam, atol=1e-6)
                    seen_lams.add(round(float(lam[0]), 4))
    assert len(seen_lams) >= 3
    # cutmix with p = 0 leaves images and one-hot labels
    xm, ys = A.cutmix(x, y, K, 1.0, p=0.0, generator=_gen())
    assert torch.equal(xm, x) and torch.equal(ys, F.one_hot(y, K).float())


def test_beta_sampler_moments():
    for a in (1.0, 0.4, 3.0):
        s = A.sample_beta(a, a, (20000,), generator=_gen())
        var = a * a / ((2 * a) ** 2 * (2 * a + 1))
        assert s.min() >= 0 and s.max() <= 1
        assert abs(float(s.mean()) - 0.5) < 0.01 and abs(float(s.var()) - var) < 0.005


def test_gaussian_blur_definition():
    c = torch.full((2, 3, 9, 9), 0.37)
    assert torch.allclose(A.gaussian_blur(c, 1.5, 5), c, atol=1e-6)
    x = _images(2, 9, 9)
    out = A.gaussian_blur(x, 1.0, 3)
    g = torch.exp(-torch.tensor([1.0, 0.0, 1.0]) / 2)
    k2 = torch.outer(g, g) / g.sum() ** 2
    assert torch.allclose(out[1, 2, 4, 4], (x[1, 2, 3:6, 3:6] * k2).sum(), atol=1e-6)
    assert torch.equal(A.gaussian_blur(x, 1.0, 1), x)
    assert out.std() < x.std()


def test_jpeg_round_trip():
    from PIL import Image
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    smooth = (127 + 100 * np.sin(xx[None, ..., None] / (3 + np.arange(6)[:, None, None, None]) + yy[None, ..., None] / 5
                                 + np.arange(3))).clip(0, 255)
    x = (smooth + rng.normal(0, 12, smooth.shape)).clip(0, 255).astype(np.uint8)
    j = S.jpeg_u8(x, 10)
    assert j.shape == x.shape and j.dtype == np.uint8
    first = np.abs(j.astype(int) - x).mean()
    again = np.abs(S.jpeg_u8(j, 10).astype(int) - j).mean()
    assert first > 3 and again < first / 2                           # changes, then nearly a fixed point
    buf = io.BytesIO()
    Image.fromarray(x[2]).save(buf, "JPEG", quality=10)
    assert np.array_equal(j[2], np.asarray(Image.open(buf).convert("RGB")))   # PIL, default settings
    assert np.array_equal(S.jpeg_u8(x, 10, workers=3), j)
    assert np.abs(S.jpeg_u8(x, 90).astype(int) - x).mean() < first


# ═════════════════════════════════════════════ hooks ══
def _fake_trainer(cfg, epoch=0):
    return SimpleNamespace(cfg=cfg, epoch=epoch, ctx=SimpleNamespace(device=torch.device("cpu"), rank=0),
                           num_classes=10)


def test_ueraser_max_loss_and_reproducible_draws():
    from ueperf.countermeasures.ueraser import UEraserHook
    cfg = build("synthetic_smoke", ["ueraser.repeats=3", "ueraser.repeat_epochs=1"], countermeasure="ueraser")
    hook = build_hooks(cfg)[0]
    x, y = _images(4, 16, 16), torch.tensor([0, 1, 2, 3])
    tr = _fake_trainer(cfg)
    xr, yr = hook.on_batch(tr, x, y, torch.arange(4))
    assert xr.shape == (12, 3, 16, 16) and torch.equal(yr, y.repeat(3))
    assert xr.is_contiguous(memory_format=torch.channels_last) and xr.min() >= 0 and xr.max() <= 1
    assert not torch.equal(xr[:4], xr[4:8])                          # copies augmented independently
    logits = torch.randn(12, 10, generator=_gen())
    per = F.cross_entropy(logits, yr, reduction="none").view(3, 4)
    assert torch.allclose(hook.loss(tr, logits, yr), per.max(0).values.mean())
    # a fresh hook (a resumed run) draws the same augmentations in the same epoch
    again = UEraserHook(cfg, "standard").on_batch(tr, x, y, torch.arange(4))[0]
    assert torch.equal(again, xr)
    # after repeat_epochs: R = 1, plain CE (loss hook abstains)
    x1, y1 = hook.on_batch(_fake_trainer(cfg, epoch=1), x, y, torch.arange(4))
    assert x1.shape == x.shape and hook.loss(tr, torch.randn(4, 10), y1) is None
    assert [hook.repeats_at(e) for e in (0, 1, 5)] == [3, 1, 1]
    assert [UEraserHook(cfg, "max").repeats_at(e) for e in (0, 5)] == [3, 3]
    assert UEraserHook(cfg, "lite").repeats_at(0) == 1


@pytest.mark.parametrize("cm", ["ueraser_lite", "ueraser", "trivialaugment", "randaugment", "autoaugment"])
def test_pixel_space_ops_under_normalisation(cm):
    """A recipe that normalises (the fast victim) gets the pixel-space ops on [0,1] pixels: the
    hook's output on the normalised batch = normalise(its output on the pixels), same draws."""
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    x, y = _images(4, 16, 16), torch.tensor([0, 1, 2, 3])
    plain = build("synthetic_smoke", ["ueraser.repeats=2", "ueraser.repeat_epochs=1"], countermeasure=cm)
    normed = build("synthetic_smoke", ["ueraser.repeats=2", "ueraser.repeat_epochs=1", "augment.normalize=true"],
                   countermeasure=cm)
    want, wy = build_hooks(plain)[0].on_batch(_fake_trainer(plain), x, y, torch.arange(4))
    got, gy = build_hooks(normed)[0].on_batch(_fake_trainer(normed), (x - m) / s, y, torch.arange(4))
    assert torch.equal(gy, wy) and got.shape == want.shape
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(got, (want - m) / s, atol=1e-5)
    assert (got * s + m).min() >= -1e-5 and (got * s + m).max() <= 1 + 1e-5


def test_ueraser_jpeg_variants():
    """append: JPEG-10 of U(x) (the UEraser repo); prepend: JPEG at a per-image quality in
    {10..100} before U (APBench). The codec is PIL's, as ISS's jpeg_u8 (byte-identical)."""
    from ueperf.countermeasures.ueraser import _policy, ueraser_policy
    from ueperf.augment.squeeze import jpeg_batch, jpeg_u8
    x = _grid_images(4, 16, 16)
    u8 = x.mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    want = torch.from_numpy(jpeg_u8(u8, 10)).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(jpeg_batch(x, 10), want) and not torch.equal(want, x)
    a = ueraser_policy(x, generator=_gen(3), jpeg="append", jpeg_quality=10)
    assert torch.equal(a, jpeg_batch(_policy(x, 0.5, 0.5, _gen(3)), 10))
    g = _gen(4)
    q = torch.randint(10, 101, (4,), generator=_gen(4)).tolist()
    p = ueraser_policy(x, generator=g, jpeg="prepend")
    pre = torch.stack([jpeg_batch(x[i:i + 1], q[i])[0] for i in range(4)])
    g2 = _gen(4)
    torch.randint(10, 101, (4,), generator=g2)  # the prepend draw comes first
    assert torch.equal(p, _policy(pre, 0.5, 0.5, g2))
    cfg = build("synthetic_smoke", ["ueraser.jpeg=append"], countermeasure="ueraser_lite")
    xr, _ = build_hooks(cfg)[0].on_batch(_fake_trainer(cfg), x, torch.arange(4), torch.arange(4))
    assert torch.equal(xr.mul(255).round(), xr.mul(255))       # JPEG output lies on the uint8 grid


def test_registry_flags_and_combinations():
    for name in MINE:
        cls = COUNTERMEASURES.get(name)
        assert cls.name == name and cls.summary
    replaces = {n for n in MINE if getattr(COUNTERMEASURES.get(n), "replaces_loss", False)}
    assert replaces == {"ueraser", "ueraser_max", "mixup", "cutmix"}
    for combo in ("mixup+cutmix", "ueraser+mixup", "ueraser_max+cutmix"):
        with pytest.raises(ConfigError, match="replace"):
            build_hooks(build("synthetic_smoke", [], countermeasure=combo))
    assert len(build_hooks(build("synthetic_smoke", [], countermeasure="iss_jpeg+cutout+ueraser"))) == 3
    cfg = build("synthetic_smoke", ["train.epochs=3"], countermeasure="ueraser")
    assert cfg.train.epochs == 3                                     # the user's value wins
    assert build("synthetic_smoke", [], countermeasure="ueraser_max").train.epochs == 200


@pytest.mark.parametrize("cm,sets,match", [
    ("iss_bdr", ["iss.bits=0"], "iss.bits"),
    ("iss_bdr", ["iss.bits=9"], "iss.bits"),
    ("iss_jpeg", ["iss.jpeg_quality=0"], "iss.jpeg_quality"),
    ("iss_jpeg", ["iss.jpeg_quality=96"], "iss.jpeg_quality"),
    ("ueraser", ["ueraser.repeats=0"], "ueraser.repeats"),
    ("ueraser_max", ["ueraser.plasma_p=1.5"], "ueraser.plasma_p"),
    ("ueraser_lite", ["ueraser.jpeg=before"], "ueraser.jpeg"),
    ("ueraser", ["ueraser.jpeg=append", "ueraser.jpeg_quality=0"], "ueraser.jpeg_quality"),
    ("randaugment", ["reg.randaugment_m=31"], "randaugment_m"),
    ("randaugment", ["reg.randaugment_n=0"], "randaugment_n"),
    ("mixup", ["reg.mixup_alpha=0"], "mixup_alpha"),
    ("cutmix", ["reg.cutmix_p=1.5"], "cutmix_p"),
    ("cutmix", ["reg.cutmix_alpha=-1"], "cutmix_alpha"),
    ("cutout", ["reg.cutout_size=0"], "cutout_size"),
    ("gaussian", ["reg.blur_kernel=4"], "blur_kernel"),
    ("gaussian", ["reg.blur_sigma=0"], "blur_sigma"),
])
def test_bad_config_is_config_error(cm, sets, match):
    cfg = build("synthetic_smoke", sets, countermeasure=cm)
    with pytest.raises(ConfigError, match=match):
        build_hooks(cfg)


# ═════════════════════════════════════════════ short training runs ══
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("aug_cache")


# 16-px synthetic colour/wave classes: 1,024 images, 3 epochs, one thread (the machine is shared:
# a second OpenMP thread under contention makes these runs 10x slower, not faster). [ours]
SYNTH = ["data.synthetic_size=16", "data.synthetic_classes=4", "data.synthetic_train=1024", "train.epochs=3",
         "train.threads=1", "train.progress=false", "train.eval_every=100", "train.checkpoint_every=100"]


@pytest.mark.parametrize("cm,want", [("ueraser_lite", [1, 1, 1]), ("ueraser", [2, 1, 1]), ("ueraser_max", [2, 2, 2])])
def test_ueraser_repeat_schedule(cm, want, cache, tmp_path):
    """R copies per image in the epochs the variant says (spec §3.2): lite never, standard for the
    first ``ueraser.repeat_epochs``, max always; the records count the copies trained on."""
    sets = [*SYNTH, f"data.cache_dir={cache}", "data.synthetic_train=256", "ueraser.repeats=2",
            "ueraser.repeat_epochs=1"]
    cfg = build("synthetic_smoke", sets, countermeasure=cm)
    train(cfg, hooks=build_hooks(cfg), run_dir=tmp_path / cm)
    recs = [json.loads(line) for line in (tmp_path / cm / "records.jsonl").read_text().splitlines()]
    assert [r["ueraser_repeats"] for r in recs] == want
    assert [r["train_images"] for r in recs] == [256 * r for r in want]  # R copies per image
    assert all(math.isfinite(r["train_loss"]) for r in recs)


def test_iss_squeezes_training_images_only(cache, tmp_path):
    cfg = build("synthetic_smoke", [*SYNTH, f"data.cache_dir={cache}"], countermeasure="iss_gray")
    tr = Trainer(cfg, hooks=build_hooks(cfg), run_dir=tmp_path / "g").setup()
    try:
        assert np.array_equal(tr.train_split.x, S.grayscale_u8(np.asarray(tr.store.train.x)))
        assert not np.array_equal(tr.train_split.x, tr.store.train.x)
        assert tr.test_split is tr.store.test                        # the clean test set stays clean
        assert np.array_equal(tr.train_split.y, tr.store.train.y)
    finally:
        tr.close()


@pytest.mark.parametrize("kind,least", [("gray", 0.01), ("jpeg", 0.01), ("bdr", 0.05)])
def test_iss_squeezes_real_images_visibly(kind, least, cifar_arrays):
    """On 256 real CIFAR-10 images each squeeze changes the pixels by a clear mean amount (grey
    levels / 255) and keeps shape and dtype; gray and bdr are exact functions of the pixels, JPEG
    goes through PIL. Whether squeezing helps a victim is measured in bench/effects.py."""
    from ueperf.config import RunConfig
    from ueperf.countermeasures.iss import squeeze
    x = cifar_arrays[0][:256]
    out = squeeze(x, kind, RunConfig())
    assert out.dtype == np.uint8 and out.shape == x.shape
    change = float(np.abs(out.astype(np.int16) - x.astype(np.int16)).mean() / 255)
    assert change > least, change
