"""Commands chain and rerun, and say what they will cost and when they will not do what was meant.

- a run without ``name`` gets a fresh folder (``<recipe>``, ``<recipe>-2``, ...); ``--resume`` alone
  continues the latest; ``name=`` is exact (a second run into it is refused);
- every command ueperf prints for the user to run next works as printed: ``protect``'s "train on
  it", ``train``'s and ``sweep``'s Ctrl-C message, the sweep's "continue it" line (they are
  extracted from the output and run);
- a closed stdout pipe (``--print-config | head``) ends every entry point with status 141 and no
  traceback; run and store files follow the umask;
- long jobs print their expected cost first; EM at its round cap and a protection using little of
  its ε are warned of (stderr and the manifest); a GPU-sized run on the CPU is warned of.
"""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data.synthetic_train=128", "data.synthetic_test=32", "data.synthetic_size=16", "train.batch_size=64",
         "train.threads=1"]


def _env(tmp_path):
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", UEPERF_CACHE_DIR=str(tmp_path / "cache"))


def _run(tmp_path, argv, timeout=300):
    return subprocess.run(argv, capture_output=True, text=True, env=_env(tmp_path), cwd=tmp_path, timeout=timeout)


def _as_printed(command: str):
    """A printed ``python3 -m ueperf.X ...`` command as argv, with this interpreter for python3."""
    argv = shlex.split(command)
    assert argv[:2] == ["python3", "-m"] and argv[2].startswith("ueperf."), command
    return [sys.executable, *argv[1:]]


def _line(text: str, pattern: str) -> str:
    m = re.search(pattern, text, re.M)
    assert m, f"no line matching {pattern!r} in:\n{text[-3000:]}"
    return m.group(1).strip()


def _sets(items):
    return [a for s in items for a in ("--set", s)]


# ───────────────────────────────────────────── run folder names ──
def test_run_numbers_and_the_latest_run(tmp_path):
    from ueperf.engine.trainer import _run_number, fresh_run_dir, latest_run_dir, run_dirs
    assert [_run_number("demo", n) for n in ("demo", "demo-2", "demo-10", "demo-1", "demo-02", "demo-x", "demox",
                                             "demo-2-3", "other")] == [1, 2, 10, None, None, None, None, None, None]
    for name in ("demo-10", "demo", "demo-2", "demo-01", "demo_3"):
        (tmp_path / name).mkdir()
    assert [p.name for p in run_dirs(tmp_path, "demo")] == ["demo", "demo-2", "demo-10"]
    assert latest_run_dir(tmp_path, "demo") is None                 # no folder holds a run (config.json)
    (tmp_path / "demo-2" / "config.json").write_text("{}")
    assert latest_run_dir(tmp_path, "demo") == tmp_path / "demo-2"
    d, lock = fresh_run_dir(tmp_path, "demo")                       # one more than the highest number
    assert d == tmp_path / "demo-11"
    lock.release()
    assert fresh_run_dir(tmp_path / "none", "demo")[0] == tmp_path / "none" / "demo"


def test_a_fresh_name_passes_over_a_folder_another_process_holds(tmp_path):
    from ueperf.engine.trainer import fresh_run_dir
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from ueperf.files import hold; "
                               f"lock = hold({str(tmp_path / 'r')!r}); print('held', flush=True); time.sleep(120)"],
                              stdout=subprocess.PIPE, text=True, env=_env(tmp_path))
    try:
        assert holder.stdout.readline().strip() == "held"
        d, lock = fresh_run_dir(tmp_path, "r")
        assert d == tmp_path / "r-2"
        lock.release()
    finally:
        holder.kill()
        holder.wait()


def _cfg(tmp_path, name="", **sets):
    from ueperf.recipes import build
    return build("synthetic_smoke", [f"out_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}",
                                     "train.epochs=1", "train.progress=false", *SMALL, f"name={name}",
                                     *(f"{k}={v}" for k, v in sets.items())])


