"""``python -m ueperf.protect`` end to end with ``random`` on real CIFAR-10 images, the protected
store's checks (tampering is refused with a message naming what is wrong), atomicity when a
generation fails, training on a protected store, and bad input as one clear line (exit 2)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ueperf.config import DataConfig
from ueperf.data import prepare_dataset
from ueperf.data.protected import open_protected
from ueperf.data.store import is_store
from ueperf.files import sha256_file
from ueperf.errors import DataError
from ueperf.protections.runner import generate_protected

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST = 200, 100


def run_cli(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "ueperf.protect", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture(scope="module")
def made(tmp_path_factory, cifar_root):
    """One CLI run: builds the clean 200-image store from the source and protects it."""
    tmp = tmp_path_factory.mktemp("protect_cli")
    cache = tmp / "cache"
    r = run_cli("--method", "random", "--dataset", "cifar10", "--root", str(cifar_root), "--data",
                f"train_limit={N_TRAIN}", "--data", f"test_limit={N_TEST}", "--cache-dir", str(cache), "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    summary = json.loads(r.stdout.splitlines()[0])
    clean = prepare_dataset(DataConfig(dataset="cifar10", root=str(cifar_root), cache_dir=str(cache),
                                       train_limit=N_TRAIN, test_limit=N_TEST))
    return {"tmp": tmp, "cache": cache, "summary": summary, "stdout": r.stdout, "clean": clean,
            "path": Path(summary["store"])}


def _copy(made, name):
    """A private copy of the protected store (beside the original, so its clean source is found)."""
    dst = made["path"].parent / name
    shutil.copytree(made["path"], dst)
    return dst


def _edit_manifest(store_dir, edit, keep_seal=False):
    """Edit the manifest as a careful tamperer without the sealing key would: ``edit(m)`` changes it,
    and the seal, which they cannot recompute, is dropped (``keep_seal``: left as it was)."""
    m = json.loads((store_dir / "manifest.json").read_text())
    edit(m)
    if not keep_seal:
        m.pop("seal", None)
    (store_dir / "manifest.json").write_text(json.dumps(m))
    return m


def _rewrite(store_dir, fname, arr, keep_seal=False):
    """Replace an array file and fix its sha256 in the manifest, as a careful tamperer would."""
    np.save(store_dir / fname, arr, allow_pickle=False)
    _edit_manifest(store_dir, lambda m: m["files"][fname].update(sha256=sha256_file(store_dir / fname)), keep_seal)


# ───────────────────────────────────────────── end to end ──
def test_cli_writes_a_described_store(made):
    s, path, clean = made["summary"], made["path"], made["clean"]
    assert path.parent == made["cache"] / "protected" and path.name.startswith("random-cifar10-")
    assert s["max_abs"] == 8 and s["limit"] == 8 and s["protected"] == N_TRAIN
    assert f"protected store: {path}" in made["stdout"] and f"data.dataset={path}" in made["stdout"]
    st = open_protected(path)
    m = st.manifest["meta"]
    for k in ("method", "config", "eps", "norm", "granularity", "seed", "ratio", "protected_count", "clean_source",
              "clean_hashes", "generation_time_s", "size", "info", "key"):
        assert k in m, k
    assert m["config"] == {"eps": 8 / 255, "norm": "linf", "granularity": "sample", "batch_size": 8192}
    assert m["clean_source"]["path"] == str(clean.path)
    assert m["clean_hashes"]["train_x.npy"] == clean.manifest["files"]["train_x.npy"]["sha256"]
    assert 3.5 < m["size"]["mean_abs"] < 4.5  # U(-8, 8) grey levels, rounded: mean |.| ≈ 4
    assert (path / "grid.png").stat().st_size > 10_000
    # same command again: the keyed store is reused, not regenerated
    assert generate_protected("random", clean, cache_dir=made["cache"], progress=False).path == path


def test_export_imagefolder(made, tmp_path):
    out = tmp_path / "png"
    r = run_cli("export", str(made["path"]), str(out), "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    st = open_protected(made["path"])
    pngs = sorted(out.rglob("*.png"))
    assert len(pngs) == N_TRAIN + N_TEST
    assert sorted(p.name for p in out.iterdir()) == ["test", "train", "ueperf_export.json"]
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(st.classes)
    for split in (st.train, st.test):
        files = sorted((out / split.name).rglob("*.png"))
        assert len(files) == len(split)
        for f in files:
            i = int(f.stem)
            assert f.parent.name == st.classes[int(split.y[i])]
            np.testing.assert_array_equal(np.asarray(Image.open(f).convert("RGB")), split.x[i])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp folder renamed away
    r = run_cli("export", str(made["path"]), str(out), "--quiet")     # refuses to overwrite silently
    assert r.returncode == 2 and "already exists" in r.stderr and "Traceback" not in r.stderr


def test_torchrun_shards_generation_and_gives_the_same_bytes(made):
    """2 gloo processes each craft arange(N)[rank::2]; the gathered δ and the store are the bytes
    one process writes."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = made["tmp"] / "dist"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                        "-m", "ueperf.protect", "--method", "random", "--dataset", str(made["clean"].path),
                        "--set", "batch_size=64", "--out", str(out), "--device", "cpu", "--quiet"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "(2 processes)" in r.stdout and r.stdout.count("protected store:") == 1  # rank 0 reports
    one = generate_protected("random", made["clean"], overrides=["batch_size=64"], out=made["tmp"] / "one",
                             device="cpu", progress=False, grid=False)
    two = open_protected(out)
    assert two.manifest["meta"]["world_size"] == 2
    assert two.manifest["files"]["train_x.npy"]["sha256"] == one.manifest["files"]["train_x.npy"]["sha256"]


