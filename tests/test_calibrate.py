"""``python -m ueperf.calibrate`` (spec §4.7) and ``data.test_holdout``: the held-out images are
2 per class, fixed, never part of the reported test set; the choice is the best held-out score."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ueperf.calibrate import main
from ueperf.data.holdout import holdout_indices, split_holdout
from ueperf.errors import ConfigError


def test_holdout_two_per_class_fixed_and_disjoint():
    y = np.repeat(np.arange(10), 50)
    idx = holdout_indices(y, 20)
    assert len(idx) == 20 and all((y[idx] == c).sum() == 2 for c in range(10))
    assert np.array_equal(idx, holdout_indices(y, 20))                      # same images every run
    x = np.arange(500)[:, None]
    xr, yr, xh, yh = split_holdout(x, y, 20)
    assert len(xr) == 480 and not set(xh[:, 0]) & set(xr[:, 0])
    many = np.repeat(np.arange(100), 5)                                      # more classes than images
    assert len(np.unique(holdout_indices(many, 20))) == 20
    with pytest.raises(ConfigError, match="test_holdout"):
        holdout_indices(y, 500)


def test_calibrate_runs_the_grid_and_picks_the_best_held_out_score(tmp_path, capsys):
    sets = ["--set", f"out_dir={tmp_path}", "--set", "train.epochs=2", "--set", "train.progress=false",
            "--set", "acm.subset=100", "--set", "train.threads=1", "--set", "st.warmup_epochs=0",
            "--set", "st.warmup_steps=0", "--set", "st.check_every=1000000"]
    assert main(["--recipe", "synthetic_smoke", "--grid", "st.tau=1e-9,1e9", "--grid", "st.alpha=0.5",
                 "--name", "cal", *sets]) == 0
    doc = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert [r["point"] for r in doc["runs"]] == [{"st.tau": "1e-9", "st.alpha": "0.5"},
                                                 {"st.tau": "1e9", "st.alpha": "0.5"}]
    best = max(doc["runs"], key=lambda r: (r["holdout_acc"], -r["holdout_loss"]))
    assert doc["choice"] == best["point"] and doc["set"].startswith("--set st.tau=")
    assert doc["runs"][0]["rejections"] == 2 and doc["runs"][1]["rejections"] == 0
    for r in doc["runs"]:   # the 20 held-out images are not in any run's reported test set
        recs = [json.loads(l) for l in open(f"{r['run_dir']}/records.jsonl")]
        assert recs[-1]["test_images"] == 128 - 20
    assert "Choice:" in (tmp_path / "cal" / "calibration.md").read_text()


def test_calibrate_bad_grid_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="--grid"):
        main(["--recipe", "synthetic_smoke", "--grid", "st.tau", "--set", f"out_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="st.alpha"):
        main(["--recipe", "synthetic_smoke", "--grid", "st.alpha=fast", "--set", f"out_dir={tmp_path}"])
