"""The CLI turns bad input into one clear line and exit status 2 (never a traceback)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "ueperf.train", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


@pytest.mark.parametrize("args, needle", [
    (["--recipe", "cifar10_resnet81"], "unknown recipe 'cifar10_resnet81'. Did you mean 'cifar10_resnet18'"),
    (["--set", "model.name=resnet19"], "unknown model 'resnet19'"),
    (["--set", "optim.lrr=0.1"], "no such config key. Did you mean 'optim.lr'"),
    (["--set", "train.epochs=ten"], "train.epochs='ten': expected an integer"),
    (["--set", "train.compile=maybe"], "expected a boolean"),
    (["--set", "optim.lr"], "expected key=value"),
    (["--set", "data.dataset=/nonexistent/store/path"], "/nonexistent/store/path"),
    (["--set", "data.dataset=cifar10", "--set", "data.root=/nonexistent/cifar"], "/nonexistent/cifar"),
    (["--set", "train.epochs=0"], "train.epochs=0"),
    (["--set", "train.device=cuda:3"], "CUDA is not available"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, needle):
    r = run(*args, "--set", f"out_dir={tmp_path}", "--set", f"data.cache_dir={tmp_path}/c", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert needle in r.stderr, r.stderr
    # nothing half-written: no run folder holds records
    assert not list(Path(tmp_path).glob("*/records.jsonl"))


def test_list_and_print_config():
    r = run("--list", "models")
    assert r.returncode == 0 and "resnet18" in r.stdout and "wrn34_10" in r.stdout
    r = run("--list", "recipes")
    assert "demo" in r.stdout and "cifar10_resnet18" in r.stdout
    r = run("--recipe", "cifar10_resnet18", "--set", "optim.lr=8/255", "--print-config")
    assert r.returncode == 0 and '"lr": 0.03137' in r.stdout


def test_demo_cli_end_to_end_and_resume(tmp_path):
    common = ["--recipe", "synthetic_smoke", "--set", f"out_dir={tmp_path}", "--set", f"data.cache_dir={tmp_path}/c",
              "--set", "train.device=cpu"]
    r = run(*common)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "outputs in" in r.stdout
    r2 = run(*common, "--resume")       # already complete: resumes to the end, no new epochs
    assert r2.returncode == 0, r2.stderr[-2000:]
    r3 = run("--resume", str(tmp_path / "synthetic_smoke"), "--set", "train.epochs=3")
    assert r3.returncode == 2 and "train.epochs" in r3.stderr  # a saved run's numbers cannot change silently