# ───────────────────────────────────────────── tampering ──
def test_pixel_past_eps_is_refused(made):
    d = _copy(made, "tamper-eps")
    x = np.load(d / "train_x.npy")
    c = made["clean"].train.x
    x[17] = c[17]
    x[17, 5, 5, 0] = min(255, int(c[17, 5, 5, 0]) + 20) if c[17, 5, 5, 0] < 200 else int(c[17, 5, 5, 0]) - 20
    _rewrite(d, "train_x.npy", x)
    with pytest.raises(DataError, match=r"training image 17 is perturbed by 20\.00 grey levels .* at most 8\.00"):
        open_protected(d)
    # the trainer opens store folders through prepare_dataset: the same check applies there
    with pytest.raises(DataError, match="training image 17"):
        prepare_dataset(DataConfig(dataset=str(d)))


def test_truncated_array_is_refused(made):
    d = _copy(made, "tamper-trunc")
    with open(d / "train_x.npy", "r+b") as f:
        f.truncate(os.path.getsize(d / "train_x.npy") // 2)
    with pytest.raises(DataError, match="train_x.npy"):
        open_protected(d)


def test_other_clean_source_is_refused(made, cifar_root):
    other = prepare_dataset(DataConfig(dataset="cifar10", root=str(cifar_root), cache_dir=str(made["cache"]),
                                       train_limit=N_TRAIN + 1, test_limit=N_TEST))
    d = _copy(made, "tamper-source")
    m = _edit_manifest(d, lambda m: m["meta"]["clean_source"].update(path=str(other.path)))
    with pytest.raises(DataError, match="was made from a different clean dataset: train_x.npy"):
        open_protected(d)
    # ... and a missing clean source says how to get it back
    m["meta"]["clean_source"]["path"] = str(made["tmp"] / "gone" / "cifar10-000000000000")
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="clean source store .* is missing.*clean=CLEAN_STORE_PATH"):
        open_protected(d)
    assert open_protected(d, clean=made["clean"].path).path == d


