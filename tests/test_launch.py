"""Where a sweep's cells run (ueperf.launch) and the launch/ scripts: the same tables from every
launcher, each cell run once, a killed sweep finishing only what is left, a cell on two processes
under torchrun with its exact config, the SLURM job graph (protections first, cells after their
protection) built through submitit, and the dry runs of every script in launch/."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ueperf.errors import ConfigError
from ueperf.launch import read_events, slurm_minutes
from ueperf.sweep import main

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
BASE = ["--dataset", "synthetic", "--data", "synthetic_train=256", "--data", "synthetic_test=64",
        "--recipe", "synthetic_smoke", "--set", "train.epochs=1", "--set", "train.threads=1", "--quiet"]
ACCURACY_TABLES = ("table", "peak", "train")   # time and speed differ from run to run


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def _cells(out: Path, stem: str = "table"):
    return json.loads((out / f"{stem}.json").read_text())["cells"]


# ───────────────────────────────────────────── same numbers, any launcher ──
GRID = ["--protections", "clean,random", "--countermeasures", "nt"]   # a protection, and cells after it


def _sweep(tmp, name, extra=()):
    """A tiny grid (synthetic data, 1 epoch) with its own protection cache: the stores must come out
    the same from every launcher too. Returns its output folder after checking that every cell
    started once and finished once, under this launcher."""
    out = tmp / name
    assert main(BASE + GRID + ["--set", f"data.cache_dir={tmp / ('cache-' + name)}", "--out", str(out), *extra]) == 0
    events = read_events(out)
    assert len(events) == 2
    for cell, evs in events.items():
        assert [e["event"] for e in evs] == ["start", "done"], (name, cell, evs)
    return out


@pytest.fixture(scope="module")
def inline_sweep(tmp_path_factory):
    return _sweep(tmp_path_factory.mktemp("inline"), "inline")


def _same_tables(a, b):
    for stem in ACCURACY_TABLES:
        assert _cells(a, stem) == _cells(b, stem), stem


def test_local_workers_give_the_tables_of_an_inline_sweep_and_run_each_cell_once(inline_sweep, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = _sweep(tmp_path, "local", ["--launcher", "local", "--workers", "2"])
    _same_tables(inline_sweep, out)
    events = read_events(out)
    assert {e["launcher"] for evs in events.values() for e in evs if e["event"] == "start"} == {"local"}
    assert os.getpid() not in {evs[0]["pid"] for evs in events.values()}   # in the worker processes
    assert {e["launcher"] for evs in read_events(inline_sweep).values() for e in evs if "launcher" in e} == {"inline"}
    # a rerun finds every cell finished and starts none
    assert main(BASE + GRID + ["--set", f"data.cache_dir={tmp_path / 'cache-local'}", "--out", str(out),
                               "--launcher", "local", "--workers", "2"]) == 0
    assert all(len(evs) == 2 for evs in read_events(out).values())


def test_submitit_jobs_give_the_tables_of_an_inline_sweep_and_run_each_cell_once(inline_sweep, tmp_path, monkeypatch):
    pytest.importorskip("submitit", reason="submitit not installed (pip install 'ueperf[slurm]')")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = _sweep(tmp_path, "submitit", ["--launcher", "slurm", "--slurm-cluster", "local", "--slurm-time", "10"])
    _same_tables(inline_sweep, out)
    events = read_events(out)
    assert len({evs[0]["job_id"] for evs in events.values()}) == 2 and \
        {evs[0]["launcher"] for evs in events.values()} == {"slurm"}      # one submitit job per cell
    book = json.loads((out / "slurm" / "jobs.json").read_text())
    assert set(book["cells"]) == set(events) and list(book["protections"]) == ["random s0"]
    for name, job in book["cells"].items():     # a log per cell, under OUT/slurm/<job id>/
        assert Path(job["log"]).parent == out / "slurm" / job["job"] and events[name][0]["job_id"] == job["job"]


def test_workers_get_slices_of_the_devices_this_process_sees(monkeypatch):
    import torch

    from ueperf.launch import device_slots, visible_devices
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")        # a slice given to the sweep: handed on as is
    assert visible_devices() == ["4", "5", "6", "7"]
    assert device_slots(visible_devices(), 4, 1) == [["4"], ["5"], ["6"], ["7"]]
    assert device_slots(visible_devices(), 2, 2) == [["4", "5"], ["6", "7"]]
    assert device_slots(visible_devices(), 8, 1)[4:] == [["4"], ["5"], ["6"], ["7"]]   # two cells per GPU
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_devices() == ["0", "1", "2", "3"]
    assert device_slots([], 2, 1) == []                             # no GPUs: CPU workers


def test_a_killed_local_sweep_finishes_only_the_remaining_cells(tmp_path):
    out = tmp_path / "k"
    args = [sys.executable, "-m", "ueperf.sweep", *BASE, "--protections", "clean,random", "--countermeasures", "nt",
            "--set", "train.epochs=2", "--set", f"data.cache_dir={tmp_path / 'cache'}", "--out", str(out),
            "--launcher", "local", "--workers", "1"]
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not list((out / "runs").glob("*/summary.json")):
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, "no cell finished within 120 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)     # the sweep only: its worker goes with it (PR_SET_PDEATHSIG)
        proc.wait()
    finished = {p.parent.name for p in (out / "runs").glob("*/summary.json")}
    assert finished and len(finished) < 2
    stamps = {c: (out / "runs" / c / "summary.json").stat().st_mtime_ns for c in finished}
    killed_at = time.time()
    time.sleep(0.5)
    r = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    events = read_events(out)
    assert len(events) == 2 and all(json.loads((out / "runs" / c / "summary.json").read_text())["epochs"] == 2
                                    for c in events)
    for c in finished:                       # not started again, not rewritten
        assert all(e["t"] < killed_at for e in events[c]) and \
            (out / "runs" / c / "summary.json").stat().st_mtime_ns == stamps[c]
    (rest,) = set(events) - finished         # started again after the kill, finished once
    assert [e["event"] for e in events[rest] if e["t"] > killed_at] == ["start", "done"]


# ───────────────────────────────────────────── a cell on several processes ──
def test_a_cell_on_two_processes_runs_under_torchrun_with_its_exact_config(tmp_path, capsys):
    from ueperf.config import to_dict
    from ueperf.grid import Cell, Grid, GridRunner, Row
    from ueperf.launch import torchrun_command, train_args
    from ueperf.train import main as train_main
    g = Grid(dataset="synthetic", rows=[Row("clean")], countermeasures=["nt_cg"], out=tmp_path / "tr",
             recipe="synthetic_smoke", overrides=["train.epochs=1", f"data.cache_dir={tmp_path / 'cache'}"],
             progress=False)
    runner = GridRunner(g)
    cell = Cell("clean", "nt_cg")
    args = train_args(runner, cell, "/some/store")
    assert train_main(args + ["--print-config"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(to_dict(runner.cell_config(cell, "/some/store"))))
    cmd = torchrun_command(runner, cell, "/some/store", 2)
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    # the sweep runs it: two gloo processes on CPU, one summary
    assert main(BASE + ["--protections", "clean", "--countermeasures", "nt", "--set",
                        f"data.cache_dir={tmp_path / 'cache'}", "--out", str(tmp_path / "sw"),
                        "--gpus-per-cell", "2"]) == 0
    s = json.loads((tmp_path / "sw" / "runs" / "clean__fs__nt__s0" / "summary.json").read_text())
    assert s["world_size"] == 2 and s["backend"] == "ddp" and s["epochs"] == 1
    assert "torch.distributed.run" in (tmp_path / "sw" / "logs" / "clean__fs__nt__s0.log").read_text()


# ───────────────────────────────────────────── SLURM through submitit ──
def _fake_slurm(tmp_path, monkeypatch):
    """sbatch / srun / sacct stand-ins on PATH: sbatch keeps each script and answers with a job id,
    sacct answers what ``state.txt`` says."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    st = tmp_path / "slurm-state"
    st.mkdir()
    (bin_ / "sbatch").write_text(f"""#!/usr/bin/env bash
n=$(cat {st}/counter 2>/dev/null || echo 100); n=$((n + 1)); echo $n > {st}/counter
cp "$1" {st}/job_$n.sh; echo "Submitted batch job $n"
""")
    (bin_ / "srun").write_text("#!/usr/bin/env bash\nexit 0\n")
    (bin_ / "sacct").write_text(f"#!/usr/bin/env bash\necho 'JobID|State|NodeList'\ncat {st}/state.txt 2>/dev/null\n")
    for f in bin_.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    return st


