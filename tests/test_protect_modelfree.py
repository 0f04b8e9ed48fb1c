"""The model-free protections ``sp``, ``ops``, ``ap`` and the AR kernel behind ``ap``.

Each method is checked against its definition (spec §2.3, §2.4, §2.7): SP noise has the stated
per-image ℓ2 size, is made of constant patches, is distinct per image and linearly separable by
class; OPS picks distinct (pixel, colour) pairs by the mean/std score and sets exactly that
pixel; AP realisations obey their class's recurrence and meet the norm budget. The AR kernel's
C++ op equals the torch reference bit for bit, and the package works without the extension.
Every method gives the same bytes under simulated sharding. Their effect on a victim is
measured by the effects benchmark (bench/effects.py), not here.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ueperf.errors import ConfigError
from ueperf.kernels import ar as ar_kernels
from ueperf.protections import PROTECTIONS
from ueperf.data.budget import measure, size_limit
from ueperf.protections.base import ProtectContext, apply

CPU = torch.device("cpu")


def _data(n=600, k=10, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, h, w, 3), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % k
    return x, y[torch.randperm(n, generator=g)]


def _ctx(method, x, y, k, seed=0, shard=None, **cfg_over):
    cfg = PROTECTIONS.get(method).Config(**cfg_over)
    return ProtectContext(x=x, y=y, num_classes=k, classes=[str(i) for i in range(k)], cfg=cfg, seed=seed,
                          device=CPU, shard=shard, progress=False)


def _generate(method, x, y, k, **kw):
    ctx = _ctx(method, x, y, k, **kw)
    return PROTECTIONS.get(method)().generate(ctx)


def _check_budget(x, y, pert):
    """The store's bound check (what the runner applies before writing)."""
    xp = apply(x.numpy(), y.numpy(), pert)
    size = measure(x.numpy(), xp, pert.norm)
    assert size["size"] <= size_limit(pert.norm, pert.eps, int(np.prod(x.shape[1:]))) + 1e-9, size
    return xp


# ───────────────────────────────────────────── common contract ──
@pytest.mark.parametrize("method", ["sp", "ops", "ap"])
def test_registered_with_contract_config(method):
    cls = PROTECTIONS.get(method)
    cfg = cls.Config()
    for field in ("eps", "norm", "granularity", "batch_size"):
        assert hasattr(cfg, field), field
    assert cfg.granularity == "sample"


@pytest.mark.parametrize("method,over", [("sp", {}), ("ops", {}), ("ap", {"batch_size": 128})])
def test_sharded_generation_gives_the_same_bytes(method, over):
    """Two simulated ranks crafting their ``ctx.shard`` rows reassemble the one-process δ."""
    x, y = _data(n=300, k=4)
    full = _generate(method, x, y, 4, **over).delta
    rows = {}
    for r in range(2):
        shard = torch.arange(300)[r::2]
        rows[r] = _generate(method, x, y, 4, shard=shard, **over).delta
        assert rows[r].shape[0] == shard.numel()
    assembled = torch.empty_like(full)
    assembled[0::2], assembled[1::2] = rows[0], rows[1]
    assert torch.equal(assembled, full)
    again = _generate(method, x, y, 4, **over).delta
    assert torch.equal(again, full)  # same seed → same bytes


# ───────────────────────────────────────────── SP ──
def test_sp_norm_patches_distinct_and_separable():
    x, y = _data(n=2000, k=10)
    pert = _generate("sp", x, y, 10)
    d = pert.delta
    eps = math.sqrt(32 * 32 * 3) * 6 / 255  # spec §2.3: √3072·6/255 ≈ 1.30
    assert (pert.norm, pert.granularity) == ("l2", "sample") and math.isclose(pert.eps, eps, rel_tol=1e-9)
    norms = d.flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.full_like(norms, eps), rtol=1e-5)
    # constant 8×8 patches: the 4×4×3 grid of patch means reproduces δ exactly
    grid = d.view(2000, 4, 8, 4, 8, 3)
    means = grid.mean(dim=(2, 4), keepdim=True)
    assert torch.allclose(grid, means.expand_as(grid), atol=1e-6)
    feats = means.view(2000, 48).double()
    assert torch.unique(feats, dim=0).shape[0] == 2000  # one distinct noise per image

    def lsq_train_accuracy(labels):
        a = torch.cat([feats, torch.ones(2000, 1, dtype=torch.float64)], dim=1)
        w = torch.linalg.lstsq(a, F.one_hot(labels, 10).double()).solution
        return float(((a @ w).argmax(1) == labels).double().mean())

    assert lsq_train_accuracy(y) == 1.0  # a linear classifier on the noise alone separates the classes
    shuffled = y[torch.randperm(2000, generator=torch.Generator().manual_seed(1))]
    assert lsq_train_accuracy(shuffled) < 0.5  # ... which it cannot do for labels the noise does not encode
    _check_budget(x, y, pert)