def test_changed_test_split_and_untouched_rows_are_refused(made):
    d = _copy(made, "tamper-test")
    t = np.load(d / "test_x.npy")
    t[3] = 255 - t[3]
    _rewrite(d, "test_x.npy", t)
    with pytest.raises(DataError, match="test images"):
        open_protected(d)
    # partial protection: rows outside the subset must stay byte-identical to the clean ones
    part = generate_protected("random", made["clean"], ratio=0.5, seed=1, out=made["tmp"] / "half",
                              progress=False, grid=False)
    from ueperf.data.protected import protected_indices
    idx = protected_indices(part)
    assert len(idx) == N_TRAIN // 2
    d2 = _copy({"path": part.path}, "tamper-outside")
    x = np.load(d2 / "train_x.npy")
    j = int(np.setdiff1d(np.arange(N_TRAIN), idx)[0])
    x[j, 0, 0] = (x[j, 0, 0].astype(np.int16) + 1).clip(0, 255).astype(np.uint8) if x[j, 0, 0, 0] < 255 else x[j, 0, 0] - 1
    _rewrite(d2, "train_x.npy", x)
    with pytest.raises(DataError, match=f"training image {j} is outside the protected subset"):
        open_protected(d2)


def test_an_edited_sealed_manifest_is_refused(made):
    """Any edit of a store this user's ueperf wrote breaks its seal, even one that keeps every hash
    consistent (and the seal in place)."""
    d = _copy(made, "tamper-sealed")
    x = np.load(d / "train_x.npy")
    x[0] = made["clean"].train.x[0]
    _rewrite(d, "train_x.npy", x, keep_seal=True)
    with pytest.raises(DataError, match="was edited after ueperf wrote it"):
        open_protected(d)


def test_a_raised_budget_claim_is_refused(made):
    """Pixels moved by 41 grey levels with meta.eps raised to 1.0 (hashes fixed, seal dropped): the
    method's recorded config still says 8/255."""
    d = _copy(made, "tamper-budget")
    x = np.load(d / "train_x.npy").astype(np.int16)
    x[4] = np.clip(made["clean"].train.x[4].astype(np.int16) + 41, 0, 255)
    _rewrite(d, "train_x.npy", x.astype(np.uint8))
    _edit_manifest(d, lambda m: m["meta"].update(eps=1.0))
    with pytest.raises(DataError, match=r"eps=1 but the method's config says eps=0\.0313725"):
        open_protected(d)
    # config and meta raised together: a consistent claim of ε = 1 — but the recorded size is not the data's
    _edit_manifest(d, lambda m: m["meta"]["config"].update(eps=1.0))
    with pytest.raises(DataError, match="the manifest says the largest perturbation is 8 but the images show 41"):
        open_protected(d)


def test_a_protected_store_relabelled_clean_is_refused(made):
    d = _copy(made, "tamper-kind")
    _edit_manifest(d, lambda m: m.update(kind="clean"))
    with pytest.raises(DataError, match="says kind 'clean' but it records a protection"):
        prepare_dataset(DataConfig(dataset=str(d)))


def test_an_edited_cached_clean_store_is_not_served(made, cifar_root, tmp_path, capsys):
    """A clean cache store whose pixels and hashes were changed and whose seal was dropped is not served
    on the next cache hit (it would silently become the 'clean' data of every run): it is rebuilt from
    the source, with a warning saying why."""
    cfg = DataConfig(dataset="cifar10", root=str(cifar_root), cache_dir=str(tmp_path), train_limit=64, test_limit=32)
    st = prepare_dataset(cfg)
    assert st.sealed == "ours" and prepare_dataset(cfg).path == st.path
    x = np.load(st.path / "train_x.npy")
    x[0] = 255 - x[0]
    _rewrite(st.path, "train_x.npy", x)
    capsys.readouterr()
    again = prepare_dataset(cfg)
    assert "rebuilding the cached store" in capsys.readouterr().err
    assert again.path == st.path and again.sealed == "ours"
    assert np.array_equal(np.asarray(again.train.x[0]), 255 - x[0])  # the source's pixels again
    # a store of another user's key (a foreign seal) is rebuilt the same way
    man = json.loads((st.path / "manifest.json").read_text())
    man["seal"] = "0" * len(man["seal"])
    (st.path / "manifest.json").write_text(json.dumps(man))
    assert prepare_dataset(cfg).sealed == "ours" and "rebuilding" in capsys.readouterr().err


