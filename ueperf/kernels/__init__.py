"""Fused GPU kernels, each beside its plain-torch reference.

One file per op; each holds ``<op>_ref`` (plain torch: the specification and the CPU path),
``<op>_triton`` (a Triton kernel) and ``<op>`` (the dispatcher):

- :mod:`ueperf.kernels.augment` — training augmentation from a uint8 NHWC batch in one pass:
  zero-padded random crop → horizontal flip → colour jitter (brightness → contrast →
  saturation → hue) → random grayscale → optional normalisation, written as a float batch of
  logical shape (N, 3, H, W) in channels-last memory format.
- :mod:`ueperf.kernels.pgd` — one projected-gradient step δ ← Π_ε(δ + sign·α·dir(g)) with
  x + δ kept in [0, 1], for ℓ∞ and ℓ2 balls; used by every protection and by adversarial
  training.
- :mod:`ueperf.kernels._dispatch` — the environment switch ``UEPERF_KERNELS=auto|torch|triton``.

Layering: these modules import only torch (and :mod:`ueperf.errors`); Triton is imported lazily
inside a cached loader, so ``import ueperf.kernels.augment`` works without Triton installed.
This package file imports nothing.
"""
