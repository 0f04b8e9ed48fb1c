"""Nothing lost, nothing mixed (README, Reliability): one writer per run folder and output (two
real processes), --overwrite only for what ueperf wrote and never a command's own input, folder
walks inside the dataset, every config value checked before anything runs, degenerate data
refused or warned of, killed work leaving nothing behind, and errors that say what happened."""
from __future__ import annotations

import io
import json
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from ueperf.config import DataConfig, RunConfig, all_keys
from ueperf.countermeasures import build_hooks
from ueperf.data import prepare_dataset
from ueperf.engine.trainer import train
from ueperf.errors import ConfigError, DataError, ModelError, TrainingDiverged
from ueperf.files import lock_path
from ueperf.recipes import build

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data.synthetic_train=256", "data.synthetic_test=64", "data.synthetic_size=16", "train.batch_size=64",
         "train.progress=false", "train.threads=1"]


def _cli(module, *args, env_extra=None, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", module, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _wait_for_lock(path: Path, proc, timeout=120.0) -> None:
    """Until ``proc`` holds the lock of ``path`` (its lock file names the holder's pid)."""
    t0 = time.monotonic()
    lp = lock_path(path)
    while time.monotonic() - t0 < timeout:
        try:
            if json.loads(lp.read_text() or "{}").get("pid") == proc.pid:
                return
        except (OSError, ValueError):
            pass
        if proc.poll() is not None:
            raise AssertionError(f"the first writer ended before taking its lock: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError(f"no lock on {path} after {timeout} s")


# ───────────────────────────────────────────── one writer at a time ──
def test_a_second_run_into_a_busy_run_folder_is_refused(tmp_path):
    """Run A holds its folder (frozen with SIGSTOP so timing cannot matter); run B with the same name
    and the same or another config, and a --resume of A, are all refused naming A's pid. Once A is
    killed, --resume continues it."""
    base = ["--recipe", "synthetic_smoke", "--set", f"out_dir={tmp_path}", "--set", "name=r",
            "--set", f"data.cache_dir={tmp_path / 'cache'}", *[a for s in SMALL for a in ("--set", s)]]
    a = _cli("ueperf.train", *base, "--set", "train.epochs=2")
    try:
        _wait_for_lock(tmp_path / "r", a)
        t0 = time.monotonic()
        while not (tmp_path / "r" / "config.json").exists() and time.monotonic() - t0 < 120:
            time.sleep(0.05)                                         # A has started its run
        os.kill(a.pid, signal.SIGSTOP)
        for extra in (["--set", "train.epochs=2"], ["--set", "train.epochs=2", "--set", "optim.lr=0.02"],
                      ["--set", "train.epochs=2", "--resume"]):
            b = _cli("ueperf.train", *base, *extra)
            out, err = b.communicate(timeout=300)
            assert b.returncode == 2, (out, err)
            assert f"run folder {tmp_path / 'r'} is in use by pid {a.pid}" in err, err
    finally:
        a.kill()
        a.wait()
    r = _cli("ueperf.train", *base, "--set", "train.epochs=2", "--resume")
    out, err = r.communicate(timeout=300)
    assert r.returncode == 0, err
    recs = [json.loads(line) for line in (tmp_path / "r" / "records.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in recs] == [1, 2]                          # each epoch recorded once, in order
    assert json.loads((tmp_path / "r" / "config.json").read_text())["config"]["optim"]["lr"] == 0.1


def test_two_protections_into_one_output(tmp_path):
    """Protection A (slow EM, frozen while it holds its output) and B with another seed and the same
    --out: B is refused naming A; nothing is written until A finishes."""
    out = tmp_path / "out"
    common = ["--method", "em", "--dataset", "synthetic", "--data", "synthetic_train=128", "--data", "synthetic_test=32",
              "--data", "synthetic_size=16", "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--quiet",
              "--set", "width=0.125", "--set", "max_rounds=50", "--set", "stop_error=0", "--no-grid"]
    a = _cli("ueperf.protect", *common, "--seed", "0")
    try:
        _wait_for_lock(out, a)
        os.kill(a.pid, signal.SIGSTOP)
        b = _cli("ueperf.protect", *common, "--seed", "1")
        _, err = b.communicate(timeout=300)
        assert b.returncode == 2 and f"protected store {out} is in use by pid {a.pid}" in err, err
        assert not out.exists()
    finally:
        a.kill()
        a.wait()


# ───────────────────────────────────────────── what --overwrite may replace ──
@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    from ueperf.protections.runner import generate_protected
    tmp = tmp_path_factory.mktemp("rel")
    clean = prepare_dataset(DataConfig(dataset="synthetic", synthetic_train=64, synthetic_test=16, synthetic_size=8,
                                       cache_dir=str(tmp / "cache")))
    prot = generate_protected("random", clean, out=tmp / "prot", progress=False, grid=False)
    return {"tmp": tmp, "clean": clean, "prot": prot}


def test_overwrite_never_replaces_foreign_folders_or_the_input(stores, tmp_path):
    from ueperf.protect import export_imagefolder
    from ueperf.protections.runner import generate_protected
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("a user's file")
    with pytest.raises(DataError, match=r"refusing to replace .*mine: it holds files ueperf did not write \(thesis\.tex\)"):
        export_imagefolder(stores["prot"].path, mine, overwrite=True, progress=False)
    assert (mine / "thesis.tex").read_text() == "a user's file"
    with pytest.raises(DataError, match="it is this command's own input"):
        export_imagefolder(stores["prot"].path, stores["prot"].path, overwrite=True, progress=False)
    with pytest.raises(DataError, match="lies inside"):
        export_imagefolder(stores["prot"].path, stores["prot"].path / "sub", overwrite=True, progress=False)
    with pytest.raises(DataError, match="it is this command's own input"):  # protecting a store onto itself
        generate_protected("random", stores["clean"], out=stores["clean"].path, overwrite=True, progress=False,
                           grid=False, seed=3)
    assert prepare_dataset(DataConfig(dataset=str(stores["clean"].path))).kind == "clean"   # still there, intact
    # what ueperf wrote is replaced, atomically, with --overwrite only
    out = tmp_path / "exp"
    export_imagefolder(stores["prot"].path, out, progress=False)
    with pytest.raises(DataError, match="already exists; pass --overwrite"):
        export_imagefolder(stores["prot"].path, out, progress=False)
    export_imagefolder(stores["prot"].path, out, overwrite=True, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["test", "train", "ueperf_export.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temp, no lock left behind


# ───────────────────────────────────────────── folder walks ──
def _tree(root: Path) -> Path:
    from PIL import Image
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            Image.fromarray(np.full((8, 8, 3), 40 * (c == "b"), np.uint8)).save(root / split / c / "x.png")
    return root


@pytest.mark.parametrize("link,target,needle", [
    ("train/a/loop", "..", "already part of the dataset"),           # a loop: train/ again, b's images under a
    ("train/a/into_b", "../b", "already part of the dataset"),       # another class's folder
    ("train/a/out", "/", "link out of the dataset folder"),          # outside the dataset
])
def test_folder_walks_stay_inside_the_dataset(tmp_path, link, target, needle):
    root = _tree(tmp_path / "ds")
    os.symlink(target, root / link)
    with pytest.raises(DataError, match=needle):
        prepare_dataset(DataConfig(dataset="imagefolder", root=str(root), cache_dir=str(tmp_path / "c")))


@pytest.mark.parametrize("member", ["train/../evil.png", "/abs/train/a/x.png", "train/a/../../x.png"])
def test_archive_members_outside_the_archive_are_refused_by_name(tmp_path, member):
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="PNG")
    data = buf.getvalue()
    arc = tmp_path / "ds.tar"
    with tarfile.open(arc, "w") as tf:
        for name in ("train/a/x.png", "val/a/x.png", member):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    with pytest.raises(DataError, match=f"member {member!r} has an absolute path or a '..' part"):
        prepare_dataset(DataConfig(dataset="imagefolder", root=str(arc), cache_dir=str(tmp_path / "c")))


# ───────────────────────────────────────────── values checked up front ──
def _numeric_engine_keys():
    cfg = RunConfig()
    out = []
    for key in all_keys(cfg):
        section, _, name = key.partition(".")
        if section not in ("data", "model", "augment", "optim", "train", "parallel"):
            continue
        v = getattr(getattr(cfg, section), name)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append(key)
    return out


@pytest.mark.parametrize("key", _numeric_engine_keys())
def test_every_numeric_engine_value_is_checked_before_anything_runs(key, tmp_path):
    """-1 is nonsense for every count, size, rate and probability of the engine: refused by name when
    the hooks are built (what the CLIs do first), before a run folder exists."""
    cfg = build("synthetic_smoke", [f"{key}=-1", f"out_dir={tmp_path}", "name=x"])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_hooks(cfg)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("key", ["train.eval_every", "train.checkpoint_every", "train.log_every", "train.epochs"])
def test_zero_intervals_are_refused_up_front(key):
    with pytest.raises(ConfigError, match=f"{key}=0"):
        build_hooks(build("synthetic_smoke", [f"{key}=0"]))


def test_one_class_is_refused_and_classes_without_test_images_are_warned_of(tmp_path, capsys):
    base = [*SMALL, f"out_dir={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}", "train.epochs=1"]
    with pytest.raises(DataError, match="holds 1 class"):
        train(build("synthetic_smoke", [*base, "name=one", "data.classes=0:1", "train.batch_size=16"]))
    s = train(build("synthetic_smoke", [*base, "name=few", "data.synthetic_test=3"]))
    assert any("have no test images" in w for w in s["warnings"])
    assert "warning:" in capsys.readouterr().err


# ───────────────────────────────────────────── killed work ──
def test_a_killed_runs_temp_files_are_cleaned_at_the_next_start(tmp_path):
    cfg = build("synthetic_smoke", [*SMALL, "train.epochs=1", f"out_dir={tmp_path}", "name=r",
                                    f"data.cache_dir={tmp_path / 'cache'}"])
    train(cfg)
    d = tmp_path / "r"
    (d / ".checkpoint.pt.tmp-123-abcdef01").write_bytes(b"half a checkpoint")
    (d / ".summary.json.tmp-123-abcdef01").write_text("{")
    train(cfg, resume=True)
    assert not [p for p in d.iterdir() if p.name.startswith(".")]


def test_clean_command_removes_leftovers_but_not_what_a_live_writer_holds(tmp_path):
    import subprocess
    import sys

    from ueperf.clean import clean
    (tmp_path / ".store-a.tmp-99-deadbeef").mkdir()
    (tmp_path / ".store-a.tmp-99-deadbeef" / "train_x.npy").write_bytes(b"x")
    (tmp_path / ".store-b.error").write_text("DataError: ...")
    (tmp_path / ".store-c.tmp-98-cafebabe").mkdir()
    # a live writer of store-c in another process (locks are re-entrant within one process)
    writer = subprocess.Popen([sys.executable, "-c",
                               "import sys; from ueperf.files import hold; h = hold(sys.argv[1]); "
                               "print('held', flush=True); sys.stdin.read()", str(tmp_path / "store-c")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "held"
        assert {p.name for p, _ in clean([tmp_path], dry_run=True)} >= {".store-a.tmp-99-deadbeef", ".store-b.error"}
        clean([tmp_path])
        left = sorted(p.name for p in tmp_path.iterdir())
    finally:
        writer.communicate("", timeout=60)
    assert left == [".store-c.lock", ".store-c.tmp-98-cafebabe"]


# ───────────────────────────────────────────── errors that say what happened ──
def test_a_weights_file_that_wants_to_run_code_is_named_as_such(tmp_path):
    import torch

    from ueperf.models import build_model, load_pretrained

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))
    torch.save({"w": torch.zeros(1), "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ModelError, match=r"asks to call the Python object posix\.system .* nothing from it was run"):
        load_pretrained(build_model("resnet18", 10, 32, width=0.125), tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


def test_cifar_repickled_with_numpy_integer_labels_is_read():
    from ueperf.data.sources.cifar import safe_unpickle
    doc = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [np.int64(3), np.int64(7)]}
    for proto in (2, 4):
        assert [int(v) for v in safe_unpickle(pickle.dumps(doc, protocol=proto), "batch")[b"labels"]] == [3, 7]


def test_a_huge_image_is_refused_before_it_is_decoded(tmp_path):
    from PIL import Image

    from ueperf.data.sources._decode import decode_one
    big = tmp_path / "bomb.png"
    Image.new("1", (9000, 9000)).save(big)              # 81 M pixels, a few kB on disk
    assert big.stat().st_size < 1_000_000
    with pytest.raises(DataError, match="bomb.png is 9000x9000 pixels, more than"):
        decode_one(str(big), str(big))


def test_divergence_without_a_checkpoint_does_not_point_to_one(tmp_path):
    from ueperf.engine.hooks import TrainHook

    class Poison(TrainHook):
        def on_batch(self, trainer, x, y, idx):
            return x * float("nan"), y
    cfg = build("synthetic_smoke", [*SMALL, "train.epochs=1", f"out_dir={tmp_path}", "name=nan",
                                    f"data.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(TrainingDiverged, match="no checkpoint was written before it"):
        train(cfg, hooks=[Poison()])
