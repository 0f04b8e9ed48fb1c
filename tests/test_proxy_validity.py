"""bench/proxy_validity.py: its rank statistics against hand-worked values, its analysis on a
made-up pair of tables, and the sweep commands it builds (checked by the sweep's own dry run)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def pv():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("proxy_validity", BENCH / "proxy_validity.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(BENCH))


def test_ranks_average_ties(pv):
    assert pv.ranks([10, 30, 20]) == [1, 3, 2]
    assert pv.ranks([5, 5, 1, 7]) == [2.5, 2.5, 1, 4]


def test_spearman_and_kendall_by_hand(pv):
    a = [1, 2, 3, 4, 5]
    assert pv.spearman(a, [2, 4, 6, 8, 10]) == pytest.approx(1.0)
    assert pv.spearman(a, [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    # one adjacent swap of 5: ρ = 1 − 6·Σd²/(n(n²−1)) = 1 − 6·2/120 = 0.9; τ = (9 − 1)/10 = 0.8
    b = [1, 3, 2, 4, 5]
    assert pv.spearman(a, b) == pytest.approx(0.9)
    assert pv.kendall(a, b) == pytest.approx(0.8)
    # ties: τ-b = (C − D) / sqrt((C + D + T_a)(C + D + T_b)); here C = 5, D = 0, T_b = 1
    assert pv.kendall([1, 2, 3, 4], [1, 1, 2, 3]) == pytest.approx(5 / (5 * 6) ** 0.5)


def test_permutation_p_orders_correctly(pv):
    a = list(range(10))
    assert pv.permutation_p(a, a, n=2000) < 0.01          # perfect agreement: almost no permutation matches it
    assert pv.permutation_p(a, a[::-1], n=2000) > 0.99    # perfect disagreement: every permutation beats it


def _table(cells):
    return {"rows": list(cells), "columns": ["nt", "nt_cg"], "cells": cells}


def test_analyse_ranks_strength_and_finds_disagreements(pv, monkeypatch):
    monkeypatch.setattr(pv, "PROTECTIONS", ["clean", "random", "em", "sp"])
    monkeypatch.setattr(pv, "COUNTERMEASURES", ["nt", "nt_cg"])
    std = _table({"clean": {"nt": [0.50, 0.51, 0.49], "nt_cg": [0.5, 0.5, 0.5]},
                  "random": {"nt": [0.49, 0.50, 0.50], "nt_cg": [0.5, 0.5, 0.5]},
                  "em": {"nt": [0.20, 0.22, 0.21], "nt_cg": [0.3, 0.31, 0.32]},
                  "sp": {"nt": [0.40, 0.41, 0.42], "nt_cg": [0.47, 0.46, 0.48]}})
    fast = _table({"clean": {"nt": [0.60, 0.61, 0.59], "nt_cg": [0.6, 0.6, 0.6]},
                   "random": {"nt": [0.59, 0.60, 0.60], "nt_cg": [0.6, 0.6, 0.6]},
                   "em": {"nt": [0.30, 0.31, 0.29], "nt_cg": [0.58, 0.6, 0.59]},   # EM: bites under nt only
                   "sp": {"nt": [0.50, 0.52, 0.51], "nt_cg": [0.35, 0.36, 0.34]}})
    res = pv.analyse(std, fast)
    assert res["nt"]["spearman"] == pytest.approx(1.0)
    assert res["nt"]["disagree"] == []
    assert res["nt"]["standard"][2] == pytest.approx(100 * (0.50 - 0.21))   # strength of em = clean − em, points
    # under nt_cg the fast victim says SP bites and EM does not, the standard one the opposite
    assert res["nt_cg"]["spearman"] < 1.0
    assert {d["row"]: (d["standard_bites"], d["fast_bites"]) for d in res["nt_cg"]["disagree"]} == \
        {"em": (True, False), "sp": (False, True)}
    assert len(res["nt"]["spearman_per_seed"]) == 3
    assert [len(v) for v in res["nt"]["within_seed_pairs"].values()] == [3, 3]   # seed pairs (0,1) (0,2) (1,2)
    assert res["nt"]["pearson"] > 0.9


def test_sweep_commands_pass_the_sweeps_dry_run(pv, tmp_path):
    """Each victim's sweep command is a valid sweep (every --protect-set key, recipe, --set): checked by
    `python -m ueperf.sweep --dry-run` on the embedded sample instead of the real data."""
    prior = tmp_path / "prior.pt"
    for victim in pv.VICTIMS:
        args = pv.sweep_args("cifar", victim, tmp_path, tmp_path / "work", prior, 1)
        i = args.index("--root")
        args = ["--dataset", "embedded"] + args[i + 2:]            # the embedded sample: no archive needed
        r = subprocess.run([sys.executable, "-m", "ueperf.sweep", *args, "--dry-run"], capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "150 cells" in r.stdout + r.stderr, r.stdout + r.stderr


def test_vit_prior_sweep_commands_pass_the_sweeps_dry_run(tmp_path):
    """bench/vit_prior.py's two sweeps (ViT and ResNet priors, pf6 / pf2 as pf-half) are valid sweeps."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("vit_prior", BENCH / "vit_prior.py")
        vp = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(vp)
    finally:
        sys.path.remove(str(BENCH))
    for fam in vp.FAMILIES:
        args = vp.sweep_args(fam, tmp_path, tmp_path / "work", 1)
        i = args.index("--root")
        args = ["--dataset", "embedded"] + args[i + 2:]
        r = subprocess.run([sys.executable, "-m", "ueperf.sweep", *args, "--dry-run"], capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "48 cells (4 rows × 4 columns × 3 seeds)" in r.stdout + r.stderr, r.stdout + r.stderr


def test_a_regenerated_report_keeps_its_hand_written_reading(pv, tmp_path, capsys):
    """Regenerating a report (e.g. once the second dataset's half of the grid is in) keeps the
    hand-written section at its end, once; a report without one is written as given."""
    from harness import HAND_WRITTEN, write_report
    md = tmp_path / "r.md"
    write_report(md, ["# tables", "", "| a |", ""])
    assert md.read_text() == "# tables\n\n| a |\n\n"
    md.write_text(md.read_text() + f"{HAND_WRITTEN} after the run)\n\n- a finding\n")
    write_report(md, ["# tables, more rows", "", "| a |", "| b |", ""])
    assert md.read_text() == f"# tables, more rows\n\n| a |\n| b |\n\n{HAND_WRITTEN} after the run)\n\n- a finding\n"
    assert "kept the hand-written section" in capsys.readouterr().err
    write_report(md, ["# tables, more rows", "", f"{HAND_WRITTEN}, new)", "", "- new finding"])
    assert md.read_text().count(HAND_WRITTEN) == 1 and md.read_text().endswith("- new finding\n")
