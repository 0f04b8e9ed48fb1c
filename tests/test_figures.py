"""Figures name the run they show: titles from ueperf.reports.runinfo, layer-group names in the
learning-rate legend, class names in the ACM scatter, visible points for a 1-epoch run, wrapped
heat-map titles; the trainer prints its run folder first and records what the run is."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ueperf.reports import plots
from ueperf.reports.runinfo import (describe_run, read_run, register_run, run_info, run_record,
                                    run_title)

PROTECTED = {"kind": "protected", "name": "em-cifar10-0123", "classes": ["cat", "dog", "frog"],
             "source": {"clean_name": "cifar10", "clean_source": {"root": "/data/cifar"}},
             "meta": {"method": "em", "eps": 8 / 255, "norm": "linf", "granularity": "sample", "ratio": 0.4}}
CONFIG = {"name": "", "countermeasure": "st_cg", "paradigm": "pf2",
          "data": {"dataset": "/x/em-cifar10-0123"}, "model": {"name": "resnet18", "width": 0.25},
          "train": {"epochs": 12, "seed": 3}}


def test_describe_run_and_title():
    info = describe_run(CONFIG, PROTECTED, run_dir="/r/demo-2", group_names=["stem", "head"])
    assert {k: info[k] for k in ("run", "protection", "countermeasure", "paradigm", "dataset", "model",
                                 "epochs", "seed", "group_names", "classes")} == {
        "run": "demo-2", "protection": "em (8/255, sample-wise, ratio 0.4)", "countermeasure": "st_cg",
        "paradigm": "pf2", "dataset": "cifar10", "model": "resnet18 width 0.25", "epochs": 12, "seed": 3,
        "group_names": ["stem", "head"], "classes": ["cat", "dog", "frog"]}
    assert run_title(info, width=500) == ("demo-2 · protection em (8/255, sample-wise, ratio 0.4) · countermeasure st_cg · "
                               "paradigm pf2 · data cifar10 · resnet18 width 0.25 · 12 epochs · seed 3")
    assert run_title(info, epochs=1, width=500).endswith("· 1 epoch · seed 3")
    lines = run_title(info, width=40).splitlines()  # broken between parts, never inside one
    assert lines == ["demo-2", "protection em (8/255, sample-wise, ratio 0.4)", "countermeasure st_cg · paradigm pf2",
                     "data cifar10 · resnet18 width 0.25", "12 epochs · seed 3"]
    clean = describe_run(dict(CONFIG, model={"name": "vgg16", "width": 1.0}),
                         {"kind": "clean", "name": "imagefolder", "classes": ["a", "b"],
                          "source": {"root": "/d/tiny-imagenet-100.tar.gz"},
                          "meta": {"data_config": {"classes": "0:50"}}})
    assert (clean["protection"], clean["dataset"], clean["model"]) == (
        "clean", "tiny-imagenet-100 (imagefolder) (classes 0:50)", "vgg16")
    assert run_title({}) == ""


def _capture(monkeypatch):
    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, plt, path, dpi=90: figs.append(fig) or str(path))
    return figs


def test_one_epoch_curves_show_points_titles_and_group_names(tmp_path, monkeypatch):
    figs = _capture(monkeypatch)
    run = tmp_path / "demo"
    info = describe_run(CONFIG, PROTECTED, run_dir=run, group_names=["stem", "layer1", "layer2", "head"])
    register_run(run, info)
    rec = {"epoch": 1, "train_loss": 2.0, "test_loss": 2.1, "train_acc": 0.2, "test_acc": 0.25,
           "lr": [0.01, 0.01, 0.1, 0.1], "images_per_s": 500.0}
    plots.plot_training([rec], run / "curves.png")
    fig = figs[-1]
    assert fig._suptitle.get_text() == run_title(info, epochs=1, width=150)
    loss, acc, lr, speed = fig.axes
    for ax in fig.axes:  # every series of a 1-epoch run is a visible marker, not an empty line
        assert ax.lines and all(len(l.get_xdata()) == 1 and l.get_marker() not in ("None", "", None)
                                for l in ax.lines)
    assert all(list(ax.get_xticks()) == [1] and ax.get_xlim() == (0.5, 1.5) for ax in fig.axes)  # not 0.96 ... 1.04
    assert [t.get_text() for t in lr.get_legend().get_texts()] == ["stem, layer1", "layer2, head"]
    assert lr.get_legend().get_title().get_text() == "layer groups"
    # without a registered run (an old run redrawn): the given title, groups by number
    plots.plot_training([rec], tmp_path / "other" / "curves.png", title="fallback")
    fig = figs[-1]
    assert fig._suptitle.get_text() == "fallback"
    assert [t.get_text() for t in fig.axes[2].get_legend().get_texts()] == ["group 0, group 1", "group 2, group 3"]


def test_lr_legend_merges_long_runs_of_groups():
    names = ["stem"] + [f"layer{i}" for i in range(1, 9)] + ["head"]
    assert plots._lr_series([[0.1] * 10], names) == [("stem … head (10 groups)", [0.1])]


def test_acm_scatter_names_classes_and_run(tmp_path, monkeypatch):
    figs = _capture(monkeypatch)
    run = tmp_path / "r"
    info = describe_run(CONFIG, PROTECTED, run_dir=run)
    register_run(run, info)
    pts = np.arange(12, dtype=float).reshape(6, 2)
    plots.plot_acm_scatter(pts, np.array([0, 0, 1, 1, 2, 2]), run / "acm_scatter.png", title="ACM 1.5")
    ax = figs[-1].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["cat", "dog", "frog"]
    assert ax.get_title() == run_title(info, width=85) + "\nACM 1.5"
    plots.plot_acm_scatter(pts, np.array([0, 0, 1, 1, 2, 2]), tmp_path / "x" / "a.png", classes=["a", "b"])
    assert [t.get_text() for t in figs[-1].axes[0].get_legend().get_texts()] == ["a", "b", "2"]


def test_st_figure_carries_the_run_title(tmp_path, monkeypatch):
    figs = _capture(monkeypatch)
    run = tmp_path / "st"
    info = describe_run(CONFIG, PROTECTED, run_dir=run)
    register_run(run, info)
    recs = [{"epoch": 1, "train_acc": 0.3, "test_acc": 0.2, "st_v": [1.0, 1.0],
             "st_checks": [{"t": 1.0, "acm": 1.0, "accepted": True, "dv_acc": 0.3}]}]
    plots.plot_st(recs, run / "st.png", group_names=["stem", "head"], title="trigger")
    assert figs[-1]._suptitle.get_text() == run_title(info, epochs=1, width=150)


def test_heatmap_title_wraps_and_times_are_not_graded_as_accuracies(tmp_path, monkeypatch):
    figs = _capture(monkeypatch)
    title = "sweep-a: cifar10; resnet18 width 0.25, 30 epochs, paradigm fs (cifar10_resnet18); seeds 0, 1, 2: " \
            "protections × countermeasures — final clean test accuracy (%)"
    plots.plot_heatmap([[0.5, None]], ["em"], ["nt", "st"], tmp_path / "t.png", title=title, label="x (%)")
    ax = figs[-1].axes[0]
    width = int(11 * figs[-1].get_size_inches()[0])
    lines = ax.get_title().splitlines()
    assert " ".join(lines) == title and all(len(l) <= width for l in lines) and len(lines) > 1
    assert ax.images[0].get_cmap().name == "RdYlGn" and ax.images[0].get_clim() == (0, 100)
    plots.plot_heatmap([[0.05, 0.10]], ["em"], ["nt", "st"], tmp_path / "s.png", percent=False)
    im = figs[-1].axes[0].images[0]
    assert im.get_cmap().name == "Blues" and im.get_clim() == (0, pytest.approx(10.0))


def test_trainer_prints_its_folder_first_and_records_what_the_run_is(tmp_path, capsys):
    from ueperf.config import apply_overrides
    from ueperf.engine.trainer import train
    from ueperf.recipes import build
    cfg = build("synthetic_smoke")
    apply_overrides(cfg, [f"out_dir={tmp_path}", "name=one", "train.device=cpu", "train.epochs=1",
                          f"data.cache_dir={tmp_path / 'cache'}", "data.synthetic_train=128",
                          "data.synthetic_test=32", "model.width=0.0625"])
    summary = train(cfg)
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"run folder: {tmp_path / 'one'}/"
    run = summary["run"]
    assert (run["run"], run["protection"], run["countermeasure"], run["paradigm"], run["dataset"], run["model"],
            run["epochs"], run["seed"]) == ("one", "clean", "nt", "fs", "synthetic", "resnet18 width 0.0625", 1, 0)
    assert run["group_names"][0] == "stem" and run["group_names"][-1] == "head" and "classes" not in run
    assert json.loads((tmp_path / "one" / "summary.json").read_text())["run"] == run
    assert run_info(tmp_path / "one" / "curves.png")["classes"] == [f"class_{k}" for k in range(10)]
    assert run_record(tmp_path / "one") == run
    assert read_run(tmp_path / "one") == dict(run, run="one")
    assert (tmp_path / "one" / "curves.png").stat().st_size > 0
