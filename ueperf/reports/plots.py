"""PNG plots of training runs (matplotlib, Agg backend, imported lazily)."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Sequence


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def plot_training(records: Sequence[Dict[str, Any]], path: os.PathLike, title: str = "") -> str:
    """Training curves: loss, train/test accuracy, learning rate and throughput per epoch.

    Epochs flagged ``"rejected": true`` (rolled back by a countermeasure) are marked with a red x.
    """
    plt = _plt()
    recs = [r for r in records if "epoch" in r]
    ep = [r["epoch"] for r in recs]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    ax = axes[0]
    ax.plot(ep, [r.get("train_loss") for r in recs], "-o", ms=3, label="train loss")
    if any(r.get("test_loss") is not None for r in recs):
        te = [(r["epoch"], r["test_loss"]) for r in recs if r.get("test_loss") is not None]
        ax.plot(*zip(*te), "-s", ms=3, label="clean test loss")
    ax.set_xlabel("epoch"); ax.set_ylabel("loss"); ax.set_title("loss"); ax.legend()
    ax = axes[1]
    ax.plot(ep, [100 * r.get("train_acc", 0) for r in recs], "-o", ms=3, label="train (augmented)")
    te = [(r["epoch"], 100 * r["test_acc"]) for r in recs if r.get("test_acc") is not None]
    if te:
        ax.plot(*zip(*te), "-s", ms=3, label="clean test")
    rej = [(r["epoch"], 100 * r.get("train_acc", 0)) for r in recs if r.get("rejected")]
    if rej:
        ax.plot(*zip(*rej), "rx", ms=9, label="rejected epoch")
    ax.set_xlabel("epoch"); ax.set_ylabel("accuracy (%)"); ax.set_ylim(0, 100)
    ax.set_title("accuracy"); ax.legend()
    ax = axes[2]
    lrs = [r.get("lr", []) for r in recs]
    if lrs and isinstance(lrs[0], list) and lrs[0]:
        n = len(lrs[0])
        for g in range(n):
            ax.plot(ep, [l[g] if g < len(l) else None for l in lrs], lw=1,
                    label=f"group {g}" if n <= 12 and g in (0, n - 1) else None)
        if n > 1:
            ax.legend()
    ax.set_xlabel("epoch"); ax.set_ylabel("learning rate (end of epoch)"); ax.set_title("learning rate")
    ax = axes[3]
    ax.plot(ep, [r.get("images_per_s") for r in recs], "-o", ms=3)
    ax.set_xlabel("epoch"); ax.set_ylabel("images / s (training)"); ax.set_title("throughput")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = os.fspath(path)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return path
