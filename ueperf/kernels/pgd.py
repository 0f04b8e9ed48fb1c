"""One fused projected-gradient (PGD) step, shared by every protection and adversarial training.

For a batch of perturbations δ (N, ...) on images x (N, ...) in [0, 1], gradient g = ∂L/∂δ::

    ℓ∞:  δ ← clip(δ + sign·α·sign(g), −ε, ε)
    ℓ2:  δ ← δ + sign·α·g / max(‖g‖₂, 1e-12)            (per sample, over all non-batch dims)
         δ ← δ · min(1, ε / max(‖δ‖₂, 1e-12))            (projection onto the ℓ2 ball)
    then, both norms:  δ ← clamp(x + δ, 0, 1) − x        (the perturbed image stays in [0, 1])

``sign = -1`` descends the loss (error-minimising noise: EM, REM's inner step); ``sign = +1``
ascends it (adversarial examples, AEP poisons, adversarial training). ε and α are in [0, 1]
pixel units (e.g. 8/255 and 0.8/255). The final clip never increases |δ| element-wise (x is in
[0, 1]), so the norm bound still holds after it.

:func:`project` (``project_ref`` / ``project_triton``) is the same map without the gradient
step, for random starts. The 1e-12 floors are ``torch.nn.functional.normalize``'s default eps.

Contents: ``pgd_step_ref`` (plain torch: the spec), ``pgd_step_triton`` (Triton; optional
``out=`` for in-place), ``pgd_step`` (dispatcher), and the same three for ``project``.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from ueperf.errors import ConfigError
from ueperf.kernels._dispatch import use_triton

NORMS = ("linf", "l2")
_TINY = 1e-12  # norm floor: F.normalize's default eps
_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check(delta: torch.Tensor, x: torch.Tensor, grad: Optional[torch.Tensor], eps: float,
           alpha: float, norm: str) -> None:
    if norm not in NORMS:
        raise ConfigError(f"PGD norm={norm!r} is not supported; use one of {', '.join(NORMS)}")
    if not eps >= 0:
        raise ConfigError(f"PGD eps={eps!r} must be >= 0 (in [0, 1] pixel units, e.g. 8/255)")
    if not alpha >= 0:
        raise ConfigError(f"PGD step alpha={alpha!r} must be >= 0 (in [0, 1] pixel units)")
    if x.shape != delta.shape or (grad is not None and grad.shape != delta.shape):
        raise ValueError(
            f"PGD expects delta, grad and x of one shape, got delta {tuple(delta.shape)}, "
            f"grad {None if grad is None else tuple(grad.shape)}, x {tuple(x.shape)}; "
            f"expand class-wise noise to the batch first")
    if delta.dim() < 1:
        raise ValueError("PGD expects a batch dimension (N, ...)")
    if not delta.is_floating_point():
        raise TypeError(f"PGD perturbation must be floating, got {delta.dtype}")


# =====================================================================================
# Reference (plain torch)
# =====================================================================================


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    """‖t_n‖₂ over all non-batch dims, shaped (N, 1, …, 1) for broadcasting."""
    return torch.linalg.vector_norm(t.flatten(1), dim=1).view(-1, *([1] * (t.dim() - 1)))


def _project_math(d: torch.Tensor, xf: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        d = d.clamp(-eps, eps)
    else:
        d = d * (eps / _per_sample_norm(d).clamp_min(_TINY)).clamp_max(1.0)
    return (xf + d).clamp(0.0, 1.0) - xf


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def pgd_step_ref(
    delta: torch.Tensor,
    grad: torch.Tensor,
    x: torch.Tensor,
    *,
    alpha: float,
    eps: float,
    norm: str = "linf",
    sign: float = -1.0,
) -> torch.Tensor:
    """Reference PGD step (math in the module docstring).

    Args:
        delta, grad, x: (N, ...) tensors of one shape; x in [0, 1].
        alpha: step size; eps: radius of the norm ball (both in [0, 1] pixel units).
        norm: "linf" or "l2". sign: -1 to descend the loss, +1 to ascend it.

    Returns a new tensor of δ's dtype (math in float32, or float64 for float64 δ).
    """
    _check(delta, x, grad, eps, alpha, norm)
    ct = _compute_dtype(delta)
    d, g, xf = delta.to(ct), grad.to(ct), x.to(ct)
    step = float(sign) * float(alpha)
    if norm == "linf":
        d = d + step * torch.sign(g)
    else:
        d = d + step * g / _per_sample_norm(g).clamp_min(_TINY)
    return _project_math(d, xf, float(eps), norm).to(delta.dtype)


def project_ref(delta: torch.Tensor, x: torch.Tensor, *, eps: float,
                norm: str = "linf") -> torch.Tensor:
    """Project δ onto the ε-ball of ``norm`` and clip so x + δ ∈ [0, 1] (no gradient step).
    Returns a new tensor of δ's dtype."""
    _check(delta, x, None, eps, 0.0, norm)
    ct = _compute_dtype(delta)
    return _project_math(delta.to(ct), x.to(ct), float(eps), norm).to(delta.dtype)


