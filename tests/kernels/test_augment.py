"""ueperf.kernels.augment: reference semantics, Triton == reference, sampling, dispatch.

Triton tests run on CUDA when present, else under the Triton interpreter (see conftest.py);
batches are small because the interpreter executes every program in Python.
"""

import colorsys
import math

import pytest
import torch
import torch.nn.functional as F

from ueperf.errors import ConfigError
from ueperf.kernels import _dispatch
from ueperf.augment.pipeline import Augmenter
from ueperf.kernels.augment import (
    AugmentParams,
    augment,
    augment_ref,
    augment_triton,
    eval_transform,
    sample_params,
)

requires_triton = pytest.mark.skipif(not _dispatch.triton_available(),
                                     reason="triton is not importable")

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
# (N, H, W, padding): batch 1 and 3, odd / prime / non-power-of-2 sizes, 1×1, padding 0 and 4.
HOSTILE = [(1, 7, 13, 4), (3, 31, 31, 0), (2, 33, 33, 4), (1, 64, 64, 4), (3, 1, 1, 2),
           (2, 5, 3, 1)]


def _images(n, h, w, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=g).to(device)


def _params(n, h, w, padding, device="cpu", seed=1, **kw):
    g = torch.Generator().manual_seed(seed)
    return sample_params(n, h, w, padding=padding, generator=g, **kw).to(device)


def _manual(n, device="cpu", *, offset=None, flip=None, jitter_on=None, factors=None, gray=None,
            padding=0):
    p = AugmentParams.identity(n)
    if offset is not None:
        p.offset = torch.as_tensor(offset, dtype=torch.int32).reshape(n, 2)
    if flip is not None:
        p.flip = torch.as_tensor(flip, dtype=torch.bool)
    if jitter_on is not None:
        p.jitter_on = torch.as_tensor(jitter_on, dtype=torch.bool)
    if factors is not None:
        p.factors = torch.as_tensor(factors, dtype=torch.float32).reshape(n, 4)
    if gray is not None:
        p.gray = torch.as_tensor(gray, dtype=torch.bool)
    p.padding = padding
    return p.to(device)


# =====================================================================================
# Reference semantics
# =====================================================================================


@pytest.mark.parametrize("n,h,w,pad", HOSTILE)
def test_crop_flip_match_pad_slice_flip(n, h, w, pad):
    """Crop + flip equal an independent construction: F.pad, slicing, torch.flip, per sample."""
    x = _images(n, h, w, seed=n * 100 + h)
    p = _params(n, h, w, pad, seed=h + w, gray_p=0.0)
    p.flip[0] = True  # make sure both branches occur even in batch 1 / 2
    if n > 1:
        p.flip[1] = False
    out = augment_ref(x, p)
    xf = x.permute(0, 3, 1, 2).float() / 255.0
    for k in range(n):
        dy, dx = p.offset[k].tolist()
        crop = F.pad(xf[k], (pad, pad, pad, pad))[:, dy:dy + h, dx:dx + w]
        if p.flip[k]:
            crop = torch.flip(crop, dims=[-1])
        assert torch.equal(out[k], crop), f"sample {k} (offset {dy},{dx}, flip {bool(p.flip[k])})"


def test_crop_offsets_at_the_extremes():
    """Offset (0, 0) shifts the image down-right by p with zeros top/left; (2p, 2p) up-left."""
    x = torch.arange(1, 26, dtype=torch.uint8).reshape(1, 5, 5, 1).expand(1, 5, 5, 3).contiguous()
    p = _manual(2, offset=[[0, 0], [4, 4]], padding=2)
    out = augment_ref(torch.cat([x, x]), p)[:, 0] * 255  # channel 0, back to integer values
    expect0 = torch.zeros(5, 5)
    expect0[2:, 2:] = x[0, :3, :3, 0].float()
    expect1 = torch.zeros(5, 5)
    expect1[:3, :3] = x[0, 2:, 2:, 0].float()
    assert torch.equal(out[0].round(), expect0)
    assert torch.equal(out[1].round(), expect1)


def _clamp(v):
    return min(max(v, 0.0), 1.0)


def _gray(p):
    return 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]


