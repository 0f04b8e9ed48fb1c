"""PNG plots of training runs (matplotlib, Agg backend, imported lazily).

Every figure written into a run folder is titled with the run it shows (protection,
countermeasure, paradigm, data, model, epochs, seed: :mod:`ueperf.reports.runinfo`), whoever
draws it; a panel with a single epoch still shows its points (every series has markers)."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _run_title(path: os.PathLike, recs: Sequence[Dict[str, Any]], fallback: str = "", width: int = 150) -> str:
    """The registered run's title (epochs = the last epoch shown), else ``fallback``."""
    from .runinfo import run_info, run_title
    info = run_info(path)
    last = max((r["epoch"] for r in recs if isinstance(r.get("epoch"), int)), default=None)
    return run_title(info, epochs=last, width=width) if info else fallback


def epoch_axis(ax, epochs: Sequence[float]) -> None:
    """Whole-epoch ticks; a single epoch sits in the middle of a one-epoch-wide axis (matplotlib
    would otherwise label 0.96 ... 1.04)."""
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if epochs and max(epochs) - min(epochs) < 1:
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.set_xticks(sorted(set(epochs)))


def _lr_series(lrs: Sequence[Sequence[float]], names: Sequence[str]) -> List[tuple]:
    """Per-group lr series merged where equal: ``[(label, series)]`` with the layer-group names of
    each distinct series ("stem … head (6 groups)" for a long run of names)."""
    n = max((len(l) for l in lrs), default=0)
    names = list(names) if len(names) == n else [f"group {g}" for g in range(n)]
    series: Dict[tuple, List[str]] = {}
    for g in range(n):
        series.setdefault(tuple(l[g] if g < len(l) else None for l in lrs), []).append(names[g])
    out = []
    for ys, who in series.items():
        label = ", ".join(who) if len(who) <= 3 else f"{who[0]} … {who[-1]} ({len(who)} groups)"
        out.append((label, list(ys)))
    return out


def plot_training(records: Sequence[Dict[str, Any]], path: os.PathLike, title: str = "",
                  group_names: Sequence[str] = ()) -> str:
    """Training curves: loss, train/test accuracy, learning rate and throughput per epoch.

    Epochs flagged ``"rejected": true`` (rolled back by a countermeasure) are marked with a red x.
    The learning-rate legend names the layer groups (``group_names``, default: the registered
    run's), one line per distinct schedule. ``title`` is used when no run is registered.
    """
    from .runinfo import run_info
    plt = _plt()
    recs = [r for r in records if "epoch" in r]
    ep = [r["epoch"] for r in recs]
    group_names = list(group_names) or run_info(path).get("group_names", [])
    title = _run_title(path, recs, title)
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.4 + 0.25 * title.count("\n")))
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
        lines = _lr_series(lrs, group_names)
        for i, (label, ys) in enumerate(lines):
            ax.plot(ep, ys, "-o", ms=3, lw=1, label=label if i < 8 else None)
        ax.legend(fontsize=7, title="layer groups" if len(lines) > 1 else None, title_fontsize=7)
    ax.set_xlabel("epoch"); ax.set_ylabel("learning rate (end of epoch)"); ax.set_title("learning rate")
    ax = axes[3]
    ax.plot(ep, [r.get("images_per_s") for r in recs], "-o", ms=3)
    ax.set_xlabel("epoch"); ax.set_ylabel("images / s (training)"); ax.set_title("throughput")
    for ax in axes:
        epoch_axis(ax, ep)
    if title:
        fig.suptitle(title, fontsize=10)
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
    run = _run_title(path, recs)
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.4 + 0.25 * (run.count("\n") + 1) * bool(run)))
    if run:
        fig.suptitle(run, fontsize=10)
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


def plot_acm_scatter(points, labels, path: os.PathLike, title: str = "",
                     classes: Optional[Sequence[str]] = None) -> str:
    """2-D scatter of embedded penultimate activations (t-SNE or PCA), coloured by class; the
    legend names the classes (``classes[label]``, default: the registered run's class names)."""
    import numpy as np
    from .runinfo import run_info
    plt = _plt()
    info = run_info(path)
    names = list(classes) if classes is not None else info.get("classes") or []
    run = _run_title(path, [], width=85)
    labels = np.asarray(labels)
    ks = [int(k) for k in np.unique(labels)]
    cmap = plt.get_cmap("tab10" if max(ks, default=0) < 10 else "tab20")
    fig, ax = plt.subplots(figsize=(7.5, 6 + 0.2 * run.count("\n")))
    for i, k in enumerate(ks):
        sel = labels == k
        name = names[k] if k < len(names) else str(k)
        ax.scatter(points[sel, 0], points[sel, 1], color=cmap(i % cmap.N), s=6, alpha=0.8,
                   label=name if len(ks) <= 20 else None)
    if len(ks) <= 20:
        ax.legend(title="class", fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=2)
    ax.set_xticks([]); ax.set_yticks([])
    ax.set_title(f"{run}\n{title}" if run and title else (run or title), fontsize=9)
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_heatmap(values, rows: Sequence[str], cols: Sequence[str], path: os.PathLike, title: str = "",
                 label: str = "", stds=None, percent: bool = True, scale: float = 100.0, digits: int = 1) -> str:
    """A table as a heat map: values[i][j] (None = missing) shown × ``scale`` with ``digits``
    decimals (the default: fractions in [0, 1] as percent), annotated ``mean±std`` where ``stds``
    gives a std over seeds. ``percent``: colours span 0-100 %, red to green (accuracies); else they
    span the values shown (times, speeds: no good or bad end)."""
    import numpy as np
    plt = _plt()
    a = np.array([[np.nan if v is None else scale * v for v in row] for row in values], dtype=float)
    sd = np.array([[np.nan if v is None else scale * v for v in row] for row in stds], dtype=float) \
        if stds is not None else np.full_like(a, np.nan)
    fig, ax = plt.subplots(figsize=(1.5 * len(cols) + 3, 0.45 * len(rows) + 1.8))
    if percent:
        im = ax.imshow(a, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    else:
        im = ax.imshow(a, cmap="Blues", vmin=0, vmax=max(float(np.nanmax(a)) if np.isfinite(a).any() else 1.0, 1e-9),
                       aspect="auto")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows)
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            txt = "–" if np.isnan(a[i, j]) else f"{a[i, j]:.{digits}f}" + ("" if np.isnan(sd[i, j]) else f"±{sd[i, j]:.{digits}f}")
            ax.text(j, i, txt, ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label=label)
    if title:  # wrapped to the figure's width (about 11 characters per inch at this size)
        import textwrap
        ax.set_title("\n".join(textwrap.wrap(title, width=int(11 * fig.get_size_inches()[0]))), fontsize=10)
    fig.tight_layout()
    return _save(fig, plt, path)