def test_reruns_get_fresh_folders_and_resume_continues_the_latest(tmp_path):
    from ueperf.engine.trainer import train
    from ueperf.errors import UeperfError
    cfg = _cfg(tmp_path)
    first, second = train(cfg), train(cfg)                          # the same config object, twice
    assert cfg.name == ""                                           # the caller's config is not changed
    runs = tmp_path / "runs"
    assert (first["run_dir"], second["run_dir"]) == (str(runs / "synthetic_smoke"), str(runs / "synthetic_smoke-2"))
    assert json.loads((runs / "synthetic_smoke-2" / "config.json").read_text())["config"]["name"] == "synthetic_smoke-2"
    resumed = train(_cfg(tmp_path), resume=True)                    # --resume alone: the latest run
    assert resumed["run_dir"] == second["run_dir"] and not (runs / "synthetic_smoke-3").exists()
    assert len((runs / "synthetic_smoke-2" / "records.jsonl").read_text().splitlines()) == 1
    train(_cfg(tmp_path, name="exact"))
    with pytest.raises(UeperfError, match="already holds a run"):   # name= is exact: never a fresh folder
        train(_cfg(tmp_path, name="exact"))
    with pytest.raises(UeperfError, match="no run of 'synthetic_smoke'"):
        train(_cfg(tmp_path / "elsewhere"), resume=True)


# ───────────────────────────────────────────── printed commands run as printed ──
def test_protect_prints_a_train_command_that_runs_twice(tmp_path):
    r = _run(tmp_path, [sys.executable, "-m", "ueperf.protect", "--method", "random", "--dataset", "synthetic",
                        "--data", "synthetic_train=256", "--data", "synthetic_test=64", "--data", "synthetic_size=16",
                        "--quiet", "--no-grid"])
    assert r.returncode == 0, r.stderr[-3000:]
    command = _line(r.stdout, r"^\s*train on it: (.*)$")
    for expect in ("demo", "demo-2"):                               # printed once, run twice: both work
        t = _run(tmp_path, _as_printed(command))
        assert t.returncode == 0, t.stderr[-3000:]
        assert (tmp_path / "runs" / expect / "summary.json").is_file()
        assert f"outputs in runs/{expect}/ (" in t.stdout             # out_dir is relative: so is the folder


