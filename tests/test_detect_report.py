"""bench/detect_report.py --merge: one report from the .json files of runs that split the stores."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _rec(store, prot, ratio, method, seed, score):
    return {"store": store, "protection": prot, "ratio": ratio, "method": method, "seed": seed, "score": score,
            "threshold": 0.5, "protected": score >= 0.5, "auroc": None if prot == "clean" else 0.9,
            "detection_rate": None if prot == "clean" else 0.8, "false_alarm_rate": 0.1, "time_s": 1.0}


def test_merge_writes_one_report_of_every_record(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location("detect_report", BENCH / "detect_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"command": ["bench/detect_report.py", "--protected", "EM"], "seeds": [0, 1],
                             "records": [_rec("EM", "em (sample, linf 8/255)", 1.0, "linear_fit", s, 0.7) for s in (0, 1)]}))
    b.write_text(json.dumps({"command": ["bench/detect_report.py", "--clean", "C"], "seeds": [0, 1],
                             "records": [_rec("C", "clean", 0.0, "linear_fit", s, 0.2) for s in (0, 1)]}))
    out = tmp_path / "r.md"
    assert mod.main(["--merge", str(a), str(b), "--out", str(out), "--device", "cpu"]) == 0
    text = out.read_text()
    assert "| linear_fit | em (sample, linf 8/255) | 1 |" in text and "| linear_fit | clean | – |" in text
    assert "2/2" in text and "0/2" in text
    assert "--protected EM" in text and "--clean C" in text        # where the merged records came from
    doc = json.loads(out.with_suffix(".json").read_text())
    assert len(doc["records"]) == 4 and doc["seeds"] == [0, 1] and len(doc["merged"]) == 2
    with pytest.raises(SystemExit):                                 # merge measures nothing: no stores with it
        mod.main(["--merge", str(a), "--clean", "C", "--out", str(out)])
