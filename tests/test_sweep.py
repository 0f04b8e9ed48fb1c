"""``python -m ueperf.sweep``: protections × countermeasures → a table of clean test accuracy;
cells are ordinary run folders, reused when finished, so a rerun continues a sweep."""
from __future__ import annotations

import json

import pytest

from ueperf.errors import ConfigError
from ueperf.sweep import main

BASE = ["--dataset", "synthetic", "--data", "synthetic_train=256", "--data", "synthetic_test=64",
        "--recipe", "synthetic_smoke", "--set", "train.epochs=1", "--set", "train.threads=1", "--quiet"]


def test_sweep_writes_the_table_and_reuses_finished_cells(tmp_path, capsys):
    args = BASE + ["--protections", "clean,random", "--countermeasures", "nt,nt_cg",
                   "--set", f"data.cache_dir={tmp_path / 'cache'}", "--out", str(tmp_path / "sw")]
    assert main(args) == 0
    out = tmp_path / "sw"
    doc = json.loads((out / "table.json").read_text())
    assert doc["rows"] == ["clean", "random"] and doc["columns"] == ["nt", "nt_cg"]
    assert all(0 <= doc["cells"][r][c] <= 1 for r in doc["rows"] for c in doc["columns"])
    md = (out / "table.md").read_text()
    assert "| clean |" in md and "| random |" in md and "python -m ueperf.sweep" in md
    assert (out / "table.csv").read_text().startswith("protection,nt,nt_cg")
    assert (out / "table.png").stat().st_size > 0
    cfg = json.loads((out / "runs" / "random__nt_cg" / "config.json").read_text())["config"]
    assert cfg["countermeasure"] == "nt_cg" and cfg["augment"]["cg"] is True
    assert "protected" in cfg["data"]["dataset"] or "random" in cfg["data"]["dataset"]
    stamp = (out / "runs" / "clean__nt" / "summary.json").stat().st_mtime_ns
    assert main(args) == 0                                   # rerun: every cell reused, same table
    assert (out / "runs" / "clean__nt" / "summary.json").stat().st_mtime_ns == stamp
    assert json.loads((out / "table.json").read_text())["cells"] == doc["cells"]


@pytest.mark.parametrize("extra,needle", [
    (["--protections", "clean,emm"], "unknown protection"),
    (["--countermeasures", "nt,stt"], "unknown countermeasure"),
    (["--protect-set", "ops:steps=3"], "not in --protections"),
    (["--set", "optim.lr=fast"], "optim.lr"),
])
def test_bad_sweep_arguments_fail_before_any_work(tmp_path, extra, needle):
    with pytest.raises(ConfigError, match=needle):
        main(BASE + ["--out", str(tmp_path / "x")] + extra)
    assert not (tmp_path / "x" / "runs").exists()


def test_sweep_over_paradigms_builds_and_reuses_the_prior(tmp_path):
    cache = tmp_path / "cache"
    args = BASE + ["--protections", "clean", "--paradigms", "fs,lp,pf2", "--prior", "synthetic_smoke",
                   "--prior-set", "train.epochs=1", "--prior-set", "data.synthetic_train=256",
                   "--set", f"data.cache_dir={cache}", "--out", str(tmp_path / "par")]
    assert main(args) == 0
    doc = json.loads((tmp_path / "par" / "table.json").read_text())
    assert doc["columns"] == ["fs", "lp", "pf2"]
    cfg = json.loads((tmp_path / "par" / "runs" / "clean__pf2__nt" / "config.json").read_text())["config"]
    assert cfg["paradigm"] == "pf2" and cfg["model"]["pretrained"].endswith("prior.pt")
    assert len(list((cache / "priors").iterdir())) == 1
    with pytest.raises(ConfigError, match="--prior"):
        main(BASE + ["--paradigms", "lp", "--out", str(tmp_path / "np")])


def test_prior_based_protections_get_the_sweeps_prior_and_its_architecture(tmp_path):
    """bait/ssc (Config field ``prior``) get --prior and the prior.json architecture unless set;
    protections without a prior field and explicit --protect-set values are left alone."""
    import json

    from ueperf.sweep import _fill_prior
    prior = tmp_path / "prior.pt"
    prior.write_bytes(b"x")
    (tmp_path / "prior.json").write_text(json.dumps({"model": "resnet18", "width": 0.25,
                                                     "config": {"model": {"name": "resnet18", "width": 0.25,
                                                                          "stem": "cifar"}}}))
    psets = {"clean": [], "em": [], "bait": ["passes=2"], "ssc": ["width=0.5", "steps=3"]}
    _fill_prior(psets, prior)
    assert psets["em"] == [] and psets["clean"] == []
    assert psets["bait"] == ["passes=2", f"prior={prior.absolute()}", "model=resnet18", "width=0.25", "stem=cifar"]
    assert psets["ssc"] == ["width=0.5", "steps=3", f"prior={prior.absolute()}", "model=resnet18", "stem=cifar"]
    own = {"bait": ["prior=/elsewhere.pt"]}
    _fill_prior(own, prior)
    assert own["bait"] == ["prior=/elsewhere.pt"]
    # a row's own prior (another family: the black-box check) brings its own architecture
    other = tmp_path / "vgg" / "prior.pt"
    other.parent.mkdir()
    other.write_bytes(b"y")
    (other.parent / "prior.json").write_text(json.dumps({"config": {"model": {"name": "vgg16", "width": 0.5,
                                                                              "stem": "cifar"}}}))
    bb = {"bait_bb": [f"prior={other}", "stem=imagenet"]}
    _fill_prior(bb, prior, {"bait_bb": "bait"})
    assert bb["bait_bb"] == [f"prior={other}", "stem=imagenet", "model=vgg16", "width=0.5"]


def test_protection_rows_may_name_variants():
    from ueperf.errors import ConfigError
    from ueperf.sweep import _fill_prior, _rows
    labels, method_of = _rows("clean, ssc ,ssc_rgb=ssc,em")
    assert labels == ["clean", "ssc", "ssc_rgb", "em"]
    assert method_of == {"clean": "clean", "ssc": "ssc", "ssc_rgb": "ssc", "em": "em"}
    for bad in ("em,em", "=em", "a=em,a=ssc"):
        with pytest.raises(ConfigError, match="row name"):
            _rows(bad)
    psets = {"ssc_rgb": ["variant=rgb"], "em": []}
    from pathlib import Path
    _fill_prior(psets, Path("/nonexistent/prior.pt"), method_of)   # no prior.json: only the path
    assert psets == {"ssc_rgb": ["variant=rgb", "prior=/nonexistent/prior.pt"], "em": []}
