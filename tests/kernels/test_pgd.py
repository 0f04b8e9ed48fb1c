"""ueperf.kernels.pgd: bounds, [0, 1] box, sign convention, Triton == reference, dispatch.

Triton tests run on CUDA when present, else under the Triton interpreter (see conftest.py).
"""

import pytest
import torch

from ueperf.errors import ConfigError
from ueperf.kernels import _dispatch
from ueperf.kernels.pgd import (
    pgd_step,
    pgd_step_ref,
    pgd_step_triton,
    project,
    project_ref,
    project_triton,
)

requires_triton = pytest.mark.skipif(not _dispatch.triton_available(),
                                     reason="triton is not importable")

# Batch 1 and 3, odd / prime / non-power-of-2 sizes, a 2-D (N, D) case, 64×64.
HOSTILE = [(1, 3, 7, 13), (3, 3, 31, 31), (2, 3, 33, 33), (1, 3, 64, 64), (5, 17), (3, 1)]
EPS = {"linf": 8 / 255, "l2": 0.5}      # CIFAR-style budgets [spec §2.0 / AP's ℓ2 = 1.0 scale]
ALPHA = {"linf": 2 / 255, "l2": 0.1}


def _inputs(shape, seed=0, device="cpu", big=False):
    """x in [0, 1] with many pixels at exactly 0 and 1 (where the box clip binds), δ that is
    partly outside the ball (``big``) and a Gaussian gradient with some exact zeros."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    x[torch.rand(shape, generator=g) < 0.1] = 0.0
    x[torch.rand(shape, generator=g) < 0.1] = 1.0
    scale = 0.5 if big else 0.03
    d = (torch.rand(shape, generator=g) * 2 - 1) * scale
    grad = torch.randn(shape, generator=g)
    grad[torch.rand(shape, generator=g) < 0.05] = 0.0
    return d.to(device), grad.to(device), x.to(device)


def _l2(t):
    return torch.linalg.vector_norm(t.flatten(1).float(), dim=1)


def _check_constraints(new, x, eps, norm):
    assert ((x + new) >= 0).all() and ((x + new) <= 1 + 1e-6).all()
    if norm == "linf":
        assert new.abs().max() <= eps + 1e-6
    else:
        assert (_l2(new) <= eps * (1 + 1e-5)).all()


IMPLS = {"ref": pgd_step_ref, "triton": pgd_step_triton}


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("big", [False, True])
def test_bounds_and_box(dev, impl, norm, big):
    if impl == "triton" and not _dispatch.triton_available():
        pytest.skip("triton is not importable")
    d, g, x = _inputs((4, 3, 9, 11), seed=int(big), device=dev, big=big)
    new = IMPLS[impl](d, g, x, alpha=ALPHA[norm], eps=EPS[norm], norm=norm, sign=1.0)
    _check_constraints(new, x, EPS[norm], norm)
    assert new.dtype == d.dtype and new.shape == d.shape


def test_linf_step_by_hand():
    x = torch.tensor([[0.5, 0.5, 0.0, 1.0, 0.99, 0.2]])
    d = torch.tensor([[0.0, 0.02, 0.0, 0.0, 0.0, -0.03]])
    g = torch.tensor([[1.0, 2.0, -1.0, 3.0, 0.5, 0.0]])
    # sign=+1, α=0.02, ε=0.03:  δ + α·sign(g) → clip ±ε → clip x+δ to [0, 1]
    expect = torch.tensor([[0.02, 0.03, 0.0, 0.0, 0.01, -0.03]])
    out = pgd_step_ref(d, g, x, alpha=0.02, eps=0.03, norm="linf", sign=1.0)
    torch.testing.assert_close(out, expect, rtol=0, atol=1e-7)


def test_l2_step_by_hand():
    x = torch.full((1, 2), 0.5)
    d = torch.tensor([[0.1, 0.0]])
    g = torch.tensor([[0.0, 4.0]])  # unit direction (0, 1)
    out = pgd_step_ref(d, g, x, alpha=0.3, eps=0.25, norm="l2", sign=1.0)
    # step: (0.1, 0.3), norm √0.1 ≈ 0.3162 > 0.25 → scaled by 0.25/√0.1
    expect = torch.tensor([[0.1, 0.3]]) * (0.25 / 0.1 ** 0.5)
    torch.testing.assert_close(out, expect, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_sign_convention(dev, impl, norm):
    """sign = -1 lowers L(δ) = ‖x + δ − t‖², sign = +1 raises it."""
    if impl == "triton" and not _dispatch.triton_available():
        pytest.skip("triton is not importable")
    g0 = torch.Generator().manual_seed(4)
    x = (0.25 + 0.5 * torch.rand(3, 3, 8, 8, generator=g0)).to(dev)
    t = torch.rand(3, 3, 8, 8, generator=g0).to(dev)
    d = torch.zeros_like(x, requires_grad=True)
    loss = ((x + d - t) ** 2).flatten(1).sum(1)
    (grad,) = torch.autograd.grad(loss.sum(), d)
    fn = IMPLS[impl]
    eps, alpha = (8 / 255, 2 / 255) if norm == "linf" else (0.5, 0.1)
    for sign, better in ((-1.0, lambda a, b: a < b), (1.0, lambda a, b: a > b)):
        new = fn(d.detach(), grad, x, alpha=alpha, eps=eps, norm=norm, sign=sign)
        new_loss = ((x + new - t) ** 2).flatten(1).sum(1)
        assert better(new_loss, loss.detach()).all(), (sign, new_loss, loss)


@requires_triton
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("shape", HOSTILE)
def test_triton_matches_ref(dev, shape, norm):
    for big, sign in ((False, -1.0), (True, 1.0)):
        d, g, x = _inputs(shape, seed=len(shape) + shape[0], device=dev, big=big)
        kw = dict(alpha=ALPHA[norm], eps=EPS[norm], norm=norm, sign=sign)
        ref = pgd_step_ref(d, g, x, **kw)
        out = pgd_step_triton(d, g, x, **kw)
        if norm == "linf":
            assert torch.equal(out, ref)  # same float32 ops in the same order
        else:
            torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(project_triton(d, x, eps=EPS[norm], norm=norm),
                                   project_ref(d, x, eps=EPS[norm], norm=norm), rtol=0, atol=1e-6)


@requires_triton
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_triton_in_place_layouts_and_bf16(dev, norm):
    kw = dict(alpha=ALPHA[norm], eps=EPS[norm], norm=norm, sign=-1.0)
    d, g, x = _inputs((3, 3, 13, 11), seed=9, device=dev, big=True)
    ref = pgd_step_ref(d, g, x, **kw)
    tol = dict(rtol=0, atol=1e-6)
    # out=delta: in place, returns the same tensor
    dd = d.clone()
    assert pgd_step_triton(dd, g, x, out=dd, **kw) is dd
    torch.testing.assert_close(dd, ref, **tol)
    # channels-last everywhere: stays channels-last, same values
    cl = [t.contiguous(memory_format=torch.channels_last) for t in (d, g, x)]
    out = pgd_step_triton(*cl, **kw)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, **tol)
    # mixed layouts (δ channels-last, g and x contiguous) and a strided out
    out2 = torch.empty(3, 3, 11, 13, device=dev).transpose(-1, -2)
    pgd_step_triton(cl[0], g, x, out=out2, **kw)
    torch.testing.assert_close(out2, ref, **tol)
    # bf16 δ: float32 math, one rounding on store (interpreter truncates: ≤ 1 bf16 ulp)
    d16 = d.to(torch.bfloat16)
    out16 = pgd_step_triton(d16, g, x, **kw)
    ref16 = pgd_step_ref(d16, g, x, **kw)
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), ref16.float(), rtol=2 ** -7, atol=1e-6)


@requires_triton
def test_l2_zero_gradient_and_zero_delta(dev):
    """‖g‖ = 0: no step and no NaN (the 1e-12 floor); δ = 0 projects to 0."""
    x = torch.rand(2, 3, 5, 5, device=dev)
    d = torch.zeros_like(x)
    d[0] = 0.001
    g = torch.zeros_like(x)
    for fn in (pgd_step_ref, pgd_step_triton):
        out = fn(d, g, x, alpha=0.1, eps=0.5, norm="l2")
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, project_ref(d, x, eps=0.5, norm="l2"), rtol=0, atol=1e-7)
        assert (out[1] == 0).all()


def test_project_l2_scales_onto_the_sphere():
    x = torch.full((2, 3, 4, 4), 0.5)
    g = torch.Generator().manual_seed(0)
    d = torch.randn(2, 3, 4, 4, generator=g) * 0.02  # |δ| ≪ 0.5: the box never binds
    d[1] *= 100  # ‖δ₁‖ ≈ 2·√48 ≈ 14 ≫ ε; ‖δ₀‖ ≈ 0.14 < ε stays inside
    out = project_ref(d, x, eps=0.3, norm="l2")
    torch.testing.assert_close(out[0], d[0], rtol=0, atol=1e-7)
    torch.testing.assert_close(_l2(out[1:]), torch.tensor([0.3]), rtol=1e-5, atol=0)
    cos = torch.nn.functional.cosine_similarity(out[1].flatten(), d[1].flatten(), dim=0)
    assert cos > 1 - 1e-6  # direction kept


def test_dispatcher(monkeypatch, dev):
    d, g, x = _inputs((2, 3, 6, 6), device=dev, big=True)
    kw = dict(alpha=2 / 255, eps=8 / 255)
    ref = pgd_step_ref(d, g, x, **kw)
    monkeypatch.setenv("UEPERF_KERNELS", "torch")
    assert torch.equal(pgd_step(d, g, x, **kw), ref)
    buf = torch.empty_like(d)
    assert pgd_step(d, g, x, out=buf, **kw) is buf and torch.equal(buf, ref)
    assert torch.equal(project(d, x, eps=8 / 255), project_ref(d, x, eps=8 / 255))
    # float64 always takes the reference (the kernels are fp32/bf16/fp16)
    monkeypatch.setenv("UEPERF_KERNELS", "triton")
    if dev.type == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    out64 = pgd_step(d.double(), g.double(), x.double(), **kw)
    assert out64.dtype == torch.float64
    if _dispatch.triton_available():
        assert torch.equal(pgd_step(d, g, x, **kw), ref)
        assert torch.equal(project(d, x, eps=8 / 255), project_ref(d, x, eps=8 / 255))


def test_rejects_bad_arguments():
    d, g, x = _inputs((2, 4))
    with pytest.raises(ConfigError, match="norm"):
        pgd_step_ref(d, g, x, alpha=0.1, eps=0.1, norm="l1")
    with pytest.raises(ConfigError, match="eps"):
        pgd_step(d, g, x, alpha=0.1, eps=-1.0)
    with pytest.raises(ValueError, match="one shape"):
        pgd_step_ref(d, g[:1], x, alpha=0.1, eps=0.1)
    with pytest.raises(ValueError, match="one shape"):
        project(d, x[:, :2], eps=0.1)