def _scripts(st):
    return {int(p.stem.split("_")[1]): p.read_text() for p in st.glob("job_*.sh")}


def _flag(script, name):
    for line in script.splitlines():
        if line.startswith(f"#SBATCH --{name}="):
            return line.split("=", 1)[1]
    return None


def test_slurm_sweep_submits_protections_then_cells_after_them_and_a_rerun_resubmits_the_rest(tmp_path, monkeypatch):
    pytest.importorskip("submitit", reason="submitit not installed (pip install 'ueperf[slurm]')")
    st = _fake_slurm(tmp_path, monkeypatch)
    out = tmp_path / "sw"
    common = BASE + ["--set", f"data.cache_dir={tmp_path / 'cache'}", "--out", str(out)]
    assert main(common + ["--protections", "clean", "--countermeasures", "nt"]) == 0   # one cell finished here
    slurm = ["--protections", "clean,random", "--countermeasures", "nt,nt_cg", "--launcher", "slurm",
             "--slurm-partition", "gpu", "--slurm-time", "1:30:00", "--slurm-gpus-per-node", "0",
             "--slurm-cpus-per-task", "2", "--slurm-array-parallelism", "3", "--slurm-opt", "account=proj",
             "--slurm-setup", "echo ready"]
    assert main(common + slurm) == 0
    jobs = _scripts(st)
    assert sorted(jobs) == [101, 102, 103, 104]          # prepare, protection, clean cells, random cells
    prep, prot, clean_cells, rand_cells = (jobs[i] for i in (101, 102, 103, 104))
    for s in jobs.values():
        assert _flag(s, "partition") == "gpu" and _flag(s, "time") == "90" and _flag(s, "account") == "proj"
        assert _flag(s, "cpus-per-task") == "2" and _flag(s, "kill-on-invalid-dep") == "yes" and "echo ready" in s
        assert str(out.absolute() / "slurm") in _flag(s, "output")
    assert _flag(prep, "dependency") is None
    assert _flag(prot, "dependency") == "afterok:101" and _flag(prot, "array") is None   # one protection: one job
    assert _flag(clean_cells, "dependency") == "afterok:101" and _flag(clean_cells, "array") is None  # one cell
    assert _flag(rand_cells, "dependency") == "afterok:102" and _flag(rand_cells, "array") == "0-1%2"
    book = json.loads((out / "slurm" / "jobs.json").read_text())
    assert set(book["cells"]) == {
        "clean__fs__nt_cg__s0", "random__fs__nt__s0", "random__fs__nt_cg__s0"}   # the finished cell is not sent
    assert book["cells"]["random__fs__nt_cg__s0"]["job"] == "104_1"
    assert json.loads((out / "table.json").read_text())["cells"]["clean"]["nt"]  # the finished cell is in the table
    # rerun: one cell still running, the others failed → only those two go again (no new protection wait)
    (st / "state.txt").write_text("103|RUNNING|n1\n104_0|FAILED|n2\n104_1|CANCELLED by 0|n2\n")
    assert main(common + slurm) == 0
    again = {i: s for i, s in _scripts(st).items() if i > 104}
    assert sorted(again) == [105, 106, 107]             # prepare, protection (cached: quick), random's 2 cells
    assert _flag(again[107], "array") == "0-1%2" and _flag(again[107], "dependency") == "afterok:106"
    book = json.loads((out / "slurm" / "jobs.json").read_text())
    assert book["cells"]["clean__fs__nt_cg__s0"]["job"] == "103" and book["cells"]["random__fs__nt__s0"]["job"] == "107_0"


