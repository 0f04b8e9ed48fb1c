"""``python -m ueperf.sweep`` and the grid under it: protections × countermeasures × paradigms ×
seeds → tables of mean ± std; cells are ordinary run folders, reused when finished, so a rerun
continues a sweep; every cell's config is checked before the first one starts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ueperf.errors import ConfigError
from ueperf.grid import Cell, Grid, GridRunner, Row, parse_rows, parse_seeds
from ueperf.reports.tables import fmt
from ueperf.sweep import main

BASE = ["--dataset", "synthetic", "--data", "synthetic_train=256", "--data", "synthetic_test=64",
        "--recipe", "synthetic_smoke", "--set", "train.epochs=1", "--set", "train.threads=1", "--quiet"]


def test_sweep_writes_the_tables_over_seeds_and_reuses_finished_cells(tmp_path, capsys):
    args = BASE + ["--protections", "clean,random", "--countermeasures", "nt,nt_cg", "--seeds", "0,1",
                   "--set", f"data.cache_dir={tmp_path / 'cache'}", "--out", str(tmp_path / "sw")]
    assert main(args) == 0
    out = tmp_path / "sw"
    doc = json.loads((out / "table.json").read_text())
    assert doc["rows"] == ["clean", "random"] and doc["columns"] == ["nt", "nt_cg"]
    assert all(len(doc["cells"][r][c]) == 2 and all(0 <= v <= 1 for v in doc["cells"][r][c])
               for r in doc["rows"] for c in doc["columns"])
    md = (out / "table.md").read_text()
    assert "| clean |" in md and " ± " in md and "python3 -m ueperf.sweep" in md and "seeds 0, 1" in md
    assert md.splitlines()[0] == ("# sw: synthetic; resnet18 width 0.125, 1 epoch, paradigm fs (synthetic_smoke); "
                                  "seeds 0, 1: protections × countermeasures — final clean test accuracy (%)")
    assert (out / "table.csv").read_text().startswith("protection,nt mean,nt std,nt n,nt_cg mean")
    for stem in ("table", "peak", "train", "time", "speed"):
        assert (out / f"{stem}.md").is_file() and (out / f"{stem}.png").stat().st_size > 0
    runs = {f"{r}__fs__{c}__s{s}": json.loads((out / "runs" / f"{r}__fs__{c}__s{s}" / "summary.json").read_text())
            for r in ("clean", "random") for c in ("nt", "nt_cg") for s in (0, 1)}
    t = json.loads((out / "time.json").read_text())       # the JSON holds seconds as the runs wrote them ...
    assert t["metric"] == "total_time_s" and t["shown_scale"] == pytest.approx(1 / 60)
    assert t["cells"]["random"]["nt_cg"][1] == runs["random__fs__nt_cg__s1"]["total_time_s"]
    seconds = [runs[f"clean__fs__nt__s{s}"]["total_time_s"] for s in (0, 1)]
    assert f"| clean | {fmt(seconds, scale=1 / 60, digits=2)} |" in (out / "time.md").read_text()  # ... the .md minutes
    cfg = json.loads((out / "runs" / "random__fs__nt_cg__s1" / "config.json").read_text())["config"]
    assert cfg["countermeasure"] == "nt_cg" and cfg["augment"]["cg"] is True and cfg["train"]["seed"] == 1
    s0 = json.loads((out / "runs" / "random__fs__nt__s0" / "config.json").read_text())["config"]["data"]["dataset"]
    s1 = json.loads((out / "runs" / "random__fs__nt__s1" / "config.json").read_text())["config"]["data"]["dataset"]
    assert s0 != s1 and "random" in s0                      # one protected store per seed
    stamp = (out / "runs" / "clean__fs__nt__s0" / "summary.json").stat().st_mtime_ns
    assert main(args) == 0                                   # rerun: every cell reused, same table
    assert (out / "runs" / "clean__fs__nt__s0" / "summary.json").stat().st_mtime_ns == stamp
    assert json.loads((out / "table.json").read_text())["cells"] == doc["cells"]
    (out / "table.md").unlink()
    assert main(args + ["--table-only"]) == 0                # redraws the same table from the cells
    assert [line for line in (out / "table.md").read_text().splitlines() if line.startswith("|")] == \
        [line for line in md.splitlines() if line.startswith("|")]


@pytest.mark.parametrize("extra,needle", [
    (["--protections", "clean,emm"], "unknown protection"),
    (["--countermeasures", "nt,stt"], "unknown countermeasure"),
    (["--protect-set", "ops:steps=3"], "not in --protections"),
    (["--set", "optim.lr=fast"], "optim.lr"),
    (["--countermeasures", "nt,st_full", "--set", "st.finetune_epochs=5", "--set", "st.budget=matched"],
     "st.finetune_epochs"),
    (["--seeds", "0,x"], "--seeds"),
    (["--set", "train.seed=3"], "--seeds"),
    (["--protect-set", "random:no_such_knob=1"], "no_such_knob"),
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
    cfg = json.loads((tmp_path / "par" / "runs" / "clean__pf2__nt__s0" / "config.json").read_text())["config"]
    assert cfg["paradigm"] == "pf2" and cfg["model"]["pretrained"].endswith("prior.pt")
    assert len(list((cache / "priors").iterdir())) == 1
    with pytest.raises(ConfigError, match="--prior"):
        main(BASE + ["--paradigms", "lp", "--out", str(tmp_path / "np")])


def _runner(tmp_path, rows, prior):
    return GridRunner(Grid(dataset="synthetic", rows=rows, countermeasures=["nt"], out=tmp_path, prior=str(prior)))


def test_prior_based_protections_get_the_grids_prior_and_its_architecture(tmp_path):
    """bait/ssc (Config field ``prior``) get --prior and the prior.json architecture unless set;
    protections without a prior field and explicit --protect-set values are left alone."""
    prior = tmp_path / "prior.pt"
    prior.write_bytes(b"x")
    (tmp_path / "prior.json").write_text(json.dumps({"model": "resnet18", "width": 0.25,
                                                     "config": {"model": {"name": "resnet18", "width": 0.25,
                                                                          "stem": "cifar"}}}))
    rows = parse_rows("clean,em,bait,ssc", ["bait:passes=2", "ssc:width=0.5", "ssc:steps=3"])
    r = _runner(tmp_path, rows, prior)
    over = {row.label: r._row_overrides(row) for row in rows if row.method}
    assert over["em"] == []
    assert over["bait"] == ["passes=2", f"prior={prior.absolute()}", "model=resnet18", "width=0.25", "stem=cifar"]
    assert over["ssc"] == ["width=0.5", "steps=3", f"prior={prior.absolute()}", "model=resnet18", "stem=cifar"]
    own = Row("bait", "bait", ("prior=/elsewhere.pt",))
    assert r._row_overrides(own) == ["prior=/elsewhere.pt"]
    # a row's own prior (another family: the black-box check) brings its own architecture
    other = tmp_path / "vgg" / "prior.pt"
    other.parent.mkdir()
    other.write_bytes(b"y")
    (other.parent / "prior.json").write_text(json.dumps({"config": {"model": {"name": "vgg16", "width": 0.5,
                                                                              "stem": "cifar"}}}))
    bb = parse_rows("bait_bb=bait", [f"bait_bb:prior={other}", "bait_bb:stem=imagenet"])[0]
    assert r._row_overrides(bb) == [f"prior={other}", "stem=imagenet", "model=vgg16", "width=0.5"]
    (tmp_path / "tv").mkdir()
    (tmp_path / "tv" / "resnet18.pth").write_bytes(b"z")          # no prior.json beside it: only the path
    bare = _runner(tmp_path, rows, tmp_path / "tv" / "resnet18.pth")
    ssc_rgb = parse_rows("ssc_rgb=ssc", ["ssc_rgb:variant=rgb"])[0]
    assert bare._row_overrides(ssc_rgb) == ["variant=rgb", f"prior={tmp_path / 'tv' / 'resnet18.pth'}"]
    with pytest.raises(ConfigError, match="no such file"):
        _runner(tmp_path, rows, "/nonexistent/prior.pt")._row_overrides(ssc_rgb)


def test_protection_rows_may_name_variants():
    rows = parse_rows("clean, ssc ,ssc_rgb=ssc,em")
    assert [(r.label, r.method) for r in rows] == [("clean", ""), ("ssc", "ssc"), ("ssc_rgb", "ssc"), ("em", "em")]
    for bad in ("em,em", "=em", "a=em,a=ssc", "a__b=em"):
        with pytest.raises(ConfigError, match="row name"):
            parse_rows(bad)
    with pytest.raises(ConfigError, match="clean row"):
        parse_rows("clean,em", ["clean:eps=1"])
    assert parse_seeds("2, 0") == [2, 0]


def test_cells_are_row_major_and_named_by_their_coordinates(tmp_path):
    g = Grid(dataset="synthetic", rows=parse_rows("clean,em"), countermeasures=["nt", "at"], paradigms=["fs", "lp"],
             seeds=[0, 1], out=tmp_path)
    cells = g.cells()
    assert len(cells) == 2 * 2 * 2 * 2 and cells[0] == Cell("clean", "nt", "fs", 0)
    assert [c.row for c in cells[:8]] == ["clean"] * 8      # a store's cells run together
    assert cells[1].name == "clean__fs__at__s0" and g.columns() == ["fs/nt", "fs/at", "lp/nt", "lp/at"]
    assert Path(GridRunner(g).run_dir(cells[-1])).name == "em__lp__at__s1"


def test_a_finished_cell_run_with_other_settings_is_not_reused(tmp_path):
    args = BASE + ["--protections", "clean", "--set", f"data.cache_dir={tmp_path / 'cache'}", "--out", str(tmp_path / "o")]
    assert main(args) == 0
    with pytest.raises(ConfigError, match=r"clean__fs__nt__s0 already finished with a different config \(optim\.lr"):
        main(args + ["--set", "optim.lr=0.05"])


def test_titles_name_an_imagefolder_by_its_folder_and_a_single_paradigm():
    from ueperf.grid import GridRunner
    from ueperf.sweep import build_parser, describe, grid_from_args
    args = build_parser().parse_args(["--dataset", "imagefolder", "--root", "/data/tiny-imagenet-100.tar",
                                      "--recipe", "tinyimagenet100_resnet18", "--out", "/nonexistent/sw"])
    assert describe(GridRunner(grid_from_args(args))) == \
        "tiny-imagenet-100 (imagefolder); resnet18 width 1, 100 epochs, paradigm fs (tinyimagenet100_resnet18)"