def test_jitter_matches_hand_computation():
    """Brightness → contrast → saturation → hue on two pixels, computed with Python floats and
    the standard library's colorsys (an implementation independent of ours and torchvision's).
    Factors are exact binary fractions so float32 factors equal the Python ones."""
    pixels = [(0.9, 0.5, 0.2), (0.1, 0.3, 0.6)]
    b, c, s, hue = 1.25, 0.75, 1.5, 0.25
    px = [[_clamp(b * v) for v in p] for p in pixels]  # 0.9·1.25 = 1.125 → clamps to 1
    m = sum(_gray(p) for p in px) / len(px)
    px = [[_clamp(c * v + (1 - c) * m) for v in p] for p in px]
    px = [[_clamp(s * v + (1 - s) * _gray(p)) for v in p] for p in px]
    expect = []
    for p in px:
        hh, ss, vv = colorsys.rgb_to_hsv(*p)
        expect.append(colorsys.hsv_to_rgb((hh + hue) % 1.0, ss, vv))
    x = torch.tensor([[pixels]], dtype=torch.float64)  # (1, 1, 2, 3): one 1×2 image
    p = _manual(1, jitter_on=[True], factors=[b, c, s, hue])
    out = augment_ref(x, p, out_dtype=torch.float64)[0].permute(1, 2, 0).reshape(2, 3)
    torch.testing.assert_close(out, torch.tensor(expect, dtype=torch.float64), rtol=0, atol=1e-9)

    # Grayscale after jitter, then normalisation.
    p.gray[0] = True
    out = augment_ref(x, p, mean=CIFAR_MEAN, std=CIFAR_STD, out_dtype=torch.float64)
    out = out[0].permute(1, 2, 0).reshape(2, 3)
    expect_n = [[(_gray(e) - CIFAR_MEAN[k]) / CIFAR_STD[k] for k in range(3)] for e in expect]
    torch.testing.assert_close(out, torch.tensor(expect_n, dtype=torch.float64), rtol=0, atol=1e-9)


def test_jitter_off_and_identity_factors_are_exact():
    """jitter_on = False leaves pixels untouched; so do (1, 1, 1, 0) factors with jitter on."""
    x = _images(2, 9, 11)
    ref = x.permute(0, 3, 1, 2).float() / 255
    off = _manual(2, factors=[[0.3, 1.7, 0.2, 0.4]] * 2)  # factors present but jitter off
    assert torch.equal(augment_ref(x, off), ref)
    ident = _manual(2, jitter_on=[True, True], factors=[[1.0, 1.0, 1.0, 0.0]] * 2)
    assert torch.equal(augment_ref(x, ident), ref)


def test_augment_ref_output_format():
    x = _images(2, 7, 9)
    p = _params(2, 7, 9, 2, jitter=(0.4, 0.4, 0.4, 0.1))
    for dt in (torch.float32, torch.bfloat16):
        out = augment_ref(x, p, out_dtype=dt)
        assert out.shape == (2, 3, 7, 9) and out.dtype == dt
        assert out.is_contiguous(memory_format=torch.channels_last)


def test_augment_ref_gradient_routes_to_source_pixels():
    """Crop/flip only: d(sum out)/dx is 1 on every pixel inside the crop window, 0 outside."""
    pad, h, w, offs = 2, 6, 7, [(0, 3), (4, 1)]
    x = (_images(2, h, w).double() / 255).requires_grad_(True)
    p = _manual(2, offset=offs, flip=[True, False], padding=pad)
    augment_ref(x, p, out_dtype=torch.float64).sum().backward()
    expect = torch.zeros(2, h, w, 3, dtype=torch.float64)
    for k, (dy, dx) in enumerate(offs):
        # source rows dy-pad .. dy-pad+h-1 (cols likewise), clipped to the image
        r0, c0 = max(dy - pad, 0), max(dx - pad, 0)
        r1, c1 = min(dy - pad + h, h), min(dx - pad + w, w)
        expect[k, r0:r1, c0:c1] = 1.0
    assert torch.equal(x.grad, expect)


