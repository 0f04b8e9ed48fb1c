"""PNG plots of training runs (matplotlib, Agg backend, imported lazily)."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence


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
    tr = [(r["epoch"], 100 * r["train_acc"]) for r in recs if r.get("train_acc") is not None]
    if tr:
        ax.plot(*zip(*tr), "-o", ms=3, label="train (augmented)")
    te = [(r["epoch"], 100 * r["test_acc"]) for r in recs if r.get("test_acc") is not None]
    if te:
        ax.plot(*zip(*te), "-s", ms=3, label="clean test")
    rej = [(r["epoch"], 100 * r["train_acc"]) for r in recs if r.get("rejected") and r.get("train_acc") is not None]
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
    return _save(fig, plt, path)


def _save(fig, plt, path: os.PathLike, dpi: int = 90) -> str:
    from ..files import atomic_write
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi), suffix=".png")
    finally:
        plt.close(fig)
    return os.fspath(path)


def plot_st(records: Sequence[Dict[str, Any]], path: os.PathLike, threshold: Optional[float] = None,
            group_names: Sequence[str] = (), initial: Optional[Dict[str, Any]] = None, title: str = "") -> str:
    """Staged training at a glance, on a fractional-epoch axis: (1) the running training accuracy,
    the D_v accuracy and clean test accuracy of the kept model, and the clean test accuracy of each
    rejected check's weights (red ×); (2) ACM at every check, accepted (dots) and rejected (red ×,
    with a grey line back to the point it rolled back to), the threshold τ for the absolute
    trigger, the fine-tune phase shaded; (3) the per-group lr multipliers v as a heat map (rows =
    layer groups shallow → deep, columns = epochs; 0 = frozen). A run that never rolled back says
    so in the ACM panel."""
    plt = _plt()
    recs = [r for r in records if "epoch" in r]
    checks = ([dict(initial)] if initial else []) + [c for r in recs for c in r.get("st_checks", [])]
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.4))
    ft = [r["epoch"] for r in recs if r.get("phase") == "finetune"]
    ax = axes[0]
    tr = [(r["epoch"], 100 * r["train_acc"]) for r in recs if r.get("train_acc") is not None]
    if tr:
        ax.plot(*zip(*tr), "-o", ms=3, color="0.6", label="train (running, augmented; may include rejected steps)")
    kept = [(c["t"], 100 * c["dv_acc"]) for c in checks if c.get("accepted") and c.get("dv_acc") is not None]
    if kept:
        ax.plot(*zip(*kept), ".", ms=4, color="tab:blue", label="D_v accuracy of accepted checks")
    te = [(r["epoch"], 100 * r["test_acc"]) for r in recs if r.get("test_acc") is not None]
    if te:
        ax.plot(*zip(*te), "-s", ms=3, color="tab:green", label="clean test (kept model)")
    rj = [(c["t"], 100 * c["test_acc_rejected"]) for c in checks if c.get("test_acc_rejected") is not None]
    rj += [(r["epoch"], 100 * r["test_acc_rejected"]) for r in recs if r.get("test_acc_rejected") is not None]
    if rj:
        ax.plot(*zip(*rj), "rx", ms=8, label="clean test of rejected weights")
    if ft:
        ax.axvspan(min(ft) - 1, max(ft), color="0.92", label="fine-tune (ST-Full step 2)")
    ax.set_xlabel("epoch"); ax.set_ylabel("accuracy (%)"); ax.set_ylim(0, 100)
    ax.set_title("accuracy"); ax.legend(fontsize=7)
    ax = axes[1]
    ok = [(c["t"], c["acm"]) for c in checks if c.get("accepted")]
    if ok:
        ax.plot(*zip(*ok), "-o", ms=3, label="ACM on D_v (accepted check)")
    bad = [c for c in checks if not c.get("accepted", True)]
    for c in bad:
        back = next((k for k in reversed(checks) if k.get("accepted") and k["t"] == c.get("rolled_back_to")), None)
        if back is not None:
            ax.plot([c["t"], back["t"]], [c["acm"], back["acm"]], color="0.75", lw=0.8, zorder=1)
    if bad:
        ax.plot([c["t"] for c in bad], [c["acm"] for c in bad], "rx", ms=8, label=f"rejected ({len(bad)}): rolled back")
    elif checks:
        ax.text(0.5, 0.92, "ST never rolled back", transform=ax.transAxes, ha="center", color="tab:red", fontsize=9)
    if threshold is not None:
        ax.axhline(threshold, color="r", ls="--", lw=1, label=f"threshold τ = {threshold:g}")
    if ft:
        ax.axvspan(min(ft) - 1, max(ft), color="0.92")
    ax.set_xlabel("epoch"); ax.set_ylabel("ACM"); ax.set_title(title or "activation cluster measurement", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[2]
    vs = [(r["epoch"], r["st_v"]) for r in recs if r.get("st_v")]
    if vs:
        import numpy as np
        ep, v = zip(*vs)
        im = ax.imshow(np.array(v, dtype=float).T, aspect="auto", origin="lower", cmap="viridis",
                       vmin=0, vmax=1, extent=(ep[0] - 0.5, ep[-1] + 0.5, -0.5, len(v[0]) - 0.5))
        fig.colorbar(im, ax=ax, label="lr multiplier v")
        if group_names and len(group_names) == len(v[0]) and len(group_names) <= 20:
            ax.set_yticks(range(len(group_names)))
            ax.set_yticklabels(group_names, fontsize=7)
    ax.set_xlabel("epoch (end)"); ax.set_ylabel("layer group (shallow → deep)")
    ax.set_title("per-group lr multipliers")
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_acm_scatter(points, labels, path: os.PathLike, title: str = "") -> str:
    """2-D scatter of embedded penultimate activations (t-SNE or PCA), coloured by class."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    sc = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10" if labels.max() < 10 else "tab20",
                    s=6, alpha=0.8)
    ax.legend(*sc.legend_elements(), title="class", fontsize=7, loc="best", markerscale=0.8)
    ax.set_xticks([]); ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_heatmap(values, rows: Sequence[str], cols: Sequence[str], path: os.PathLike, title: str = "",
                 label: str = "", stds=None) -> str:
    """A table as a heat map: values[i][j] in [0, 1] (None = missing), annotated in percent
    (``mean±std`` where ``stds`` gives a std over seeds)."""
    import numpy as np
    plt = _plt()
    a = np.array([[np.nan if v is None else 100 * v for v in row] for row in values], dtype=float)
    sd = np.array([[np.nan if v is None else 100 * v for v in row] for row in stds], dtype=float) \
        if stds is not None else np.full_like(a, np.nan)
    fig, ax = plt.subplots(figsize=(1.5 * len(cols) + 3, 0.45 * len(rows) + 1.8))
    im = ax.imshow(a, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows)
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            txt = "–" if np.isnan(a[i, j]) else f"{a[i, j]:.1f}" + ("" if np.isnan(sd[i, j]) else f"±{sd[i, j]:.1f}")
            ax.text(j, i, txt, ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label=label)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, plt, path)
