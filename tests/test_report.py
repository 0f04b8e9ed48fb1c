"""``python -m ueperf.report``: one table (md + csv) and one figure for any set of run folders and
sweep folders, with one clear error naming every path that is not a run."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from ueperf.errors import UeperfError
from ueperf.report import COLUMNS, find_runs, main, read_runs, write_report

HEADER = ["run", "protection", "countermeasure", "paradigm", "dataset", "model", "epochs", "seed",
          "final_test_acc", "best_test_acc", "final_train_acc", "time_min", "warnings", "status", "path"]


def _config(dataset, countermeasure="nt", paradigm="fs", seed=0, epochs=3, width=0.25):
    return {"config": {"name": "", "countermeasure": countermeasure, "paradigm": paradigm,
                       "data": {"dataset": dataset, "root": ""}, "model": {"name": "resnet18", "width": width},
                       "train": {"epochs": epochs, "seed": seed}}}


def _write(d: Path, config, records, summary=None):
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(config))
    (d / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if summary is not None:
        (d / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def two_runs(tmp_path):
    """A finished run on a protected store (its summary has no ``run`` entry, as runs written
    before it had one) and an interrupted clean run with ST (2 of 4 epochs, no summary)."""
    store = tmp_path / "store"
    store.mkdir()
    (store / "manifest.json").write_text(json.dumps({
        "kind": "protected", "name": "em-synthetic-01", "classes": ["a", "b"],
        "source": {"clean_name": "synthetic", "clean_source": {"root": None}},
        "meta": {"method": "em", "eps": 8 / 255, "norm": "linf", "granularity": "class", "ratio": 1.0}}))
    recs = [{"epoch": e, "train_acc": t, "test_acc": a, "elapsed_s": 30.0 * e}
            for e, t, a in [(1, 0.5, 0.30), (2, 0.8, 0.45), (3, 0.9, 0.40)]]
    _write(tmp_path / "runs" / "em-nt", _config(str(store)), recs,
           {"epochs": 3, "final_test_acc": 0.40, "best_test_acc": 0.45, "final_train_acc": 0.9,
            "total_time_s": 90.0, "warnings": ["EM hit its round cap", "ε budget barely used"]})
    _write(tmp_path / "runs" / "clean-st", _config("synthetic", countermeasure="st", seed=2, epochs=4, width=1.0),
           [{"epoch": 1, "train_acc": 0.2, "test_acc": 0.25, "elapsed_s": 12.0},
            {"epoch": 2, "train_acc": 0.3, "test_acc": 0.35, "elapsed_s": 24.0}])
    return tmp_path


def test_table_rows_columns_and_files(two_runs, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main([str(two_runs / "runs" / "em-nt"), str(two_runs / "runs" / "clean-st"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.csv", "report.md", "report.png"]
    assert (out / "report.png").stat().st_size > 0
    rows = list(csv.reader(io.StringIO((out / "report.csv").read_text())))
    assert rows[0] == HEADER
    assert rows[1:] == [
        ["em-nt", "em (8/255, class-wise)", "nt", "fs", "synthetic", "resnet18 width 0.25", "3", "0",
         "0.4000", "0.4500", "0.9000", "1.5000", "2", "finished", str(two_runs / "runs" / "em-nt")],
        ["clean-st", "clean", "st", "fs", "synthetic", "resnet18", "2", "2",
         "0.3500", "0.3500", "0.3000", "0.4000", "0", "incomplete", str(two_runs / "runs" / "clean-st")]]
    md = (out / "report.md").read_text().splitlines()
    assert md[0] == "# Comparison of 2 runs"
    table = [l for l in md if l.startswith("| ")]
    assert table[0] == "| " + " | ".join(c for c, _ in COLUMNS) + " |"
    assert table[1] == "|" + " --- |" * len(COLUMNS)
    assert table[2:] == [
        "| em-nt | em (8/255, class-wise) | nt | fs | synthetic | resnet18 width 0.25 | 3 | 0 | 40.0 | 45.0 | 90.0 | 1.50 "
        "| 2 | finished |",
        "| clean-st | clean | st | fs | synthetic | resnet18 | 2/4 | 2 | 35.0 | 35.0 | 30.0 | 0.40 | 0 | incomplete |"]
    assert "- em-nt: EM hit its round cap" in md and "- em-nt: ε budget barely used" in md
    printed = capsys.readouterr()
    assert printed.err.splitlines()[0] == f"report folder: {out}/"  # named before anything is read or drawn
    assert printed.out.splitlines()[-1] == f"wrote {out}/report.md, report.csv and report.png (2 runs)"


def test_sweep_and_run_folders_are_expanded_once_in_order(two_runs, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(two_runs / "runs" / "em-nt", sweep / "runs" / "b")
    shutil.copytree(two_runs / "runs" / "clean-st", sweep / "runs" / "a")
    (sweep / "runs" / "not-started").mkdir()  # a cell folder without config.json is no run
    runs = find_runs([str(sweep), str(two_runs / "runs" / "em-nt"), str(two_runs / "runs")])
    # a sweep's runs by name; a folder of runs (runs/) likewise; a run given twice (em-nt) once
    assert [p.relative_to(tmp_path).as_posix() for p in runs] == [
        "sweep/runs/a", "sweep/runs/b", "runs/em-nt", "runs/clean-st"]
    # the same folder through another path (a link) is one run too
    (tmp_path / "link").symlink_to(two_runs / "runs" / "em-nt", target_is_directory=True)
    assert len(find_runs([str(tmp_path / "link"), str(two_runs / "runs" / "em-nt")])) == 1


def test_same_names_in_two_sweeps_are_told_apart(two_runs, tmp_path):
    for s in ("s1", "s2"):
        shutil.copytree(two_runs / "runs" / "em-nt", tmp_path / s / "runs" / "cell")
    runs = read_runs([str(tmp_path / "s1"), str(tmp_path / "s2"), str(two_runs / "runs" / "clean-st")])
    assert [r.label for r in runs] == ["s1/runs/cell", "s2/runs/cell", "clean-st"]


def test_paths_that_are_not_runs_are_named_in_one_error(two_runs, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "sw" / "runs").mkdir(parents=True)
    (tmp_path / "file.txt").write_text("x")
    paths = [str(tmp_path / "missing"), str(tmp_path / "empty"), str(tmp_path / "sw"), str(tmp_path / "file.txt"),
             str(two_runs / "runs" / "em-nt")]
    with pytest.raises(UeperfError) as e:
        main(paths + ["--out", str(tmp_path / "rep")])
    assert str(e.value) == (
        "cannot compare these paths:\n"
        f"  {tmp_path / 'missing'}: no such file or folder\n"
        f"  {tmp_path / 'empty'}: not a run folder (no config.json), a sweep folder (no runs/) nor a folder of runs\n"
        f"  {tmp_path / 'sw'}: a sweep folder whose runs/ holds no run yet (no runs/*/config.json)\n"
        f"  {tmp_path / 'file.txt'}: is a file, not a run folder (a run folder holds config.json, records.jsonl, "
        "summary.json)\n"
        "Give run folders (e.g. runs/demo) or sweep folders (e.g. sweeps/NAME).")
    assert not (tmp_path / "rep").exists()  # nothing written


def test_unreadable_config_is_a_clear_error(tmp_path):
    d = tmp_path / "broken"
    d.mkdir()
    (d / "config.json").write_text("{not json")
    with pytest.raises(UeperfError, match=r"broken/config.json cannot be read .*is .*broken a ueperf run folder\?"):
        write_report([str(d)], tmp_path / "rep")


def test_cli_exits_2_with_one_line_per_bad_path(tmp_path):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "ueperf.report", str(tmp_path / "nope")], capture_output=True,
                       text=True, cwd=tmp_path, env={"PYTHONPATH": str(Path(__file__).resolve().parents[1]),
                                                     "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[:2] == ["ueperf: error: cannot compare these paths:",
                                         f"  {tmp_path / 'nope'}: no such file or folder"]