def test_sp_options_and_errors():
    x, y = _data(n=200, k=4, h=20, w=20)  # 20 px with 8 px patches: a 3×3 grid, cropped
    pert = _generate("sp", x, y, 4, eps=0.5)
    assert pert.eps == 0.5 and torch.allclose(pert.delta.flatten(1).norm(dim=1), torch.full((200,), 0.5), rtol=1e-5)
    assert pert.info["features"] == 27
    with pytest.raises(ConfigError, match="norm"):
        _generate("sp", x, y, 4, norm="linf")
    x10, y10 = _data(n=100, k=10)
    with pytest.raises(ConfigError, match="vertices"):  # 32-px patches: 3 features, 8 vertices < 10 classes
        _generate("sp", x10, y10, 10, patch_size=32)


# ───────────────────────────────────────────── OPS ──
def _ops_scores_bruteforce(x, y, k):
    """The repo's loop (perturb.py), literally: per class, position and colour,
    mean(|c − x_p|)/std(|c − x_p|) over the class's images and channels, x in [0, 1]."""
    n, h, w, _ = x.shape
    xf = x.double().numpy() / 255
    out = np.zeros((k, 8, h * w))
    for cls in range(k):
        img = xf[y.numpy() == cls]
        for p in range(h * w):
            for v in range(8):
                c = np.array([(v >> 2) & 1, (v >> 1) & 1, v & 1], dtype=float)
                diff = np.abs(c - img[:, p // w, p % w, :])
                out[cls, v, p] = diff.mean() / diff.std()
    return out


def test_ops_scores_match_the_definition():
    from ueperf.protections.ops import class_moments, score_table
    x, y = _data(n=90, k=3, h=5, w=6)
    count, s1, s2 = class_moments(x, y, 3, batch_size=32)
    assert torch.allclose(score_table(count, s1, s2), torch.from_numpy(_ops_scores_bruteforce(x, y, 3)),
                          rtol=1e-9, atol=0)


def test_ops_distinct_pairs_and_one_pixel_per_image():
    x, y = _data(n=1000, k=10)
    pert = _generate("ops", x, y, 10)
    assert (pert.norm, pert.eps, pert.granularity) == ("l0", 1.0, "sample")
    pairs = [(p["row"], p["col"], tuple(p["colour"])) for cls in pert.info["pixels"] for p in cls]
    assert len(pairs) == 10 and len(set(pairs)) == 10  # one (position, colour) per class, all distinct
    xp = _check_budget(x, y, pert)
    diff = (xp.astype(np.int16) != x.numpy().astype(np.int16)).any(axis=3).reshape(1000, -1)
    assert diff.sum(1).max() == 1  # never more than one pixel per image
    for cls in range(10):
        (r, c, col), = [(p["row"], p["col"], tuple(p["colour"])) for p in pert.info["pixels"][cls]]
        members = (y == cls).numpy()
        # every class-k image now holds exactly colour c_k at p_k (255·c), and nothing else changed
        assert (xp[members, r, c, :] == 255 * np.array(col, dtype=np.uint8)).all()
        was = (x.numpy()[members, r, c, :] == 255 * np.array(col)).all(axis=1)
        assert (diff[members].sum(1) == (~was)).all()  # changed exactly where the pixel was not c_k already


def test_ops_later_classes_skip_taken_pairs():
    """Identical classes score identically, so each must take the next-best free pair."""
    from ueperf.protections.ops import select_pixels
    x, y = _data(n=40, k=1, h=4, w=4)
    x4 = x.repeat(4, 1, 1, 1)
    y4 = torch.arange(4).repeat_interleave(40)
    pert = _generate("ops", x4, y4, 4)
    pairs = [(p["row"], p["col"], tuple(p["colour"])) for cls in pert.info["pixels"] for p in cls]
    assert len(set(pairs)) == 4
    scores = torch.tensor(pert.info["score"]).flatten()
    assert (scores[:-1] >= scores[1:]).all()  # class 0 got the best pair, class 1 the second best, ...
    two = select_pixels(torch.rand(3, 8, 16, dtype=torch.float64), 2)
    flat = {tuple(p) for p in two.view(-1, 2).tolist()}
    assert len(flat) == 6  # sparsity 2: six distinct pairs over three classes


def test_ops_sparsity_and_errors():
    x, y = _data(n=300, k=3)
    pert = _generate("ops", x, y, 3, eps=2.0)
    xp = _check_budget(x, y, pert)
    assert pert.eps == 2.0 and (xp != x.numpy()).any(axis=3).reshape(300, -1).sum(1).max() <= 2
    for bad in (dict(eps=1.5), dict(eps=0.0), dict(norm="linf", eps=8 / 255)):
        with pytest.raises(ConfigError):
            _generate("ops", x, y, 3, **bad)


# ───────────────────────────────────────────── AR kernel ──
def test_ar_recurrence_hand_checked():
    """3×4 start, b = 0.5 at (0,0) and 0.25 at (2,1): only (2,2) and (2,3) are targets.
    (2,2) = 0.5·1 + 0.25·10 = 3.0; (2,3) = 0.5·2 + 0.25·s(2,2) = 1 + 0.25·3.0 = 1.75 — it reads
    the value just written to its left, not the start value 11."""
    start = torch.arange(1, 13, dtype=torch.float64).view(1, 1, 3, 4)
    b = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    b[0, 0, 0, 0], b[0, 0, 2, 1] = 0.5, 0.25
    expect = start.clone()
    expect[0, 0, 2, 2], expect[0, 0, 2, 3] = 3.0, 1.75
    assert torch.equal(ar_kernels.ar_generate_ref(start, b), expect)
    assert torch.equal(ar_kernels.ar_generate(start, b), expect)
    assert torch.equal(start, torch.arange(1, 13, dtype=torch.float64).view(1, 1, 3, 4))  # input untouched
    bad = b.clone()
    bad[0, 0, 2, 2] = 1.0
    with pytest.raises(ValueError, match="bottom-right"):
        ar_kernels.ar_generate(start, bad)


def _ar_case(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    start = torch.randn(shape, generator=g, dtype=torch.float64)
    b = torch.randn((shape[0], shape[1], 3, 3), generator=g, dtype=torch.float64) * 0.3
    b[..., 2, 2] = 0
    return start.to(dtype), b.to(dtype)


@pytest.mark.parametrize("shape", [(1, 1, 3, 3), (2, 3, 36, 36), (5, 3, 7, 11), (3, 2, 13, 5), (4, 3, 2, 9), (0, 3, 8, 8)])
def test_ar_cpp_equals_reference(shape):
    if not ar_kernels.extension_available():
        pytest.skip("ueperf._C_ar is not built (pip install --no-build-isolation -e .)")
    ext = ar_kernels._load_extension()
    start, b = _ar_case(shape, torch.float64, 0)
    assert torch.equal(ext.ar_generate(start, b), ar_kernels.ar_generate_ref(start, b))  # float64: exact
    start32, b32 = _ar_case(shape, torch.float32, 1)
    ref32 = ar_kernels.ar_generate_ref(start32, b32)
    assert torch.allclose(ext.ar_generate(start32, b32), ref32, rtol=1e-6, atol=1e-6)
    nc = start.transpose(2, 3).contiguous().transpose(2, 3)  # non-contiguous input
    assert torch.equal(ext.ar_generate(nc, b), ar_kernels.ar_generate_ref(nc, b))


def test_ar_works_without_the_extension(monkeypatch):
    """Forced (UEPERF_KERNELS=torch) or absent extension: the reference serves, same AP bytes."""
    x, y = _data(n=64, k=3, h=16, w=16)  # 16 px: the torch reference scans 4.5× fewer positions
    native = _generate("ap", x, y, 3, batch_size=32)
    monkeypatch.setenv("UEPERF_KERNELS", "torch")
    assert ar_kernels.backend() == "torch"
    forced = _generate("ap", x, y, 3, batch_size=32)
    monkeypatch.delenv("UEPERF_KERNELS")
    monkeypatch.setattr(ar_kernels, "_load_extension", lambda: None)  # as if the build was skipped
    assert ar_kernels.backend() == "torch" and not ar_kernels.extension_available()
    absent = _generate("ap", x, y, 3, batch_size=32)
    assert forced.info["backend"] == absent.info["backend"] == "torch"
    assert torch.equal(forced.delta, native.delta) and torch.equal(absent.delta, native.delta)


# ───────────────────────────────────────────── AP ──
def test_ap_processes_follow_the_definition():
    from ueperf.protections.ap import filter_responses, matching_filters
    x, y = _data(n=200, k=4)
    pert = _generate("ap", x, y, 4)
    b = torch.tensor(pert.info["coeffs"], dtype=torch.float64)  # (K, 3, 3, 3)
    assert b.shape == (4, 3, 3, 3)
    assert (b[:, :, 2, 2] == 0).all()  # the target's own coefficient
    assert torch.allclose(b.sum(dim=(2, 3)), torch.ones(4, 3, dtype=torch.float64), atol=1e-5)  # channels sum to 1
    # δ_i is its class's AR process: the matching depthwise filter (b with −1 at the target)
    # annihilates it everywhere (up to float32 rounding), other classes' filters do not
    d = pert.delta.permute(0, 3, 1, 2).double()  # (N, 3, H, W)
    f = matching_filters(b).view(12, 1, 3, 3)
    for cls in range(4):
        dc = d[y == cls]
        resid = F.conv2d(dc, f[3 * cls:3 * cls + 3], groups=3).abs().amax()
        assert resid < 1e-4 * dc.abs().amax(), (cls, resid)
        others = [F.conv2d(dc, f[3 * o:3 * o + 3], groups=3).abs().mean() for o in range(4) if o != cls]
        assert min(others) > 100 * resid
    # the search's acceptance test holds for every kept process against the earlier ones
    assert pert.info["candidates"] >= pert.info["stable"] >= 4
    for j in range(1, 4):
        u = d[y == j][0] / d[y == j][0].norm()
        assert filter_responses(u, matching_filters(b[:j])).min() > 0
    assert ar_kernels.backend() == pert.info["backend"]


@pytest.mark.parametrize("norm,eps", [("l2", 1.0), ("linf", 8 / 255)])
def test_ap_norm_budget(norm, eps):
    x, y = _data(n=200, k=3)
    pert = _generate("ap", x, y, 3, norm=norm)
    assert (pert.norm, pert.granularity) == (norm, "sample") and math.isclose(pert.eps, eps)
    flat = pert.delta.flatten(1)
    size = flat.norm(dim=1) if norm == "l2" else flat.abs().amax(dim=1)
    assert torch.allclose(size, torch.full_like(size, eps), rtol=1e-5)
    _check_budget(x, y, pert)
    assert torch.unique(flat, dim=0).shape[0] == 200  # one realisation per image


def test_ap_random_coeffs_and_errors():
    x, y = _data(n=60, k=3)
    pert = _generate("ap", x, y, 3, coeffs="random", eps=0.5)
    assert pert.eps == 0.5 and pert.info["stable"] >= 3
    for bad in (dict(norm="l0"), dict(coeffs="published"), dict(pad=1)):
        with pytest.raises(ConfigError):
            _generate("ap", x, y, 3, **bad)
    with pytest.raises(ConfigError, match="search_candidates"):
        _generate("ap", x, y, 3, search_candidates=5)
