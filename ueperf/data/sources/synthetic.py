"""Synthetic, learnable, class-dependent images (no files, fully deterministic).

Class k has a base colour ``c_k`` in [0.2, 0.8]^3, a plane wave with integer frequencies
``(fx_k, fy_k)`` in 1..4 cycles per image and a colour direction ``w_k`` (unit vector). Sample i
of class k, at pixel (u, v) in [0, 1)^2, channel ch::

    x_i(u, v, ch) = clip(c_k[ch] + 0.25 · w_k[ch] · sin(2π(fx_k·u + fy_k·v) + φ_i) + 0.08 · n, 0, 1)

with a random phase φ_i ~ U[0, 2π) and pixel noise n ~ N(0, 1), quantised to uint8. A model
can learn the classes from colour and frequency; the phase and noise keep it from memorising
a single template. Labels are class-balanced (i mod K, shuffled). Seeds are fixed: the same
config always gives the same bytes.
"""
from __future__ import annotations

import numpy as np

from ...config import DataConfig
from ...errors import ConfigError
from . import RawData, finalize, register_source

_SEED = 0x5EED  # fixed: the synthetic set is a function of its config only
_CHUNK = 4096   # images generated per step: bounds float32 temporaries to ~50 MB at 32 px


def _templates(k: int, size: int):
    rng = np.random.default_rng([_SEED, k, size])
    base = rng.uniform(0.2, 0.8, size=(k, 3)).astype(np.float32)
    freq = rng.integers(1, 5, size=(k, 2)).astype(np.float32)
    w = rng.normal(size=(k, 3)).astype(np.float32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    return base, freq, w


def generate(n: int, k: int, size: int, split: int) -> tuple:
    """``n`` images (n, size, size, 3) uint8 and labels (n,) int64 of split 0 (train) / 1 (test)."""
    base, freq, w = _templates(k, size)
    rng = np.random.default_rng([_SEED, k, size, split])
    y = rng.permutation(np.arange(n) % k).astype(np.int64)
    x = np.empty((n, size, size, 3), dtype=np.uint8)
    coord = np.arange(size, dtype=np.float32) / size
    u, v = coord[None, None, :], coord[None, :, None]  # u along width, v along height
    for s in range(0, n, _CHUNK):
        yc = y[s:s + _CHUNK]
        m = yc.shape[0]
        phase = rng.uniform(0, 2 * np.pi, size=(m, 1, 1)).astype(np.float32)
        wave = np.sin(2 * np.pi * (freq[yc, 0, None, None] * u + freq[yc, 1, None, None] * v) + phase)
        img = base[yc, None, None, :] + 0.25 * wave[..., None] * w[yc, None, None, :]
        img += 0.08 * rng.standard_normal(size=(m, size, size, 3), dtype=np.float32)
        x[s:s + m] = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return x, y


@register_source("synthetic", key_fields=("synthetic_classes", "synthetic_train", "synthetic_test",
                                          "synthetic_size"))
def synthetic(cfg: DataConfig) -> RawData:
    """Procedurally generated images (a colour and a wave pattern per class, plus noise); no download.

    ``synthetic_train`` + ``synthetic_test`` images of ``synthetic_size`` px in ``synthetic_classes``."""
    k, size = cfg.synthetic_classes, cfg.synthetic_size
    if k < 2:
        raise ConfigError(f"data.synthetic_classes={k}: need at least 2 classes")
    if size < 4:
        raise ConfigError(f"data.synthetic_size={size}: need at least 4 pixels per side")
    if cfg.synthetic_train < 1 or cfg.synthetic_test < 1:
        raise ConfigError(f"data.synthetic_train={cfg.synthetic_train}, data.synthetic_test="
                          f"{cfg.synthetic_test}: both must be at least 1")
    tx, ty = generate(cfg.synthetic_train, k, size, 0)
    ex, ey = generate(cfg.synthetic_test, k, size, 1)
    info = {"description": f"synthetic: {k} classes of colour + plane-wave patterns with noise, "
                           f"{size}x{size} px (ueperf.data.sources.synthetic, seed {_SEED})",
            "source": "synthetic", "seed": _SEED}
    return finalize(RawData(tx, ty, ex, ey, [f"class_{i}" for i in range(k)], info), cfg, "synthetic")