@requires_triton
def test_offsets_beyond_the_padding_read_zeros(dev):
    """Out-of-range offsets are not an error: both paths read zeros beyond the image."""
    x = _images(2, 5, 6, device=dev)
    p = _manual(2, dev, offset=[[-3, 2], [12, -20]], flip=[False, True], padding=1)
    ref = augment_ref(x, p)
    assert torch.equal(augment_triton(x, p), ref)
    # sample 0: output row 4 reads image row 0 (-3 - 1 + 4), columns j + 1; all else is zero
    assert torch.equal(ref[0, :, 4, :5], x[0, 0, 1:, :].T.float() / 255)
    assert (ref[0, :, :4] == 0).all() and (ref[0, :, :, 5] == 0).all() and (ref[1] == 0).all()


def test_augment_ref_gradcheck_full_pipeline():
    """Float input is differentiable through every stage (EOT over augmentations needs it)."""
    g = torch.Generator().manual_seed(3)
    x = (0.1 + 0.8 * torch.rand(2, 3, 4, 3, generator=g, dtype=torch.float64)).requires_grad_(True)
    p = _manual(2, offset=[[1, 0], [0, 2]], flip=[True, False], jitter_on=[True, True],
                factors=[[1.1, 0.8, 1.3, 0.15], [0.9, 1.2, 0.7, -0.3]], gray=[False, True],
                padding=1)

    def fn(inp):
        return augment_ref(inp, p, mean=CIFAR_MEAN, std=CIFAR_STD, out_dtype=torch.float64)

    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5)
    fn(x).square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# =====================================================================================
# Sampling
# =====================================================================================


def test_sample_params_ranges_and_types():
    n, pad, J = 4000, 4, (0.4, 0.3, 0.6, 0.1)
    p = sample_params(n, 32, 32, padding=pad, jitter=J, jitter_p=0.8, gray_p=0.2,
                      generator=torch.Generator().manual_seed(0))
    assert p.offset.shape == (n, 2) and p.offset.dtype == torch.int32
    assert p.offset.min() == 0 and p.offset.max() == 2 * pad  # every offset reachable
    assert p.factors.shape == (n, 4) and p.factors.dtype == torch.float32
    for k, (lo, hi) in enumerate([(0.6, 1.4), (0.7, 1.3), (0.4, 1.6), (-0.1, 0.1)]):
        col = p.factors[:, k]
        assert lo - 1e-6 <= col.min() and col.max() <= hi + 1e-6
        assert col.max() - col.min() > 0.9 * (hi - lo)  # spans the interval
    # Bernoulli rates: 4000 draws, 5 standard deviations ≈ 0.035 at p = 0.5.
    assert abs(p.flip.float().mean() - 0.5) < 0.04
    assert abs(p.jitter_on.float().mean() - 0.8) < 0.04
    assert abs(p.gray.float().mean() - 0.2) < 0.04
    assert len(p) == n and len(p.index(slice(0, 10))) == 10
    sub = p.index(torch.tensor([3, 1]))
    assert torch.equal(sub.factors, p.factors[[3, 1]]) and sub.padding == pad


def test_sample_params_strength_above_one_clips_lower_bound_at_zero():
    p = sample_params(2000, 8, 8, jitter=(1.5, 0, 0, 0), jitter_p=1.0,
                      generator=torch.Generator().manual_seed(0))
    assert p.factors[:, 0].min() >= 0 and p.factors[:, 0].max() <= 2.5
    assert (p.factors[:, 1:3] == 1).all() and (p.factors[:, 3] == 0).all()  # zero strength


