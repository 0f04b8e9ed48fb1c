"""A picture of a protection: clean images, their (amplified) perturbation, and the protected images.

::

    clean        ▢ ▢ ▢ ▢ ▢ ▢ ▢ ▢      one sample per class where possible (class names on top)
    δ × A        ▢ ▢ ▢ ▢ ▢ ▢ ▢ ▢      0.5 + A·(x' − x)/255, clipped to [0, 1]: grey = unchanged
    protected    ▢ ▢ ▢ ▢ ▢ ▢ ▢ ▢

The amplification A defaults to 127.5 / max|x' − x| over the shown samples, so the largest
change reaches black or white whatever ε is; the figure states A and that maximum.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence

import numpy as np


def pick_samples(n: int, labels: Optional[np.ndarray] = None, candidates: Optional[np.ndarray] = None) -> List[int]:
    """Up to ``n`` sample indices: one per class (lowest label first, first candidate of each),
    then the remaining candidates in order. ``candidates`` (e.g. the protected subset) default to
    every sample; without labels the first ``n`` candidates."""
    if labels is None and candidates is None:
        raise ValueError("pick_samples needs labels or candidates")
    cand = np.arange(len(labels)) if candidates is None else np.asarray(candidates, dtype=np.int64)
    if labels is None:
        return [int(i) for i in cand[:n]]
    lab = np.asarray(labels)[cand]
    out: List[int] = []
    for k in np.unique(lab):
        if len(out) == n:
            break
        out.append(int(cand[np.argmax(lab == k)]))
    taken = set(out)
    for i in cand:
        if len(out) >= n:
            break
        if int(i) not in taken:
            out.append(int(i))
            taken.add(int(i))
    return out


def save_grid(clean_u8: np.ndarray, prot_u8: np.ndarray, path: os.PathLike, n: int = 8, *,
              amplify: Optional[float] = None, labels: Optional[np.ndarray] = None,
              classes: Optional[Sequence[str]] = None, indices: Optional[np.ndarray] = None,
              title: str = "") -> float:
    """Write the PNG described in the module docstring; returns the amplification used.

    clean_u8, prot_u8: (N, H, W, 3) uint8 (memmaps fine; only the shown rows are read).
    labels/classes: to pick one sample per class and name the columns. indices: samples to choose
    from (default: all; pass the protected subset of a partial protection). The write is atomic.
    """
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    sel = pick_samples(n, labels, indices if indices is not None else np.arange(clean_u8.shape[0]))
    if not sel:
        raise ValueError("save_grid: no samples to show")
    a = np.asarray(clean_u8[sel], dtype=np.float32)
    b = np.asarray(prot_u8[sel], dtype=np.float32)
    d = b - a
    peak = float(np.abs(d).max())
    amp = float(amplify) if amplify is not None else (127.5 / peak if peak > 0 else 1.0)
    rows = [("clean", a / 255), (f"δ × {amp:.3g}", np.clip(0.5 + amp * d / 255, 0, 1)), ("protected", b / 255)]
    m = len(sel)
    fig, axes = plt.subplots(3, m, figsize=(1.25 * m + 0.9, 4.4), squeeze=False)
    for r, (name, imgs) in enumerate(rows):
        for c in range(m):
            ax = axes[r][c]
            ax.imshow(imgs[c], interpolation="nearest", vmin=0, vmax=1)
            ax.set_xticks([]); ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
            if r == 0:
                lab = ""
                if labels is not None:
                    k = int(np.asarray(labels)[sel[c]])
                    lab = classes[k] if classes is not None and k < len(classes) else str(k)
                ax.set_title(f"{lab}\n#{sel[c]}" if lab else f"#{sel[c]}", fontsize=8)
    sub = f"max |x'−x| shown = {peak:.0f}/255; grey = unchanged"
    fig.suptitle(f"{title}\n{sub}" if title else sub, fontsize=9)
    fig.tight_layout()
    from .plots import _save
    _save(fig, plt, path, dpi=100)
    return amp


__all__ = ["save_grid", "pick_samples"]