def _ctrl_c_able():
    """preexec_fn of a command the test will Ctrl-C: SIGINT back to its default. A command started
    from a background job of a non-interactive shell (``bash -c '... &'``, nohup, some CI runners)
    inherits SIGINT *ignored* — through pytest, its workers and every process they start — and a
    Python that starts with SIGINT ignored keeps ignoring it: the run would finish instead of stop."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for(path: Path, proc, lines=1, timeout=240.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if path.is_file() and len(path.read_text().splitlines()) >= lines:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"{path} did not get {lines} line(s) in {timeout} s")


def test_train_interrupted_prints_a_resume_command_that_finishes_the_run(tmp_path):
    argv = [sys.executable, "-m", "ueperf.train", "--recipe", "synthetic_smoke",
            *_sets([*SMALL, "train.epochs=40", "train.progress=false"])]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path),
                         cwd=tmp_path, preexec_fn=_ctrl_c_able)
    records = tmp_path / "runs" / "synthetic_smoke" / "records.jsonl"
    _wait_for(records, p)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-3000:]
    assert err.splitlines()[0] == "run folder: runs/synthetic_smoke/"   # first, also with train.progress=false
    command = _line(err, r"^ueperf: interrupted\. Continue the run with: (.*)$")
    assert command == "python3 -m ueperf.train --resume runs/synthetic_smoke"      # run from the same folder
    r = _run(tmp_path, _as_printed(command))
    assert r.returncode == 0, r.stderr[-3000:]
    assert [json.loads(x)["epoch"] for x in records.read_text().splitlines()] == list(range(1, 41))


def test_sweep_prints_a_continue_command_that_reuses_its_folder(tmp_path):
    argv = [sys.executable, "-m", "ueperf.sweep", "--dataset", "synthetic", "--data", "synthetic_train=128",
            "--data", "synthetic_test=32", "--data", "synthetic_size=16", "--recipe", "synthetic_smoke",
            "--protections", "clean", "--seeds", "0,1", "--quiet",
            *_sets(["train.epochs=30", "train.batch_size=64", "train.threads=1"])]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path),
                         cwd=tmp_path, preexec_fn=_ctrl_c_able)
    t0 = time.monotonic()
    while not list(tmp_path.glob("sweeps/*/runs/*/records.jsonl")) and time.monotonic() - t0 < 240:
        assert p.poll() is None, p.communicate()
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-3000:]
    (folder,) = list((tmp_path / "sweeps").iterdir())
    started = _line(err, r"^sweep folder: \S+ \(continue or redraw it later with: (.*)\)$")
    hint = _line(err, r"^ueperf: interrupted\. Continue the sweep with: (.*?)  \(finished cells")
    assert started == hint and hint.endswith(f"--out {shlex.quote(str(folder))}")
    assert "expected cost of the sweep (inline launcher)" in err
    assert "run folder:" not in err                                 # --quiet: its cells say nothing
    r = _run(tmp_path, _as_printed(hint), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "run folder:" not in r.stderr
    assert list((tmp_path / "sweeps").iterdir()) == [folder]        # continued, not a new sweep
    for seed in (0, 1):
        recs = (folder / "runs" / f"clean__fs__nt__s{seed}" / "records.jsonl").read_text().splitlines()
        assert [json.loads(x)["epoch"] for x in recs] == list(range(1, 31))


def test_sweep_dry_run_prints_a_first_cell_that_runs_as_printed(tmp_path):
    """--dry-run with cells under torchrun: before the first cell's store exists it names the store
    and prints the sweep command that makes it (run as printed: it runs every cell); once the store
    exists it prints the cell's torchrun command with the store's path (run as printed: the sweep
    then counts the cell as finished)."""
    argv = [sys.executable, "-m", "ueperf.sweep", "--dataset", "synthetic", "--data", "synthetic_train=128",
            "--data", "synthetic_test=32", "--data", "synthetic_size=16", "--recipe", "synthetic_smoke",
            "--protections", "clean,random", "--gpus-per-cell", "2", "--quiet", "--out", "sw",
            *_sets(["train.epochs=1", "train.batch_size=64", "train.threads=1"])]
    r = _run(tmp_path, argv + ["--dry-run"])
    assert r.returncode == 0, r.stderr[-3000:]
    sweep = _line(r.stdout, r"^first cell clean__fs__nt__s0: needs the clean store, which is not made yet; make it "
                            r"and run every cell with: (.*)$")
    assert "<" not in sweep and "--dry-run" not in sweep
    from ueperf.config import DataConfig, apply_overrides
    from ueperf.data import prepare_dataset
    clean = prepare_dataset(apply_overrides(DataConfig(dataset="synthetic", cache_dir=str(tmp_path / "cache")),
                                            ["synthetic_train=128", "synthetic_test=32", "synthetic_size=16"]))
    r = _run(tmp_path, argv + ["--dry-run"])
    assert r.returncode == 0, r.stderr[-3000:]
    cell = shlex.split(_line(r.stdout, r"^first cell \(runs as printed; the sweep reuses its run\): (.*)$"))
    assert cell[0] == sys.executable and f"data.dataset={clean.path}" in cell, cell
    c = _run(tmp_path, cell)
    assert c.returncode == 0, c.stderr[-3000:]
    summary = tmp_path / "sw" / "runs" / "clean__fs__nt__s0" / "summary.json"
    assert json.loads(summary.read_text())["world_size"] == 2
    r = _run(tmp_path, argv + ["--dry-run"])
    assert "1 finished, 1 to run" in r.stdout and _line(r.stdout, r"^first cell random__fs__nt__s0: needs the "
                                                                  r"protected store of random, seed 0, which is not "
                                                                  r"made yet; make it and run every cell with: (.*)$") \
        == sweep
    mtime = summary.stat().st_mtime
    r = _run(tmp_path, _as_printed(sweep), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert summary.stat().st_mtime == mtime                         # the printed cell's run is reused
    assert json.loads((tmp_path / "sw" / "runs" / "random__fs__nt__s0" / "summary.json").read_text())["world_size"] == 2


def test_sweep_tables_carry_the_protections_warnings(tmp_path):
    """EM with stop_error=0 can never pass its stop test: the sweep's table says so under the table,
    also when it is only redrawn (--table-only); its advice sets the cap as a sweep does, for its row."""
    def sweep(label, out):
        return [sys.executable, "-m", "ueperf.sweep", "--dataset", "synthetic", "--data", "synthetic_train=128",
                "--data", "synthetic_test=32", "--data", "synthetic_size=16", "--recipe", "synthetic_smoke",
                "--protections", f"clean,{label}" + ("" if label == "em" else "=em"),
                "--protect-set", f"{label}:width=0.125", "--protect-set", f"{label}:max_rounds=1",
                "--protect-set", f"{label}:stop_error=0", "--quiet", "--out", out,
                *_sets(["train.epochs=1", "train.batch_size=64", "train.threads=1"])]
    argv = sweep("em", "sw")
    note = "Warning: em seed 0: em stopped at its round cap (max_rounds=1) after 1 round with the surrogate at "
    advice = "Raise the cap (--protect-set em:max_rounds=2) or accept it knowingly"   # not protect's --set
    for extra in ([], ["--table-only"]):
        r = _run(tmp_path, argv + extra)
        assert r.returncode == 0, r.stderr[-3000:]
        lines = (tmp_path / "sw" / "table.md").read_text().splitlines()
        assert len([x for x in lines if x.startswith(note)]) == 1, lines
        assert len([x for x in lines if x.startswith(note) and x.endswith(advice)]) == 1, lines
        if not extra:                                               # said when it happens, the same way
            assert re.search(r"^warning: em stopped at its round cap .*" + re.escape(advice) + "$", r.stderr, re.M), \
                r.stderr
    r = _run(tmp_path, sweep("capped", "sw2"))                      # another row label, the same (cached) store
    assert r.returncode == 0, r.stderr[-3000:]
    lines = (tmp_path / "sw2" / "table.md").read_text().splitlines()
    assert len([x for x in lines if x.startswith("Warning: capped seed 0: em stopped at its round cap") and
                x.endswith("Raise the cap (--protect-set capped:max_rounds=2) or accept it knowingly")]) == 1, lines


def test_warning_advice_is_written_for_the_command_at_hand():
    from ueperf.protections.runner import advice_for
    w = "em ...: Raise the cap (--set max_rounds=2) or accept it; try --set steps=N or (--set alpha=...)"
    assert advice_for(w) == w                                       # protect, and what the manifest keeps
    assert advice_for(w, "--protect-set em_class:") == ("em ...: Raise the cap (--protect-set em_class:max_rounds=2) "
                                                         "or accept it; try --protect-set em_class:steps=N or "
                                                         "(--protect-set em_class:alpha=...)")


# ───────────────────────────────────────────── closed pipes, file modes ──
@pytest.mark.parametrize("argv, code", [
    (["ueperf.train", "--print-config"], 141),
    (["ueperf.train", "--list", "keys"], 141),
    (["ueperf.protect", "--list"], 141),
    (["ueperf.protect", "--method", "em", "--print-config"], 141),
    (["ueperf.sweep", "--dataset", "synthetic", "--protections", "clean,random", "--dry-run"], 141),
    # argparse's --help ignores a failed write itself (exit 0); what matters is that it is quiet
    (["ueperf.train", "--help"], 0),
    (["ueperf.calibrate", "--help"], 0),
    (["ueperf.prior", "--help"], 0),
])
def test_a_closed_stdout_pipe_ends_quietly(tmp_path, argv, code):
    """``CMD | head``: the reader is gone before anything is written (closed before the start, so
    the outcome cannot depend on timing); the command ends with 141 (128 + SIGPIPE), no traceback."""
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([sys.executable, "-m", *argv], stdout=w, stderr=subprocess.PIPE, text=True,
                           env=_env(tmp_path), cwd=tmp_path, timeout=300)
    finally:
        os.close(w)
    assert p.returncode == code, p.stderr
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr and "Exception ignored" not in p.stderr


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_run_and_store_files_follow_the_umask(tmp_path, umask):
    from ueperf.data import prepare_dataset
    from ueperf.engine.trainer import train
    from ueperf.protections.runner import generate_protected
    old = os.umask(umask)
    try:
        s = train(_cfg(tmp_path))
        cfg = _cfg(tmp_path)
        store = generate_protected("random", prepare_dataset(cfg.data), cache_dir=tmp_path / "cache", progress=False)
    finally:
        os.umask(old)
    files = [p for p in Path(s["run_dir"]).iterdir() if p.is_file()] + \
            [p for p in Path(store.path).iterdir() if p.is_file()]
    assert {p.name for p in files} >= {"config.json", "records.jsonl", "checkpoint.pt", "summary.json", "manifest.json"}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(0o666 & ~umask) for p in files}


# ───────────────────────────────────────────── cost and warnings ──
def test_gpu_sized_warning_and_durations():
    from ueperf.engine.cost import GPU_SIZED_S, format_duration, gpu_sized_warning
    assert gpu_sized_warning("x", GPU_SIZED_S + 1, "cpu").startswith("x is sized for a GPU: ~")
    assert gpu_sized_warning("x", GPU_SIZED_S - 1, "cpu") is None
    assert gpu_sized_warning("x", 100 * GPU_SIZED_S, "cuda:0") is None
    assert [format_duration(s) for s in (45, 720, 3.4 * 3600, 3 * 86400)] == ["45 s", "12 min", "3.4 h", "3.0 days"]


def test_methods_count_their_image_passes():
    from ueperf.protections.em import EM, EMConfig
    cfg = EMConfig(max_rounds=3, train_steps=2, train_batch_size=8, steps=4)
    assert EM.work(cfg, 90, 10)["passes"] == 3 * (2 * 8 + 90 * 4 + 90 / 3)
    cfg = EMConfig(max_rounds=3, train_steps=2, train_batch_size=8, granularity="class", class_portion=0.5,
                   eot_cg=True, eot=5)                              # class-wise: T = 1 on half the set, 5 EOT draws
    assert EM.work(cfg, 90, 10)["passes"] == 3 * (2 * 8 + 45 * 1 * 5 + 90 / 3)
    from ueperf.protections.aep import AEP, AEPConfig
    from ueperf.protections.hypo import HYPO, HYPOConfig
    from ueperf.protections.rem import REM, REMConfig
    from ueperf.protections.ssc import SSC, SSCConfig
    assert SSC.work(SSCConfig(max_rounds=2, train_steps=3, train_batch_size=4, steps=5), 90, 10)["passes"] == \
        2 * (3 * 4 + 90 * 5 + 90 / 3)
    assert AEP.work(AEPConfig(surrogate_epochs=2, steps=7, restarts=3, eot=2), 90, 10)["passes"] == 90 * 2 + 90 * 7 * 3 * 2
    assert HYPO.work(HYPOConfig(surrogate_epochs=2, steps=7), 90, 10)["passes"] == 90 * 2 + 90 * 7
    rem = REMConfig(iterations=4, batch_size=8, steps=2, eot=3, adv_steps=5)   # a defensive noise: 2·3·(5+1) = 36
    assert REM.work(rem, 90, 10)["passes"] == 4 * 8 * (36 + 5 + 1) + 90 * 36 + 90 / 3
    from ueperf.protections.bait import BAIT, BAITConfig
    bait = BAITConfig(passes=2, batch_size=32, inner_steps=3, steps=4, regen_steps=5)  # 3 batches of 32 per pass
    assert BAIT.work(bait, 90, 10)["passes"] == 2 * (3 * 3 * 32 + 90 * 4 + 90 / 3) + 90 * 5 + 2 * 90 / 3
    bait = BAITConfig(passes=2, batch_size=32, inner_steps=3, steps=4, regen_steps=5, ensemble=True,
                      ensemble_paradigms="ft,pf2,lp", outer_eot=True, eot=2)         # 3 members, 2 EOT draws
    assert BAIT.work(bait, 90, 10)["passes"] == 3 * (2 * (3 * 3 * 32 + 90 * 4 * 2 + 90 / 3) + 90 * 5 * 2 + 2 * 90 / 3)
    from ueperf.protections.ap import AutoregressivePerturbation as AP
    ap = AP.work(AP.Config(), 90, 10)                               # model-free: AR realisations, timed here
    assert ap["passes"] == 256 * 10 + 90 and ap["unit"] == "AR realisations" and ap["measure"](16, 16, 3) > 0
    assert AP.work(AP.Config(search_candidates=100), 90, 10)["passes"] == 100 + 90
    assert AP.work(AP.Config(coeffs="random"), 90, 10)["passes"] == 100 * 10 + 90


def test_ap_and_bait_state_their_cost_before_they_start(tmp_path):
    r = _run(tmp_path, [sys.executable, "-m", "ueperf.protect", "--method", "ap", "--dataset", "synthetic",
                        "--data", "synthetic_train=128", "--data", "synthetic_test=32", "--data", "synthetic_size=16",
                        "--quiet", "--no-grid"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"^expected cost of protecting 128 images with ap: ~\d+ s on cpu \(ap \(~2560 candidate "
                     r"processes for 10 classes, then one realisation per image, on the CPU\): 2\.69e\+03 AR "
                     r"realisations at \d+/s measured\)$", r.stderr, re.M), r.stderr
    from ueperf.data import prepare_dataset
    from ueperf.protections.runner import estimate_cost, resolve_config
    cfg = resolve_config("bait", ["width=0.125", "passes=2", "regen_steps=3"])[1]      # the prior is not needed
    seconds, what = estimate_cost("bait", cfg, prepare_dataset(_cfg(tmp_path).data), "cpu")
    assert seconds > 0 and re.fullmatch(r"bait \(2 passes \+ 3 regeneration steps\): [\d.e+]+ image passes at "
                                        r"\d+ img/s measured", what), what


def test_training_prints_its_cost_first_and_warns_of_a_gpu_sized_cpu_run(tmp_path, capsys, monkeypatch):
    import ueperf.engine.cost as cost
    from ueperf.engine.trainer import train
    s = train(_cfg(tmp_path, name="a", **{"train.progress": "true", "train.epochs": "2"}))
    err = capsys.readouterr().err
    assert re.search(r"expected cost of training \(2 epochs × 2 steps\): ~\d+ s on cpu \(.* s/step measured over "
                     r"step 2; evaluation comes on top\)", err), err
    assert err.index("expected cost") < err.index("epoch   1/2")  # before the first epoch ends
    assert s["expected_time_s"] > 0 and not any("sized for a GPU" in w for w in s["warnings"])
    monkeypatch.setattr(cost, "GPU_SIZED_S", 0.0)
    s = train(_cfg(tmp_path, name="b"))
    gpu = [w for w in s["warnings"] if "sized for a GPU" in w]
    assert len(gpu) == 1 and gpu[0].startswith("this run (1 epoch of 2 steps) is sized for a GPU: ~"), gpu
    assert "sized for a GPU" in capsys.readouterr().err


def test_compile_says_the_first_step_is_slow_before_it_starts(tmp_path, capsys, monkeypatch):
    from ueperf.engine.trainer import Trainer, train
    monkeypatch.setattr(Trainer, "_compile", lambda self: print("COMPILING", file=sys.stderr))
    train(_cfg(tmp_path, **{"train.compile": "true"}))
    err = capsys.readouterr().err
    assert err.index("note: train.compile=true: the first training step") < err.index("COMPILING")


def test_em_at_its_round_cap_and_an_unused_budget_are_warned_of(tmp_path):
    """stop_error=0 can never be met (accuracy > 1), so EM ends at its cap; one PGD step of 0.8/255
    per round for one round moves class-wise noise by at most 1 grey level of the 16 ε=16/255 allows."""
    r = _run(tmp_path, [sys.executable, "-m", "ueperf.protect", "--method", "em", "--dataset", "synthetic",
                        "--data", "synthetic_train=128", "--data", "synthetic_test=32", "--data", "synthetic_size=16",
                        "--quiet", "--no-grid", *_sets(["width=0.125", "max_rounds=1", "stop_error=0",
                                                        "granularity=class", "eps=16/255", "alpha=0.8/255",
                                                        "steps=1"])])
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"^expected cost of protecting 128 images with em: ~\d+ s on cpu \(em at its cap of 1 round ",
                     r.stderr, re.M), r.stderr
    cap = r"em stopped at its round cap \(max_rounds=1\) after 1 round with the surrogate at [\d.]+ % on the"
    budget = r"em \(class-wise, linf ε=16/255\) changes the images by at most 1 of the 16 grey levels ε allows"
    assert "Raise the cap (--set max_rounds=2) or accept it knowingly" in r.stderr    # protect's own option
    for pattern in (cap, budget):
        assert re.search(r"^warning: " + pattern, r.stderr, re.M), r.stderr       # said when it happens
        assert re.search(r"^  warning: " + pattern, r.stdout, re.M), r.stdout     # and in the final report
    store = _line(r.stdout, r"^protected store: (.*)$")
    warnings = json.loads((Path(store) / "manifest.json").read_text())["meta"]["warnings"]
    assert len(warnings) == 2 and re.match(cap, warnings[0]) and re.match(budget, warnings[1])
    assert json.loads(r.stdout.splitlines()[0])["warnings"] == warnings    # the JSON line scripts read


def test_a_protection_that_uses_its_budget_is_not_warned_of(tmp_path):
    from ueperf.data import prepare_dataset
    from ueperf.protections.runner import generate_protected
    store = generate_protected("random", prepare_dataset(_cfg(tmp_path).data), cache_dir=tmp_path / "cache",
                               progress=False)
    assert store.manifest["meta"]["warnings"] == []