def test_sample_params_deterministic_and_seed_sensitive():
    kw = dict(padding=4, jitter=(0.4, 0.4, 0.4, 0.1))
    a = sample_params(64, 32, 32, generator=torch.Generator().manual_seed(7), **kw)
    b = sample_params(64, 32, 32, generator=torch.Generator().manual_seed(7), **kw)
    c = sample_params(64, 32, 32, generator=torch.Generator().manual_seed(8), **kw)
    for f in ("offset", "flip", "jitter_on", "factors", "gray"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert not torch.equal(a.offset, c.offset)
    # Crops/flips come first in the stream: the CG settings do not change them.
    d = sample_params(64, 32, 32, padding=4, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.offset, d.offset) and torch.equal(a.flip, d.flip)


def test_crop_and_flip_alone_change_no_colour():
    """Without CG arguments a draw only crops and flips (a gray_p default of 0.2 once grayed a fifth
    of AEP's and BAIT's EOT images)."""
    p = sample_params(4000, 8, 8, padding=2, generator=torch.Generator().manual_seed(0))
    assert not p.gray.any() and not p.jitter_on.any() and p.flip.any() and (p.offset != 2).any()


def test_sample_params_disabled_parts_are_identity():
    p = sample_params(50, 8, 8, padding=0, flip=False, jitter=None, gray_p=0.0,
                      generator=torch.Generator().manual_seed(0))
    assert (p.offset == 0).all() and not p.flip.any() and not p.jitter_on.any()
    assert not p.gray.any()
    assert torch.equal(p.factors, torch.tensor([[1.0, 1.0, 1.0, 0.0]]).expand(50, 4))


@pytest.mark.parametrize("kw", [dict(padding=-1), dict(jitter_p=1.5), dict(gray_p=-0.1),
                                dict(jitter=(0.4, 0.4, 0.4, 0.6)), dict(jitter=(0.4, -1, 0, 0)),
                                dict(jitter=(0.4, 0.4))])
def test_sample_params_rejects_bad_values(kw):
    with pytest.raises(ConfigError):
        sample_params(4, 8, 8, **kw)


# =====================================================================================
# Triton == reference
# =====================================================================================

JITTER_CASES = {
    "none": dict(jitter=None, gray_p=0.0),
    "brightness": dict(jitter=(0.6, 0, 0, 0), jitter_p=1.0, gray_p=0.0),
    "contrast": dict(jitter=(0, 0.8, 0, 0), jitter_p=1.0, gray_p=0.0),
    "saturation": dict(jitter=(0, 0, 0.9, 0), jitter_p=1.0, gray_p=0.0),
    "hue": dict(jitter=(0, 0, 0, 0.5), jitter_p=1.0, gray_p=0.0),
    "gray": dict(jitter=None, gray_p=1.0),
    "cg": dict(jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, gray_p=0.4),
}
FP32_TOL = dict(rtol=0, atol=1e-5)  # float32 math in both; divisions/FMAs may differ by ulps


@requires_triton
@pytest.mark.parametrize("case", sorted(JITTER_CASES))
@pytest.mark.parametrize("n,h,w,pad", HOSTILE)
def test_triton_matches_ref(dev, n, h, w, pad, case):
    x = _images(n, h, w, seed=h * w + n, device=dev)
    p = _params(n, h, w, pad, device=dev, seed=n + h, **JITTER_CASES[case])
    norm = dict(mean=CIFAR_MEAN, std=CIFAR_STD) if case in ("cg", "none") else {}
    out = augment_triton(x, p, **norm)
    ref = augment_ref(x, p, **norm)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, **FP32_TOL)
    if case == "none":
        assert torch.equal(out, ref)  # crop/flip/normalise only: IEEE /255 and (x - m) / s


@requires_triton
@pytest.mark.parametrize("n,h,w,pad", HOSTILE[:4])
def test_triton_matches_ref_bf16(dev, n, h, w, pad):
    """bf16 output: the kernel rounds its float32 result once, on store."""
    x = _images(n, h, w, seed=5, device=dev)
    p = _params(n, h, w, pad, device=dev, seed=6, jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.9,
                gray_p=0.3)
    out = augment_triton(x, p, mean=CIFAR_MEAN, std=CIFAR_STD, out_dtype=torch.bfloat16)
    ref32 = augment_ref(x, p, mean=CIFAR_MEAN, std=CIFAR_STD)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    # bf16 keeps 8 significant bits: round-to-nearest (the GPU's cvt.rn) errs by <= 2^-8
    # relative; the Triton interpreter truncates on the fp32 → bf16 store (<= 2^-7).
    rtol = 2 ** -8 if dev.type == "cuda" else 2 ** -7
    torch.testing.assert_close(out.float(), ref32, rtol=rtol, atol=1e-5)
    ref16 = augment_ref(x, p, mean=CIFAR_MEAN, std=CIFAR_STD, out_dtype=torch.bfloat16)
    assert ((out.float() - ref16.float()).abs() <= 2 ** -7 * ref16.float().abs() + 1e-6).all()