def test_slurm_without_submitit_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)   # import submitit → ImportError
    with pytest.raises(ConfigError, match=r"pip install 'ueperf\[slurm\]'"):
        main(BASE + ["--out", str(tmp_path / "x"), "--launcher", "slurm", "--slurm-cluster", "local"])
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("extra,needle", [
    (["--launcher", "inline", "--workers", "2"], "only with --launcher local"),
    (["--slurm-partition", "gpu"], "only with --launcher slurm"),
    (["--gpus-per-cell", "0"], "--gpus-per-cell 0"),
    (["--gpus-per-cell", "3"], "not divisible by 3"),
    (["--gpus-per-cell", "2", "--set", "parallel.backend=none"], "parallel.backend=none"),
    (["--launcher", "slurm", "--slurm-time", "1:2:3:4", "--dry-run"], "--slurm-time"),
    (["--launcher", "slurm", "--slurm-opt", "account", "--dry-run"], "KEY=VALUE"),
    (["--launcher", "slurm", "--slurm-array-parallelism", "0", "--dry-run"], "array-parallelism"),
])
def test_bad_launch_options_fail_before_any_work(tmp_path, extra, needle):
    with pytest.raises(ConfigError, match=needle):
        main(BASE + ["--out", str(tmp_path / "x")] + extra)
    assert not (tmp_path / "x").exists()


