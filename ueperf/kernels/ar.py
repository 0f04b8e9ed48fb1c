"""The autoregressive (AR) recurrence behind AP poisons (spec §2.7), beside its reference.

For every image n and channel c, with a 3×3 coefficient filter b = coeffs[n, c] whose
bottom-right entry is 0, the start signal s = start[n, c] (H_s × W_s) is overwritten in raster
order (rows i = 0..H_s−3 outer, columns j = 0..W_s−3 inner)::

    s[i+2, j+2] ← Σ_{(a,b) ≠ (2,2)} s[i+a, j+b] · b[a, b]

i.e. each entry becomes the filter's prediction from the 8 entries above and to its left in its
3×3 window (the target itself is excluded: its coefficient is the zeroed bottom-right). Entries
in the first two rows and columns keep their start values. Because the window includes the two
entries just written to the left, the scan is sequential within a plane; planes (images ×
channels) are independent. AP then crops the first rows/columns and rescales (see
:mod:`ueperf.protections.ap`).

Contents:

- ``ar_generate_ref(start, coeffs)``: plain torch, vectorised over all planes, a Python loop
  over the (H_s−2)(W_s−2) target positions. It sums the 8 products in row-major (a, b) order,
  each product rounded before it is added — the specification, and the operation order the
  C++ op reproduces bit for bit.
- ``ar_generate(start, coeffs)``: the dispatcher. It uses the C++ extension ``ueperf._C_ar``
  (``csrc/ar.cpp``: one tight double loop per plane, planes spread over threads with
  ``at::parallel_for``) when it is importable, else the reference. ``UEPERF_KERNELS=torch``
  forces the reference; ``auto`` and ``triton`` both take the C++ op (there is no Triton kernel
  for this op, see below). CUDA inputs are generated on the CPU and copied back.

Why C++ on the CPU and not a Triton kernel: the recurrence has a loop-carried dependency along
every row (each entry needs the two written just before it), so a GPU kernel would be one
program per (image, channel) making ~1,150 dependent scalar steps — Triton is built for block
parallelism, not scalar scans, and the eager torch reference on a GPU would be ~18,000 tiny
kernel launches. AP generation is also one-time and small (8 multiply-adds per entry; 50,000
CIFAR images ≈ 0.8 GFLOP): the C++ op runs ~63,000 CIFAR-size images/s on 2 CPU cores, 21×
the reference (``bench/kernels/bench_ar.py``, N = 5,000, float32; 18× in float64), so a whole
CIFAR set takes under a second — far below the cost of any training run — and generating on the
CPU keeps AP's bytes independent of the device.

Layering: this module imports only torch and the standard library; the extension is loaded
lazily with :func:`importlib.import_module`, never at import time.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import Optional

import torch

from ueperf.kernels._dispatch import kernel_mode

EXTENSION = "ueperf._C_ar"


def _check(start: torch.Tensor, coeffs: torch.Tensor) -> None:
    if start.dim() != 4:
        raise ValueError(f"ar_generate: start must be (N, C, H, W), got {tuple(start.shape)}")
    n, c = start.shape[:2]
    if tuple(coeffs.shape) != (n, c, 3, 3):
        raise ValueError(f"ar_generate: coeffs must be (N, C, 3, 3) = ({n}, {c}, 3, 3) to match start "
                         f"{tuple(start.shape)}, got {tuple(coeffs.shape)}")
    if not start.is_floating_point() or coeffs.dtype != start.dtype:
        raise TypeError(f"ar_generate: start and coeffs must be floating tensors of one dtype, got "
                        f"{start.dtype} and {coeffs.dtype}")
    # The target entry predicts itself only through a zero coefficient: a non-zero one would make
    # the recurrence read the start value under the target, which no AR process here defines.
    if coeffs.numel() and bool((coeffs[..., 2, 2] != 0).any()):
        raise ValueError("ar_generate: coeffs[..., 2, 2] (the bottom-right entry, the target's own "
                         "coefficient) must be 0")


# =====================================================================================
# Reference (plain torch)
# =====================================================================================


def ar_generate_ref(start: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """AR recurrence in plain torch (see the module docstring for the definition).

    start (N, C, H_s, W_s) float, coeffs (N, C, 3, 3) same dtype with coeffs[..., 2, 2] == 0.
    Returns a new (N, C, H_s, W_s) tensor on start's device; start is not modified.
    """
    _check(start, coeffs)
    x = start.contiguous().clone()
    h, w = x.shape[2], x.shape[3]
    k = coeffs.reshape(coeffs.shape[0], coeffs.shape[1], 9)
    taps = [(a, b) for a in range(3) for b in range(3) if (a, b) != (2, 2)]  # row-major, target excluded
    kt = [k[:, :, 3 * a + b] for a, b in taps]
    for i in range(h - 2):
        for j in range(w - 2):
            acc = x[:, :, i, j] * kt[0]
            for t in range(1, len(taps)):
                a, b = taps[t]
                acc = acc + x[:, :, i + a, j + b] * kt[t]
            x[:, :, i + 2, j + 2] = acc
    return x


# =====================================================================================
# C++ extension (csrc/ar.cpp) and dispatcher
# =====================================================================================


@functools.lru_cache(maxsize=None)
def _load_extension() -> Optional[ModuleType]:
    """The compiled ``ueperf._C_ar`` module, or None when it was not built. Cached; never raises
    for a missing or broken build (the reference then serves)."""
    try:
        return importlib.import_module(EXTENSION)
    except Exception:  # noqa: BLE001 — ImportError, or an ABI mismatch after a torch upgrade
        return None


def extension_available() -> bool:
    """True when the C++ op can be loaded (built with ``pip install --no-build-isolation -e .``)."""
    return _load_extension() is not None


def backend() -> str:
    """Which implementation :func:`ar_generate` uses now: ``"cpp"`` or ``"torch"``."""
    if kernel_mode() == "torch":
        return "torch"
    return "cpp" if extension_available() else "torch"


def ar_generate(start: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """AR recurrence: the C++ op when available (on a CPU copy for CUDA inputs), else
    :func:`ar_generate_ref`. Same contract and same result (bit-equal in float32 and float64)."""
    if backend() == "cpp":
        _check(start, coeffs)
        if start.dtype not in (torch.float32, torch.float64):
            return ar_generate_ref(start, coeffs)
        ext = _load_extension()
        out = ext.ar_generate(start.detach().cpu(), coeffs.detach().cpu())
        return out.to(start.device)
    return ar_generate_ref(start, coeffs)