@requires_triton
def test_triton_extreme_factors(dev):
    """b = 0 (black), c = 0 (flat mean), s = 0 (gray), hue ±0.5 and exact 0 (hue skipped)."""
    n, h, w = 6, 9, 10
    x = _images(n, h, w, seed=11, device=dev)
    p = _manual(n, dev, offset=[[0, 0], [2, 2], [4, 1], [1, 3], [2, 0], [3, 4]],
                flip=[0, 1, 0, 1, 0, 1], jitter_on=[1] * n,
                factors=[[0.0, 1.0, 1.0, 0.0], [1.3, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.2],
                         [1.0, 1.0, 1.0, 0.5], [0.8, 1.6, 1.9, -0.5], [1.2, 1.1, 1.0, 0.0]],
                gray=[0, 0, 0, 0, 1, 0], padding=2)
    out = augment_triton(x, p)
    ref = augment_ref(x, p)
    torch.testing.assert_close(out, ref, **FP32_TOL)
    assert (out[0] == 0).all()  # brightness 0
    flat = out[1]  # contrast 0: every pixel equals the mean gray of the brightened crop
    assert (flat - flat.flatten()[0]).abs().max() < 1e-6


@requires_triton
@pytest.mark.parametrize("block,ppi", [(64, 1), (64, 3), (128, 100)])
def test_triton_tiling_paths(dev, block, ppi):
    """Several tiles per image, and several programs sharing one image's tiles (each computes
    the contrast mean itself) give the same result as one program per image."""
    n, h, w = 2, 31, 29
    x = _images(n, h, w, seed=2, device=dev)
    p = _params(n, h, w, 4, device=dev, seed=3, jitter=(0.4, 0.7, 0.4, 0.1), jitter_p=1.0,
                gray_p=0.5)
    out = augment_triton(x, p, block=block, programs_per_image=ppi)
    torch.testing.assert_close(out, augment_ref(x, p), **FP32_TOL)


@requires_triton
def test_triton_bool_or_int8_flags_and_empty_batch(dev):
    n, h, w = 3, 8, 8
    x = _images(n, h, w, device=dev)
    p = _params(n, h, w, 2, device=dev, jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=1.0, gray_p=0.5)
    q = AugmentParams(p.offset, p.flip.to(torch.int8), p.jitter_on.to(torch.uint8),
                      p.factors, p.gray.to(torch.int32), p.padding)
    torch.testing.assert_close(augment_triton(x, q), augment_triton(x, p), rtol=0, atol=0)
    empty = augment_triton(x[:0], p.index(slice(0, 0)))
    assert empty.shape == (0, 3, h, w)


# =====================================================================================
# Dispatch, eval transform, Augmenter
# =====================================================================================


def test_kernel_mode_env(monkeypatch):
    assert _dispatch.kernel_mode() == "auto"
    for mode in ("torch", "TRITON", " auto "):
        monkeypatch.setenv("UEPERF_KERNELS", mode)
        assert _dispatch.kernel_mode() == mode.strip().lower()
    monkeypatch.setenv("UEPERF_KERNELS", "cuda")
    with pytest.raises(ConfigError, match="UEPERF_KERNELS='cuda'"):
        _dispatch.kernel_mode()


def test_use_triton_rules(monkeypatch):
    cpu = torch.zeros(1)
    monkeypatch.setenv("UEPERF_KERNELS", "torch")
    assert _dispatch.use_triton(cpu) is False
    monkeypatch.setenv("UEPERF_KERNELS", "auto")
    assert _dispatch.use_triton(cpu) is False  # auto never interprets on CPU
    monkeypatch.setenv("UEPERF_KERNELS", "triton")
    monkeypatch.setattr(_dispatch, "triton_available", lambda: False)
    with pytest.raises(ConfigError, match="cannot be imported"):
        _dispatch.use_triton(cpu)
    monkeypatch.setattr(_dispatch, "triton_available", lambda: True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="TRITON_INTERPRET=1"):
        _dispatch.use_triton(cpu)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _dispatch.use_triton(cpu) is True