def test_slurm_needs_sbatch_on_the_path(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))             # no sbatch, no srun
    with pytest.raises(ConfigError, match="no sbatch"):
        main(BASE + ["--out", str(tmp_path / "x"), "--launcher", "slurm"])


@pytest.mark.parametrize("spec,minutes", [("90", 90), ("90:30", 91), ("1:30:00", 90), ("2-0", 2880),
                                          ("1-2:30", 1590), ("0-00:00:30", 1)])
def test_slurm_time_formats(spec, minutes):
    assert slurm_minutes(spec) == minutes


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path, capsys):
    assert main(BASE + ["--protections", "clean,random", "--countermeasures", "nt,nt_cg", "--seeds", "0,1",
                        "--out", str(tmp_path / "d"), "--launcher", "local", "--workers", "2", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "8 cells" in text and "2 protected stores" in text and "2 worker processes" in text
    assert not (tmp_path / "d").exists()


# ───────────────────────────────────────────── launch/ scripts ──
def _dry(script, *args, env=None):
    e = dict(_env(), PYTHON=sys.executable, **(env or {}), **({} if "--dry-run" in args else {"DRY_RUN": "1"}))
    e.pop("SLURM_JOB_ID", None)
    r = subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True, env=e, timeout=120)
    assert r.returncode == 0, r.stderr
    return shlex.split(r.stdout)


def _after(words, marker):
    return words[words.index(marker) + 1:]


def _torchrun_args(words):
    """The words between torch.distributed.run and the ueperf module, checked by torchrun's own parser."""
    from torch.distributed.run import get_args_parser
    i, j = words.index("torch.distributed.run"), words.index("-m", words.index("torch.distributed.run"))
    args = get_args_parser().parse_args(words[i + 1:j] + ["x"])
    return args, words[j + 1]


def test_torchrun_single_node_dry_runs_parse(tmp_path, capsys):
    from ueperf.protect import build_parser as protect_parser
    from ueperf.train import main as train_main
    words = _dry("torchrun_single_node.sh", "train", "--recipe", "synthetic_smoke", "--set", "train.epochs=3",
                 env={"NPROC": "4"})
    args, module = _torchrun_args(words)
    assert args.standalone and args.nproc_per_node == "4" and module == "ueperf.train"
    assert train_main(_after(words, "ueperf.train") + ["--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["epochs"] == 3
    words = _dry("torchrun_single_node.sh", "--dry-run", "protect", "--method", "em", "--dataset", "cifar10")
    assert _torchrun_args(words)[1] == "ueperf.protect"
    a = protect_parser().parse_args(_after(words, "ueperf.protect"))
    assert a.method == "em" and a.dataset == "cifar10"
    bad = subprocess.run(["bash", str(LAUNCH / "torchrun_single_node.sh"), "fit"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr


@pytest.mark.parametrize("stage", [1, 2])
def test_deepspeed_configs_reach_the_engine(stage, capsys):
    from ueperf.train import main as train_main
    cfg_file = LAUNCH / "deepspeed" / f"zero{stage}.json"
    words = _dry("torchrun_single_node.sh", "train", "--recipe", "synthetic_smoke",
                 env={"DEEPSPEED_CONFIG": str(cfg_file), "NPROC": "2"})
    argv = _after(words, "ueperf.train")
    assert train_main(argv + ["--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["parallel"] == {**cfg["parallel"], "backend": "deepspeed", "zero_stage": stage}
    from ueperf.engine.validate import check_run_config
    from ueperf.recipes import build
    check_run_config(build("synthetic_smoke", [a for a in argv if "=" in a]))   # the engine's range checks


def test_deepspeed_config_files_are_what_the_engine_builds():
    from ueperf.launch import deepspeed_sets
    from ueperf.parallel import ZERO_STAGES, deepspeed_config
    files = sorted((LAUNCH / "deepspeed").glob("zero*.json"))
    assert [int(f.stem[4:]) for f in files] == list(ZERO_STAGES)    # one file per stage the engine runs
    for f in files:
        doc = json.loads(f.read_text())
        for bf16 in (False, True):
            built = deepspeed_config(micro_batch=32, zero_stage=int(f.stem[4:]), bf16=bf16, grad_clip=0.0)
            filled = {k: v for k, v in doc.items() if k != "train_batch_size"}
            filled.update(train_micro_batch_size_per_gpu=32, bf16={"enabled": bf16}, gradient_clipping=0.0,
                          **({"data_types": {"buffer_dtype": "bf16"}} if bf16 else {}))
            assert filled == built
        assert deepspeed_sets(f) == ["parallel.backend=deepspeed", f"parallel.zero_stage={f.stem[4:]}"]


@pytest.mark.parametrize("doc,needle", [
    ({"zero_optimization": {"stage": 3}}, "stages 1 and 2"),
    ({"optimizer": {"type": "Adam"}}, "'optimizer'"),
    ({"train_micro_batch_size_per_gpu": 16}, "auto"),
    ({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}, "only 'stage'"),
    ({"steps_per_print": 10}, "steps_per_print"),
])
def test_deepspeed_configs_the_engine_would_not_apply_are_refused(tmp_path, doc, needle):
    from ueperf.launch import deepspeed_sets
    f = tmp_path / "ds.json"
    f.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=needle):
        deepspeed_sets(f)


def test_deepspeed_config_maps_batch_precision_and_clipping(tmp_path):
    from ueperf.launch import deepspeed_sets
    f = tmp_path / "ds.json"
    f.write_text(json.dumps({"train_batch_size": 256, "bf16": {"enabled": True}, "gradient_clipping": 1.0,
                             "zero_optimization": {"stage": 2}}))
    assert deepspeed_sets(f) == ["parallel.backend=deepspeed", "parallel.zero_stage=2", "train.batch_size=256",
                                 "train.precision=bf16", "optim.grad_clip=1"]


def test_slurm_multinode_dry_run_uses_c10d_rendezvous_on_the_first_node(capsys):
    from ueperf.train import main as train_main
    words = _dry("slurm_multinode.sbatch", "train", "--recipe", "synthetic_smoke",
                 env={"SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NNODES": "2", "GPUS_PER_NODE": "8"})
    assert words[0] == "srun"
    args, module = _torchrun_args(words)
    assert (args.nnodes, args.nproc_per_node, args.rdzv_backend, args.rdzv_endpoint) == ("2", "8", "c10d", "gpu07:29500")
    assert module == "ueperf.train" and train_main(_after(words, "ueperf.train") + ["--print-config"]) == 0
    capsys.readouterr()
    words = _dry("slurm_multinode.sbatch", "--dry-run", "protect", "--method", "random", "--dataset", "cifar10",
                 env={"DEEPSPEED_CONFIG": ""})
    assert _torchrun_args(words)[0].rdzv_endpoint == "node1:29500" and _torchrun_args(words)[1] == "ueperf.protect"
    e = {k: v for k, v in _env().items() if not k.startswith("SLURM_")}
    r = subprocess.run(["bash", str(LAUNCH / "slurm_multinode.sbatch"), "train"], capture_output=True, text=True, env=e)
    assert r.returncode == 2 and "sbatch" in r.stderr


def test_sweep_slurm_dry_run_is_a_valid_1440_cell_sweep(tmp_path, capsys):
    words = _dry("sweep_slurm.sh", "--dry-run", "--slurm-opt", "account=proj")
    assert words[1:3] == ["-m", "ueperf.sweep"] and "--launcher" in words
    args = words[3:] + ["--out", str(tmp_path / "sw"), "--dry-run"]
    assert main(args) == 0                                 # every cell's config checked, nothing submitted
    text = capsys.readouterr().out
    assert "1440 cells" in text and "27 protected stores" in text and '"account": "proj"' in text
    assert not (tmp_path / "sw").exists()