# ───────────────────────────────────────────── interrupted generation ──
def test_failed_generation_leaves_no_store(made, monkeypatch):
    from ueperf.protections.random_noise import RandomNoise
    out = made["tmp"] / "interrupted"

    def boom(self, ctx):
        ctx.log({"round": 1})
        raise RuntimeError("simulated crash in the method")
    monkeypatch.setattr(RandomNoise, "generate", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_protected("random", made["clean"], out=out, seed=5, progress=False)
    assert not out.exists()
    monkeypatch.undo()

    # a crash while the store is being written (after the first array file)
    import ueperf.data.store as store_mod
    real, calls = store_mod.sha256_file, []

    def flaky(path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("simulated disk failure")
        return real(path, *a, **k)
    monkeypatch.setattr(store_mod, "sha256_file", flaky)
    with pytest.raises(OSError, match="simulated disk failure"):
        generate_protected("random", made["clean"], out=out, seed=5, progress=False)
    assert not out.exists() and not is_store(out)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]  # no leftovers
    monkeypatch.undo()
    assert open_protected(generate_protected("random", made["clean"], out=out, seed=5, progress=False).path)


# ───────────────────────────────────────────── training on it ──
def test_trainer_trains_on_protected_store_with_clean_test_set(made, tmp_path):
    from ueperf.config import apply_overrides
    from ueperf.engine.trainer import Trainer
    from ueperf.recipes import build
    cfg = build("demo")
    apply_overrides(cfg, [f"data.dataset={made['path']}", "model.width=0.125", "train.epochs=1",
                          "train.batch_size=64", "train.device=cpu", "train.progress=false",
                          f"out_dir={tmp_path}", "name=victim"])
    tr = Trainer(cfg).setup()
    prot, clean = open_protected(made["path"]), made["clean"]
    assert tr.store.kind == "protected"
    np.testing.assert_array_equal(tr.store.train.x, prot.train.x)           # the protected images ...
    assert not np.array_equal(tr.store.train.x, clean.train.x)
    np.testing.assert_array_equal(tr.store.test.x, clean.test.x)             # ... and the clean test set
    np.testing.assert_array_equal(tr.store.test.y, clean.test.y)
    s = tr.fit()
    tr.close()
    assert s["epochs"] == 1 and s["final_test_acc"] is not None
    assert tr.records[-1]["test_images"] == N_TEST and s["dataset"] == made["path"].name


# ───────────────────────────────────────────── bad input ──
@pytest.mark.parametrize("args, needle", [
    (["--method", "randm"], "unknown protection 'randm'. Did you mean 'random'"),
    (["--method", "random", "--set", "epss=0.1"], "no such config key. Did you mean 'eps'"),
    (["--method", "random", "--set", "eps=big"], "expected a number"),
    (["--method", "random", "--ratio", "0"], "--ratio 0.0: must be in (0, 1]"),
    (["--method", "random", "--ratio", "1.5"], "--ratio 1.5: must be in (0, 1]"),
    (["--method", "random", "--set", "norm=l3"], "norm='l3'"),
    (["--method", "random", "--seed", "-1"], "seed=-1: must be >= 0"),
    (["--method", "random", "--dataset", "/nonexistent/store"], "/nonexistent/store"),
    (["--dataset", "cifar10"], "--method is required"),
])
def test_bad_input_is_one_clear_line(args, needle, tmp_path, capsys):
    from ueperf.cli import run_cli as cli
    from ueperf.protect import main
    argv = list(args) + (["--dataset", "embedded"] if "--dataset" not in args else []) + ["--cache-dir", str(tmp_path), "--quiet"]
    with pytest.raises(SystemExit) as e:
        cli(lambda: main(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "protected").exists()  # nothing written


def test_list_and_print_config(capsys):
    from ueperf.protect import main
    assert main(["--list"]) == 0
    assert "random" in capsys.readouterr().out.split()
    assert main(["--method", "random", "--set", "eps=16/255", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["eps"] == pytest.approx(16 / 255)