# =====================================================================================
# Triton kernels (loaded lazily: importing this module never imports triton)
# =====================================================================================


@functools.lru_cache(maxsize=None)
def _kernels():
    """Compile-on-first-use namespace holding the Triton kernels (imports triton here)."""
    import triton
    import triton.language as tl

    @triton.jit
    def _pgd_linf_kernel(d_ptr, g_ptr, x_ptr, o_ptr, numel, step, eps,
                         HAS_STEP: tl.constexpr, BLOCK: tl.constexpr):
        # Purely element-wise: a flat grid over all N·M elements.
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        m = offs < numel
        d = tl.load(d_ptr + offs, mask=m, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
        if HAS_STEP:
            g = tl.load(g_ptr + offs, mask=m, other=0.0).to(tl.float32)
            sg = tl.where(g > 0.0, 1.0, tl.where(g < 0.0, -1.0, 0.0))  # torch.sign
            d = d + step * sg
        d = tl.minimum(tl.maximum(d, -eps), eps)
        d = tl.minimum(tl.maximum(x + d, 0.0), 1.0) - x
        tl.store(o_ptr + offs, d.to(o_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _pgd_l2_kernel(d_ptr, g_ptr, x_ptr, o_ptr, M, step, eps, tiny,
                       HAS_STEP: tl.constexpr, BLOCK: tl.constexpr):
        # One program per sample; its M elements are contiguous (batch dim outermost).
        # Sweep 1 accumulates ‖g‖², ⟨δ,g⟩ and ‖δ‖² together, so the norm of the stepped δ,
        #     ‖δ + k·g‖² = ‖δ‖² + 2k⟨δ,g⟩ + k²‖g‖²,  k = step / max(‖g‖, tiny),
        # needs no extra pass (2 sweeps, 5 reads per element, instead of 3 sweeps and 7).
        # Cancellation in that sum only matters when ‖δ + k·g‖ ≪ ‖δ‖ + α, i.e. far inside the
        # ball, where the scale min(1, ε/‖·‖) is 1 either way.
        row = tl.program_id(0).to(tl.int64) * M
        lanes = tl.arange(0, BLOCK)
        acc_gg = tl.zeros([BLOCK], dtype=tl.float32)
        acc_dg = tl.zeros([BLOCK], dtype=tl.float32)
        acc_dd = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, M, BLOCK):
            offs = start + lanes
            m = offs < M
            d = tl.load(d_ptr + row + offs, mask=m, other=0.0).to(tl.float32)
            acc_dd += d * d
            if HAS_STEP:
                g = tl.load(g_ptr + row + offs, mask=m, other=0.0).to(tl.float32)
                acc_gg += g * g
                acc_dg += d * g
        gg = tl.sum(acc_gg, axis=0)
        dg = tl.sum(acc_dg, axis=0)
        dd = tl.sum(acc_dd, axis=0)
        k = step / tl.maximum(tl.sqrt(gg), tiny)
        nn = tl.maximum(dd + 2.0 * k * dg + k * k * gg, 0.0)
        scale = tl.minimum(eps / tl.maximum(tl.sqrt(nn), tiny), 1.0)
        for start in range(0, M, BLOCK):
            offs = start + lanes
            m = offs < M
            d = tl.load(d_ptr + row + offs, mask=m, other=0.0).to(tl.float32)
            x = tl.load(x_ptr + row + offs, mask=m, other=0.0).to(tl.float32)
            if HAS_STEP:
                g = tl.load(g_ptr + row + offs, mask=m, other=0.0).to(tl.float32)
                d = d + k * g
            d = d * scale
            d = tl.minimum(tl.maximum(x + d, 0.0), 1.0) - x
            tl.store(o_ptr + row + offs, d.to(o_ptr.dtype.element_ty), mask=m)

    return {"linf": _pgd_linf_kernel, "l2": _pgd_l2_kernel}


def _dense(t: torch.Tensor) -> bool:
    """Contiguous or channels-last: the batch dim is outermost and every sample's elements form
    one contiguous block of storage, which is all the kernels need."""
    return t.is_contiguous() or (
        t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


def _launch(delta, grad, x, *, alpha, eps, norm, sign, out):
    if delta.dtype not in _TRITON_DTYPES or x.dtype not in _TRITON_DTYPES or (
            grad is not None and grad.dtype not in _TRITON_DTYPES):
        raise TypeError(f"PGD Triton kernels take {_TRITON_DTYPES}; use the *_ref functions "
                        f"for other dtypes")
    ts = [delta, x] + ([grad] if grad is not None else [])
    if not all(t.device == delta.device for t in ts):
        raise ValueError("PGD: delta, grad and x must be on one device")
    if not (all(_dense(t) for t in ts) and all(t.stride() == delta.stride() for t in ts)):
        # Mixed or strided layouts: fall back to one contiguous copy each (correct, slower).
        ts = [t.contiguous() for t in ts]
    d_, x_ = ts[0], ts[1]
    g_ = ts[2] if grad is not None else d_  # placeholder pointer, never read when HAS_STEP=False
    out_dtype = out.dtype if out is not None else delta.dtype
    if out_dtype not in _TRITON_DTYPES:
        raise TypeError(f"PGD Triton kernels write {_TRITON_DTYPES}, got out dtype {out_dtype}")
    if out is not None and out.shape != delta.shape:
        raise ValueError(f"PGD out has shape {tuple(out.shape)}, expected {tuple(delta.shape)}")
    direct = out is not None and out.stride() == d_.stride() and _dense(out)
    res = out if direct else torch.empty_like(d_, dtype=out_dtype)
    numel = d_.numel()
    if numel:
        kern = _kernels()[norm]
        step = float(sign) * float(alpha)
        if norm == "linf":
            block = 1024  # 8 elements per thread at 4 warps: enough bytes in flight per SM
            kern[(-(-numel // block),)](d_, g_, x_, res, numel, step, float(eps),
                                        HAS_STEP=grad is not None, BLOCK=block, num_warps=4)
        else:
            n = d_.shape[0]
            M = numel // n
            block = min(2048, max(128, 1 << (M - 1).bit_length()))
            kern[(n,)](d_, g_, x_, res, M, step, float(eps), _TINY,
                       HAS_STEP=grad is not None, BLOCK=block, num_warps=4)
    if out is not None and not direct:
        out.copy_(res)
        return out
    return res


def pgd_step_triton(
    delta: torch.Tensor,
    grad: torch.Tensor,
    x: torch.Tensor,
    *,
    alpha: float,
    eps: float,
    norm: str = "linf",
    sign: float = -1.0,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """:func:`pgd_step_ref` as one Triton kernel (math in float32 registers).

    ℓ∞: one flat element-wise pass (3 reads, 1 write per element). ℓ2: one program per sample
    looping over its elements twice (reductions, then the update). ``out``: write the result
    there (``out=delta`` updates in place; each element is read before it is written by the
    same program, so aliasing is safe); otherwise a new tensor of δ's dtype and layout.
    """
    _check(delta, x, grad, eps, alpha, norm)
    return _launch(delta, grad, x, alpha=alpha, eps=eps, norm=norm, sign=sign, out=out)


def project_triton(delta: torch.Tensor, x: torch.Tensor, *, eps: float, norm: str = "linf",
                   out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`project_ref` as one Triton kernel; ``out`` as in :func:`pgd_step_triton`."""
    _check(delta, x, None, eps, 0.0, norm)
    return _launch(delta, None, x, alpha=0.0, eps=eps, norm=norm, sign=0.0, out=out)


# =====================================================================================
# Dispatch
# =====================================================================================


def _triton_ok(*ts: torch.Tensor) -> bool:
    return all(t.dtype in _TRITON_DTYPES for t in ts) and use_triton(ts[0])


def pgd_step(
    delta: torch.Tensor,
    grad: torch.Tensor,
    x: torch.Tensor,
    *,
    alpha: float,
    eps: float,
    norm: str = "linf",
    sign: float = -1.0,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """δ ← Π_ε(δ + sign·α·dir(g)) with x + δ ∈ [0, 1] (see the module docstring); Triton when
    :func:`use_triton` says so (and dtypes are fp32/bf16/fp16), else the reference. ``out``
    (optional) receives the result, e.g. ``out=delta`` for an in-place update."""
    _check(delta, x, grad, eps, alpha, norm)
    if _triton_ok(delta, grad, x) and (out is None or out.dtype in _TRITON_DTYPES):
        return _launch(delta, grad, x, alpha=alpha, eps=eps, norm=norm, sign=sign, out=out)
    res = pgd_step_ref(delta, grad, x, alpha=alpha, eps=eps, norm=norm, sign=sign)
    if out is not None:
        out.copy_(res)
        return out
    return res


def project(delta: torch.Tensor, x: torch.Tensor, *, eps: float, norm: str = "linf",
            out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Projection onto the ε-ball + [0, 1] clip (random starts); dispatches like
    :func:`pgd_step`."""
    _check(delta, x, None, eps, 0.0, norm)
    if _triton_ok(delta, x) and (out is None or out.dtype in _TRITON_DTYPES):
        return _launch(delta, None, x, alpha=0.0, eps=eps, norm=norm, sign=0.0, out=out)
    res = project_ref(delta, x, eps=eps, norm=norm)
    if out is not None:
        out.copy_(res)
        return out
    return res