def test_dispatcher_picks_path(monkeypatch):
    import ueperf.kernels.augment as aug

    calls = []
    monkeypatch.setattr(aug, "augment_triton", lambda *a, **k: calls.append("triton") or "T")
    x = _images(1, 4, 4)
    p = AugmentParams.identity(1)
    monkeypatch.setenv("UEPERF_KERNELS", "torch")
    assert torch.is_tensor(augment(x, p))
    monkeypatch.setattr(aug, "use_triton", lambda t: True)
    assert augment(x, p) == "T"
    assert torch.is_tensor(augment(x.float() / 255, p))  # float input: always the reference
    assert calls == ["triton"]


@requires_triton
def test_forced_triton_mode_matches_torch_mode(monkeypatch, dev):
    if dev.type == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = _images(3, 13, 7, device=dev)
    aug = Augmenter(crop_padding=2, cg=True, jitter_p=1.0, gray_p=0.3, normalize=True)
    p = aug.sample(x, torch.Generator(device=dev).manual_seed(0))
    monkeypatch.setenv("UEPERF_KERNELS", "triton")
    fast = aug(x, params=p)
    monkeypatch.setenv("UEPERF_KERNELS", "torch")
    torch.testing.assert_close(fast, aug(x, params=p), **FP32_TOL)


def test_eval_transform_is_exact_scaling():
    x = _images(2, 5, 7)
    expect = x.permute(0, 3, 1, 2).float() / 255
    out = eval_transform(x)
    assert torch.equal(out, expect) and out.is_contiguous(memory_format=torch.channels_last)
    m = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    assert torch.equal(eval_transform(x, mean=CIFAR_MEAN, std=CIFAR_STD), (expect - m) / s)
    assert eval_transform(x, out_dtype=torch.bfloat16).dtype == torch.bfloat16


@requires_triton
def test_eval_transform_triton_bit_exact(dev):
    x = _images(3, 11, 17, device=dev)
    p = AugmentParams.identity(3, device=dev)
    for norm in ({}, dict(mean=CIFAR_MEAN, std=CIFAR_STD)):
        assert torch.equal(augment_triton(x, p, **norm), augment_ref(x, p, **norm))


def test_augmenter_from_config():
    from ueperf.config import AugmentConfig

    cfg = AugmentConfig()
    aug = Augmenter.from_config(cfg)
    assert aug.crop_padding == cfg.crop_padding and aug.cg == cfg.cg
    x = _images(8, 12, 12)
    p = aug.sample(x, torch.Generator().manual_seed(0))
    assert not p.jitter_on.any() and not p.gray.any()  # cg off → no colour augmentation
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (8, 3, 12, 12)
    assert torch.equal(a, augment_ref(x, p))
    cg = Augmenter.from_config(AugmentConfig(cg=True, gray_p=1.0, normalize=True))
    out = cg(x, torch.Generator().manual_seed(0))
    # gray_p = 1: every channel, un-normalised, is the same luma.
    un = out * torch.tensor(CIFAR_STD).view(1, 3, 1, 1) + torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    assert (un - un[:, :1]).abs().max() < 1e-5
    ev = cg.eval_transform(x)
    assert torch.equal(ev, eval_transform(x, mean=CIFAR_MEAN, std=CIFAR_STD))
    with pytest.raises(ConfigError):
        Augmenter(jitter_p=2.0)
    with pytest.raises(ConfigError):
        Augmenter(std=(0.2, 0.0, 0.2))


def test_augment_rejects_bad_inputs():
    x = _images(2, 4, 4)
    with pytest.raises(ValueError, match="parameter rows"):
        augment_ref(x, AugmentParams.identity(3))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        augment_ref(x.permute(0, 3, 1, 2), AugmentParams.identity(2))
    with pytest.raises(ConfigError, match="both mean and std"):
        augment_ref(x, AugmentParams.identity(2), mean=CIFAR_MEAN)
    assert math.isfinite(float(augment_ref(x, AugmentParams.identity(2)).sum()))
