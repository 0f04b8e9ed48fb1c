"""The GPU suite (bench/gpu/run.py) at smoke size on the CPU, so it cannot rot between GPU runs:
every step runs and reports, the report names its command and versions, and the time budget is
enforced (a step past its limit is stopped, the steps after it are skipped, the files still written)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "bench" / "gpu" / "run.py"


def _suite():
    spec = importlib.util.spec_from_file_location("gpu_suite_run", RUN)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up while it loads
    spec.loader.exec_module(mod)
    return mod


def _run(args, timeout):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("OUT", None)
    return subprocess.run([sys.executable, str(RUN), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _report(out: Path):
    (js,) = out.glob("gpu-smoke_*.json")
    (md,) = out.glob("gpu-smoke_*.md")
    (log,) = out.glob("gpu-smoke_*.log")
    return json.loads(js.read_text()), md.read_text(), log


def test_smoke_runs_every_step_and_reports(tmp_path):
    suite = _suite()
    t0 = time.perf_counter()
    r = _run(["--smoke", "--out", str(tmp_path)], timeout=280)
    took = time.perf_counter() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc, md, _ = _report(tmp_path)
    assert [s["name"] for s in doc["steps"]] == suite.STEP_NAMES
    for step, rec in zip(suite.PLAN, doc["steps"]):
        if step.cuda_only:
            assert rec["status"] == "skipped" and "no CUDA" in rec["reason"], rec
        else:
            assert rec["status"] == "ok", (rec["name"], rec.get("reason"), rec.get("error_tail"))
    fig = {s["name"]: s["results"]["figures"] for s in doc["steps"] if s.get("results")}
    assert fig["env"]["torch"] == torch.__version__
    for step in ("train32", "train64"):
        assert fig[step]["reference_img_s"] > 0 and fig[step]["ueperf_eager_b32_img_s"] > 0
        assert fig[step]["fwd_gflop_per_image"] > 0
    for step in ("train32_compiled", "train64_compiled"):
        assert fig[step]["ueperf_compiled_b32_img_s"] > 0 and fig[step]["ueperf_compiled_b32_ratio"] > 0
    assert fig["kernels"]["augment_32px-cg_torch_x_copy"] > 0 and fig["kernels"]["pgd_linf_32px_torch_x_copy"] > 0
    assert fig["acm"]["acm_torch_pca2_cpu_ms"] > 0
    assert fig["em"]["rounds_measured"] == 2 and fig["em"]["projected_10_rounds_s"] > 0
    assert fig["st"]["st_full_projected_s"] > 0 and fig["st"]["st_cg_epoch_s"] > 0
    assert fig["profile"]["step_wall_ms"] > 0
    assert fig["fast"]["fast_epoch_s"] > 0 and fig["fast"]["grid_10x8_projected_s"] == 80 * fig["fast"]["fast_run_projected_s"]
    assert len(doc["targets"]) == 7
    assert doc["state"].startswith("finished: 11 of 13 steps ok")
    # the report: exact command, versions, every step, the targets
    assert "PYTHONPATH=. python3 bench/gpu/run.py --smoke" in md and f"torch {torch.__version__}" in md
    assert "## Targets" in md and ">= 40,000 img/s" in md
    for name in suite.STEP_NAMES:
        assert f"| {name} |" in md
    print(f"smoke run: {took:.1f} s")


def test_budget_is_enforced_and_files_written(tmp_path):
    t0 = time.perf_counter()
    r = _run(["--smoke", "--budget", "15", "--steps", "train32,acm", "--delay", "train32=120",
              "--out", str(tmp_path)], timeout=120)
    took = time.perf_counter() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert took < 40, f"a 15 s budget took {took:.0f} s"
    doc, md, log = _report(tmp_path)
    st = {s["name"]: s for s in doc["steps"]}
    assert st["train32"]["status"] == "timeout" and st["train32"]["limit_s"] <= 15
    assert st["acm"]["status"] == "skipped" and st["acm"]["reason"].startswith("budget")
    assert "timeout" in md and "budget:" in md and log.exists()


def test_targets_verdicts():
    suite = _suite()
    figs = {"train32": {"reference_img_s": 3000.0, "ueperf_eager_b512_img_s": 41000.0, "ueperf_eager_b512_ratio": 13.7},
            "kernels": {"augment_32px-cg_triton_x_copy": 2.5},
            "em": {"round_s": 10.0, "projected_10_rounds_s": 100.0, "projected_30_rounds_s": 300.0},
            "acm": {"acm_torch_pca2_cuda_ms": 3.0}}
    doc = {"smoke": False, "steps": [{"name": k, "results": {"figures": v}} for k, v in figs.items()]}
    got = {r["target"]: r["verdict"] for r in suite.targets(doc)}
    assert got == {">= 40,000 img/s": "met", ">= 10x": "met", "<= 2x": "NOT met", "<= 120 s": "met",
                   "<= 10 ms": "met", "<= 300 s": "unmeasured", "<= 600 s": "unmeasured"}


def test_profile_summary_of_gpu_events():
    """The GPU-side profile arithmetic, on made-up events: overlapping kernels count once, the
    GPU copy of a record_function range is no kernel, runtime sync calls are counted."""
    from types import SimpleNamespace as E

    from torch.autograd import DeviceType
    spec = importlib.util.spec_from_file_location("gpu_suite_steps", RUN.parent / "steps.py")
    steps = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = steps
    spec.loader.exec_module(steps)

    def ev(name, a, b, dev=DeviceType.CUDA, ann=False):
        return E(name=name, time_range=E(start=a, end=b), device_type=dev, is_user_annotation=ann)

    events = [ev("ueperf_epoch", 0, 100, DeviceType.CPU), ev("ueperf_epoch", 0, 100, ann=True),
              ev("gemm", 10, 30), ev("gemm", 20, 40), ev("relu", 50, 55),
              ev("Memcpy DtoH (Device -> Pageable)", 60, 62),
              ev("late", 95, 120), ev("cudaStreamSynchronize", 61, 63, DeviceType.CPU),
              ev("aten::_local_scalar_dense", 59, 63, DeviceType.CPU)]
    got = steps.profile_activity(events, (0, 100), cuda=True)
    assert got["busy_us"] == 30 + 5 + 2 + 5          # [10, 40] + [50, 55] + [60, 62] + [95, 100]
    assert got["kernels"] == 5 and got["dtoh"] == 1 and got["host_syncs"] == 1
    assert got["top"][0] == ("gemm", 40, 2)
    assert steps.profile_activity(events, (0, 100), cuda=False)["host_syncs"] == 1


def test_cut_off_run_keeps_finished_steps(tmp_path):
    """SIGTERM from outside (the command's own time limit) mid-step: the step is stopped, the later
    ones are skipped, and the report keeps what the finished steps measured."""
    import signal
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("OUT", None)
    proc = subprocess.Popen([sys.executable, str(RUN), "--smoke", "--steps", "env,train32,acm", "--delay",
                             "train32=120", "--out", str(tmp_path)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            if "train32: limit" in line:
                break
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    doc, md, _ = _report(tmp_path)
    st = {s["name"]: s for s in doc["steps"]}
    assert st["env"]["status"] == "ok" and st["env"]["results"]["figures"]["torch"] == torch.__version__
    assert st["train32"]["status"] == "interrupted" and st["acm"]["status"] == "skipped"
    assert doc["state"].startswith("interrupted (SIGTERM)") and "interrupted" in md
