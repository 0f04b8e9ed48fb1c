"""Detection of protected data (``ueperf.detection``, ``python -m ueperf.detect``; docs/methods.md §9).

Contracts: every registered method states its reference and tagged config, returns one finite
score per training sample and one per dataset with its threshold, and is reproducible; the CLI
writes detect.json / report.md / scores.npy / scores.csv with the documented schema (detection
quality only when the store records its protected samples) and answers bad input with one clear
line. AUROC and the quality measures are checked against their definitions.

The synthetic check (``margin``): the synthetic source (10 classes, 400 training images of 16 px),
clean, and protected by the ``random`` protection with class-wise granularity at ε = 32/255 (one
fixed uniform pattern per class: a strong class-wise additive shortcut) on every image ("full")
or on a seeded half ("half"). The protection seed and the methods' seed are UEPERF_GATE_SEED.
Every registered method must put the full set's dataset score above its threshold and the clean
set's below it, and rank the half set's protected samples first (per-sample AUROC above 0.5).

Measured over seeds 0-2 × torch threads 1-2 (the rule of bench/gate_margins.py, run on this file:
``UEPERF_GATE_SEED=s OMP_NUM_THREADS=t UEPERF_MARGIN_LOG=... pytest -m margin tests/test_detect.py``;
2-core CPU, 2026-12-06). margin = distance from the bound on the passing side, spread = max − min
of the margin over the 6 runs, ratio = smallest margin / spread (the rule: >= 3):

    assertion                          values (min … max)   bound   min margin   spread   ratio
    linear_fit full score              1.0000 … 1.0000      0.667     0.333       0.000      ∞
    linear_fit clean score             0.1472 … 0.1583      0.667     0.508       0.011     46
    linear_fit half AUROC              0.9933 … 0.9998      0.5       0.493       0.007     76
    loss_dynamics full score           0.7894 … 0.7959      0.72      0.069       0.007     11
    loss_dynamics clean score          0.6523 … 0.6630      0.72      0.057       0.011    5.3
    loss_dynamics half AUROC           0.8783 … 0.9379      0.5       0.378       0.060    6.3
    iterative_filtering full score     0.9594 … 0.9743      0.5       0.459       0.015     31
    iterative_filtering clean score   -0.0287 … 0.0745      0.5       0.426       0.103    4.1
    iterative_filtering half AUROC     0.9845 … 0.9967      0.5       0.485       0.012     40

The thinnest is iterative_filtering's clean score (4.1), then loss_dynamics' clean score (5.3). The
thresholds of loss_dynamics and iterative_filtering were themselves set on this synthetic set (§9.4
says so); linear_fit's is the paper's bound. A run takes ~50 s on one thread of a loaded 2-core CPU,
most of it loss_dynamics (3 CNN runs × 8 epochs per set; with 2 threads on that loaded machine a
set took up to 265 s).
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from margins import GATE_SEED
from ueperf.detection import DETECTORS
from ueperf.detection.base import (DetectContext, Detection, auroc, check_labels, quality, resolve_config,
                                   stratified_halves)
from ueperf.errors import ConfigError, DataError

N_TRAIN, SIZE, K = 400, 16, 10
EPS = "32/255"
METHODS = DETECTORS.names()


# ───────────────────────────────────────────── data ──
@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """{"clean", "full", "half"}: the synthetic set and its class-wise-noise protected versions."""
    from ueperf.config import DataConfig
    from ueperf.data import prepare_dataset
    from ueperf.protections.runner import generate_protected
    root = tmp_path_factory.mktemp("detect")
    clean = prepare_dataset(DataConfig(dataset="synthetic", cache_dir=str(root / "cache"), synthetic_classes=K,
                                       synthetic_train=N_TRAIN, synthetic_test=20, synthetic_size=SIZE))
    out = {"clean": clean}
    for name, ratio in (("full", 1.0), ("half", 0.5)):
        out[name] = generate_protected("random", clean, overrides=["granularity=class", f"eps={EPS}"], ratio=ratio,
                                       seed=GATE_SEED, out=root / name, progress=False, cache_dir=root / "cache",
                                       grid=False)
    return out


def _truth(store) -> np.ndarray:
    from ueperf.detect import truth_of
    t = truth_of(store)
    return np.zeros(len(store.train), dtype=bool) if t is None else t


def _detect(method, store, seed=GATE_SEED, overrides=()) -> Detection:
    det, cfg = resolve_config(method, list(overrides))
    ctx = DetectContext(store.train.x, np.asarray(store.train.y), store.num_classes, cfg, seed,
                        torch.device("cpu"), progress=False)
    return det.detect(ctx)


class _Results(dict):
    """(method, set) → Detection, computed on first use and kept for the module: each test pays only
    for what it asks first (loss_dynamics, the slow one, trains 3 small CNNs per set)."""

    def __init__(self, stores):
        super().__init__()
        self.stores = stores

    def __missing__(self, key):
        method, name = key
        self[key] = _detect(method, self.stores[name])
        return self[key]


@pytest.fixture(scope="module")
def results(stores):
    return _Results(stores)


# ───────────────────────────────────────────── the synthetic check ──
@pytest.mark.margin
@pytest.mark.parametrize("method", METHODS)
def test_dataset_score_separates_protected_from_clean(method, results, margin):
    full, clean = results[(method, "full")], results[(method, "clean")]
    assert full.threshold == clean.threshold
    margin.above(f"{method} full score", full.score, full.threshold)
    margin.below(f"{method} clean score", clean.score, clean.threshold)
    assert full.verdict and not clean.verdict


@pytest.mark.margin
@pytest.mark.parametrize("method", METHODS)
def test_sample_scores_rank_protected_samples_first(method, results, stores, margin):
    truth = _truth(stores["half"])
    assert truth.sum() == N_TRAIN // 2
    q = quality(results[(method, "half")], truth)
    margin.above(f"{method} half AUROC", q["auroc"], 0.5)


# ───────────────────────────────────────────── method contract ──
@pytest.mark.parametrize("method", METHODS)
def test_registered_with_reference_and_tagged_config(method):
    from ueperf.listing import field_comments
    cls = DETECTORS.get(method)
    assert cls.name == method and cls.__doc__ and len(cls.reference) > 20
    assert any(s in cls.reference for s in ("arXiv", "NeurIPS", "ICLR", "AAAI", "ICANN"))
    cfg = cls.Config()
    notes = field_comments(cls.Config)
    for f in fields(cfg):
        assert f.name in notes, f"{method}.{f.name} has no comment"
        assert "[paper]" in notes[f.name] or "[ours]" in notes[f.name], f"{method}.{f.name}: no source tag"
    assert cfg.view in ("residual", "raw") and hasattr(cfg, "threshold")


@pytest.mark.parametrize("method", METHODS)
def test_result_contract(method, results, stores):
    n = len(stores["half"].train)
    for s in ("clean", "full", "half"):
        r = results[(method, s)]
        assert isinstance(r.score, float) and np.isfinite(r.score) and np.isfinite(r.threshold)
        assert r.sample_scores.shape == (n,) and r.sample_scores.dtype == np.float64
        assert np.isfinite(r.sample_scores).all() and np.isfinite(r.sample_threshold)
        assert r.verdict == (r.score >= r.threshold)
        assert np.array_equal(r.flags, r.sample_scores >= r.sample_threshold)
        assert r.calibration and r.score_meaning and r.sample_meaning
        json.dumps(r.details)  # JSON-able


@pytest.mark.parametrize("method", ["linear_fit", "iterative_filtering"])
def test_same_seed_same_scores(method, stores):
    a, b = _detect(method, stores["half"], seed=3), _detect(method, stores["half"], seed=3)
    assert a.score == b.score and np.array_equal(a.sample_scores, b.sample_scores)


def test_loss_dynamics_same_seed_same_scores(stores):
    over = ["runs=1", "epochs=1"]
    a, b = (_detect("loss_dynamics", stores["half"], seed=3, overrides=over) for _ in range(2))
    assert a.score == b.score and np.array_equal(a.sample_scores, b.sample_scores)


def test_iterative_filtering_rounds(results, stores):
    """Flagged = removed in a verified round; the half set stops once the protected part is out."""
    for s in ("clean", "full", "half"):
        r = results[("iterative_filtering", s)]
        rounds = r.details["rounds"]
        verified = r.details["verified_rounds"]
        assert [x["verified"] for x in rounds] == [True] * verified + [False] * (len(rounds) - verified)
        assert r.sample_threshold == r.details["config"]["rounds"] + 1 - verified
        assert r.flags.sum() == sum(x["removed"] for x in rounds[:verified])
    assert results[("iterative_filtering", "clean")].details["verified_rounds"] == 0
    assert results[("iterative_filtering", "clean")].flags.sum() == 0
    half = results[("iterative_filtering", "half")].details
    assert 0 < half["verified_rounds"] < half["config"]["rounds"]


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown detection method 'linear'.*linear_fit"):
        resolve_config("linear")
    with pytest.raises(ConfigError, match="no such config key"):
        resolve_config("linear_fit", ["stepz=3"])
    with pytest.raises(ConfigError, match="view='edges'"):
        resolve_config("linear_fit", ["view=edges"])
    with pytest.raises(ConfigError, match="steps=0"):
        resolve_config("iterative_filtering", ["steps=0"])
    with pytest.raises(ConfigError, match="remove=1"):
        resolve_config("iterative_filtering", ["remove=1"])
    with pytest.raises(ConfigError, match="unknown model 'resnet7'"):
        resolve_config("loss_dynamics", ["model=resnet7"])


# ───────────────────────────────────────────── measures ──
def test_auroc_is_the_mann_whitney_statistic():
    rng = np.random.default_rng(0)
    truth = rng.random(300) < 0.4
    scores = np.round(rng.normal(size=300) + truth, 1)  # rounding makes ties
    pos, neg = scores[truth], scores[~truth]
    expect = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (pos.size * neg.size)
    assert auroc(scores, truth) == pytest.approx(expect, abs=1e-12)
    assert auroc(scores, np.ones(300, bool)) is None and auroc(scores, np.zeros(300, bool)) is None
    assert auroc(truth.astype(float), truth) == 1.0 and auroc(-truth.astype(float), truth) == 0.0


def test_quality_counts_at_the_sample_threshold():
    scores = np.array([0.9, 0.8, 0.2, 0.7, 0.1, 0.6])
    truth = np.array([True, True, True, False, False, False])
    det = Detection(0.5, 0.4, "c", "m", scores, 0.65, "s")
    q = quality(det, truth)
    assert q["protected"] == 3 and q["clean"] == 3
    assert q["detection_rate"] == pytest.approx(2 / 3) and q["false_alarm_rate"] == pytest.approx(1 / 3)
    assert q["auroc"] == pytest.approx(auroc(scores, truth)) and q["verdict_correct"]
    q_all = quality(det, np.ones(6, bool))
    assert q_all["auroc"] is None and q_all["false_alarm_rate"] is None and q_all["detection_rate"] == 3 / 6


def test_halves_are_stratified_and_seeded():
    y = np.repeat(np.arange(5), [2, 3, 10, 11, 4])
    a = stratified_halves(y, np.random.default_rng(1))
    for k in range(5):
        n = (y == k).sum()
        assert a[y == k].sum() == n // 2
    assert np.array_equal(a, stratified_halves(y, np.random.default_rng(1)))


def test_labels_are_checked():
    with pytest.raises(DataError, match="1 class"):
        check_labels(np.zeros(10, np.int64), 3)
    with pytest.raises(DataError, match=r"class\(es\) \[2\] have fewer than 2"):
        check_labels(np.array([0, 0, 1, 1, 2]), 3)
    with pytest.raises(DataError, match="no labels"):
        check_labels(np.zeros(0, np.int64), 3)
    with pytest.raises(DataError, match="span"):
        check_labels(np.array([0, 1, 5, 5]), 3)


# ───────────────────────────────────────────── the CLI ──
def _main(argv):
    from ueperf.detect import main
    return main([str(a) for a in argv])


CHEAP = ["--method", "linear_fit", "--method", "iterative_filtering", "--quiet"]


def test_cli_outputs_and_their_schema(stores, tmp_path, capsys):
    out = tmp_path / "rep"
    store = stores["half"]
    assert _main(["--dataset", store.path, *CHEAP, "--seed", GATE_SEED, "--out", out]) == 0
    stdout = capsys.readouterr().out
    assert json.loads(stdout.splitlines()[0])["out"] == str(out)
    assert sorted(p.name for p in out.iterdir()) == ["detect.json", "report.md", "scores.csv", "scores.npy"]
    rec = json.loads((out / "detect.json").read_text())
    assert rec["scores_columns"] == ["linear_fit", "iterative_filtering"] == list(rec["methods"])
    ds = rec["dataset"]
    assert ds["kind"] == "protected" and ds["truth_known"] and ds["train_images"] == N_TRAIN
    assert ds["protection"]["method"] == "random" and ds["protection"]["ratio"] == 0.5
    assert ds["protection"]["protected_count"] == N_TRAIN // 2 and rec["seed"] == GATE_SEED
    for name, m in rec["methods"].items():
        for key in ("reference", "dataset_score", "threshold", "protected", "verdict", "calibration", "score_meaning",
                    "sample_threshold", "sample_meaning", "flagged", "flagged_fraction", "quality", "details",
                    "config", "time_s"):
            assert key in m, (name, key)
        assert m["verdict"] == ("protected" if m["dataset_score"] >= m["threshold"] else "not protected")
        assert set(m["quality"]) >= {"auroc", "detection_rate", "false_alarm_rate", "protected", "clean"}
        assert m["quality"]["protected"] == N_TRAIN // 2
    scores = np.load(out / "scores.npy")
    assert scores.shape == (N_TRAIN, 2) and scores.dtype == np.float64
    direct = _detect("linear_fit", store)
    assert np.array_equal(scores[:, 0], direct.sample_scores)  # the CLI runs the library, nothing else
    assert rec["methods"]["linear_fit"]["dataset_score"] == direct.score
    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["index", "label", "protected", "linear_fit_score", "linear_fit_flag",
                             "iterative_filtering_score", "iterative_filtering_flag"]
    assert len(rows) == N_TRAIN
    truth = _truth(store)
    assert [int(r["protected"]) for r in rows] == truth.astype(int).tolist()
    assert [int(r["label"]) for r in rows] == np.asarray(store.train.y).tolist()
    assert np.allclose([float(r["linear_fit_score"]) for r in rows], scores[:, 0], rtol=0, atol=0)
    flags = np.array([int(r["iterative_filtering_flag"]) for r in rows])
    assert flags.sum() == rec["methods"]["iterative_filtering"]["flagged"]
    md = (out / "report.md").read_text()
    assert "| method | dataset score | threshold | verdict | flagged | AUROC | detection rate | false alarms |" in md
    assert "## linear_fit" in md and "arXiv 2312.08898" in md and "200/400 samples protected" in md


def test_cli_on_a_source_reports_scores_only(tmp_path, capsys):
    """A source name (built into a clean store) has no record of protection: scores, no quality."""
    out = tmp_path / "rep"
    argv = ["--dataset", "synthetic", "--data", "synthetic_train=120", "--data", "synthetic_test=10", "--data",
            "synthetic_size=16", "--data", "synthetic_classes=4", "--cache-dir", tmp_path / "cache", "--out", out,
            "--method", "loss_dynamics", "--set", "loss_dynamics.runs=1", "--set", "loss_dynamics.epochs=1", "--quiet"]
    assert _main(argv) == 0
    assert "truth unknown" in capsys.readouterr().out
    rec = json.loads((out / "detect.json").read_text())
    assert rec["dataset"]["kind"] == "clean" and not rec["dataset"]["truth_known"]
    assert rec["dataset"]["protection"] is None
    m = rec["methods"]["loss_dynamics"]
    assert m["quality"] is None and m["config"]["runs"] == 1 and m["config"]["epochs"] == 1
    with open(out / "scores.csv") as f:
        assert {r["protected"] for r in csv.DictReader(f)} == {""}
    md = (out / "report.md").read_text()
    assert "Truth: unknown" in md and "| method | dataset score | threshold | verdict | flagged | time |" in md
    # an existing report is replaced only with --overwrite
    with pytest.raises(DataError, match="already exists"):
        _main(argv)
    assert _main(argv + ["--overwrite"]) == 0


def test_list(capsys):
    assert _main(["--list"]) == 0
    text = capsys.readouterr().out
    for m in METHODS:
        assert m in text
    assert text.count("reference:") == len(METHODS)
    assert _main(["--list", "keys", "--method", "iterative_filtering"]) == 0
    keys = capsys.readouterr().out
    assert "remove" in keys and "fraction" in keys and "[ours]" in keys


def _one_class_store(tmp_path):
    from ueperf.data.store import write_store
    x = np.zeros((8, 8, 8, 3), np.uint8)
    return write_store(tmp_path / "one", train=(x, np.zeros(8, np.int64)), test=(x[:2], np.zeros(2, np.int64)),
                       classes=["a", "b"]).path


@pytest.mark.parametrize("args, needle", [
    (["--method", "linear"], "unknown detection method 'linear'. Did you mean 'linear_fit'? Known detection methods: "
                             "iterative_filtering, linear_fit, loss_dynamics"),
    (["--set", "steps=3"], "expected METHOD.KEY=VALUE"),
    (["--method", "linear_fit", "--set", "loss_dynamics.epochs=3"], "method 'loss_dynamics' is not run"),
    (["--set", "linear_fit.stepz=3"], "no such config key. Did you mean 'steps'"),
    (["--set", "iterative_filtering.remove=2"], "remove=2.0"),
    (["--seed", "-1"], "--seed -1: must be >= 0"),
    (["--dataset", "/nonexistent/store"], "no store at /nonexistent/store"),
    (["--dataset", "ONE_CLASS"], "labels of 1 class(es) only"),
    ([], "--dataset is required"),
])
def test_bad_input_is_one_clear_line(args, needle, tmp_path, capsys):
    from ueperf.cli import run_cli
    from ueperf.detect import main
    args = [str(_one_class_store(tmp_path)) if a == "ONE_CLASS" else a for a in args]
    if "--dataset" not in args and args:
        args += ["--dataset", "synthetic"]
    argv = args + ["--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "rep"), "--quiet"]
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: main(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "rep").exists()  # nothing written


def test_module_entry_point_exit_code(tmp_path):
    """``python -m ueperf.detect`` as a process: a user error is exit status 2 and one line, no traceback."""
    r = subprocess.run([sys.executable, "-m", "ueperf.detect", "--dataset", str(tmp_path / "missing"), "--quiet"],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert r.returncode == 2 and "no store at" in r.stderr and "Traceback" not in r.stderr, r.stderr
