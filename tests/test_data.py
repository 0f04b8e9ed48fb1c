"""Data sources, the uint8 store and prepare_dataset, on the real archives of ../shared/data."""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import threading
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from ueperf.config import DataConfig
from ueperf.data import SOURCES, open_store, prepare_dataset, write_store
from ueperf.data import prepare as prepare_mod
from ueperf.data import store as store_mod
from ueperf.data.sources import cifar as cifar_mod
from ueperf.data.sources._decode import decode_many
from ueperf.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parent.parent
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]


def _cfg(**kw) -> DataConfig:
    return DataConfig(**kw)


def _direct_cifar(folder: Path, name: str):
    """Reference decode, independent of the source code: trusted pickle + explicit plane copy."""
    with open(folder / name, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    data = d[b"data"]
    n = data.shape[0]
    x = np.empty((n, 32, 32, 3), np.uint8)
    for c in range(3):  # row = R plane (1024) | G plane | B plane, each row-major 32 x 32
        x[..., c] = data[:, c * 1024:(c + 1) * 1024].reshape(n, 32, 32)
    return x, np.array(d[b"labels"], np.int64)


# ═════════════════════════════════════════════════════════════ CIFAR ══
def test_cifar_from_folder_matches_direct_decode(cifar_root):
    raw = SOURCES.get("cifar10")(_cfg(dataset="cifar10", root=str(cifar_root)))
    assert raw.train_x.shape == (5438, 32, 32, 3) and raw.train_x.dtype == np.uint8
    assert raw.test_x.shape == (1017, 32, 32, 3)
    assert raw.train_y.dtype == np.int64 and raw.train_y.shape == (5438,)
    assert raw.train_y.min() == 0 and raw.train_y.max() == 9 and raw.test_y.max() == 9
    assert raw.classes == CIFAR10_CLASSES
    # The official first labels: frog (6) in data_batch_1, cat (3) in test_batch.
    assert raw.train_y[0] == 6 and raw.test_y[0] == 3
    folder = cifar_root / "cifar-10-batches-py"
    parts = [_direct_cifar(folder, b) for b in BATCHES[:5]]
    ref_x = np.concatenate([p[0] for p in parts])
    ref_y = np.concatenate([p[1] for p in parts])
    np.testing.assert_array_equal(raw.train_x, ref_x)
    np.testing.assert_array_equal(raw.train_y, ref_y)
    tx, ty = _direct_cifar(folder, "test_batch")
    np.testing.assert_array_equal(raw.test_x, tx)
    np.testing.assert_array_equal(raw.test_y, ty)
    # Pinned pixels of the first training image (R, G, B at the top-left corner).
    assert raw.train_x[0, 0, 0].tolist() == ref_x[0, 0, 0].tolist()
    assert raw.info["batches"]["data_batch_1"]["n"] == 1102


def test_cifar_from_tar_and_flat_folder_equal_folder(cifar_root, cifar_archive):
    a = SOURCES.get("cifar10")(_cfg(root=str(cifar_root)))
    b = SOURCES.get("cifar10")(_cfg(root=str(cifar_archive)))               # .tar.gz read in place
    c = SOURCES.get("cifar10")(_cfg(root=str(cifar_root / "cifar-10-batches-py")))  # batch files directly
    for other in (b, c):
        for k in ("train_x", "train_y", "test_x", "test_y"):
            np.testing.assert_array_equal(getattr(a, k), getattr(other, k))
        assert other.classes == a.classes
    assert "archive" in b.info["description"]


def test_cifar_limits_and_resize(cifar_archive):
    raw = SOURCES.get("cifar10")(_cfg(root=str(cifar_archive), train_limit=100, test_limit=30, image_size=16))
    full = SOURCES.get("cifar10")(_cfg(root=str(cifar_archive)))
    assert raw.train_x.shape == (100, 16, 16, 3) and raw.test_x.shape == (30, 16, 16, 3)
    np.testing.assert_array_equal(raw.train_y, full.train_y[:100])  # first N in file order
    # A 2x bicubic downscale stays close to the 2x2 block mean.
    block = full.train_x[:100].reshape(100, 16, 2, 16, 2, 3).astype(np.float32).mean((2, 4))
    assert np.abs(raw.train_x.astype(np.float32) - block).mean() < 6


class _Evil:
    """Unpickling this runs ``touch <marker>`` through os.system (if the unpickler allows it)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _fake_cifar_folder(tmp_path: Path, cifar_root: Path, replace: dict) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in BATCHES:
        if name in replace:
            (folder / name).write_bytes(replace[name])
        else:
            shutil.copy(cifar_root / "cifar-10-batches-py" / name, folder / name)
    return tmp_path


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "object-array"])
def test_cifar_unpickling_refuses_globals_and_runs_nothing(tmp_path, cifar_root, payload):
    marker = tmp_path / "pwned"
    if payload == "os.system":
        evil = pickle.dumps({b"data": _Evil(marker), b"labels": [0]}, protocol=2)
        expect = "system"
    elif payload == "builtins.eval":
        evil = pickle.dumps({b"data": _Eval(f"open({str(marker)!r}, 'w')"), b"labels": [0]}, protocol=2)
        expect = "__builtin__.eval"  # protocol 2 names builtins the Python 2 way
    else:
        evil = pickle.dumps({b"data": np.array([1, "x"], dtype=object), b"labels": [0]}, protocol=2)
        expect = "object dtype"
    root = _fake_cifar_folder(tmp_path / "c", cifar_root, {"data_batch_2": evil})
    with pytest.raises(DataError, match="refusing to unpickle") as ei:
        SOURCES.get("cifar10")(_cfg(root=str(root)))
    msg = str(ei.value)
    assert expect in msg and "data_batch_2" in msg and "not a CIFAR file" in msg
    assert not marker.exists()


class _Eval:
    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return (eval, (self.code,))


def test_cifar_batch_with_wrong_content(tmp_path, cifar_root):
    bad = pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}, protocol=2)
    root = _fake_cifar_folder(tmp_path, cifar_root, {"data_batch_3": bad})
    with pytest.raises(DataError, match=r"data_batch_3.*\(N, 3072\) uint8"):
        SOURCES.get("cifar10")(_cfg(root=str(root)))


def test_tar_that_is_not_cifar(tmp_path):
    archive = tmp_path / "photos.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        data = b"hello"
        ti = tarfile.TarInfo("photos/readme.txt")
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    with pytest.raises(DataError, match=r"photos\.tar\.gz is not a CIFAR-10 archive.*data_batch_1"):
        SOURCES.get("cifar10")(_cfg(root=str(archive)))
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(os.urandom(1000))
    with pytest.raises(DataError, match=r"cannot read .*junk\.tar\.gz as a tar archive"):
        SOURCES.get("cifar10")(_cfg(root=str(junk)))


def test_cifar_missing_path_says_where_and_what(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as ei:
        SOURCES.get("cifar10")(_cfg(root=str(missing)))
    msg = str(ei.value)
    assert str(missing) in msg and "cifar-10-batches-py" in msg and "data.download" in msg
    with pytest.raises(DataError, match="does not exist"):
        SOURCES.get("cifar100")(_cfg(root=str(tmp_path / "cifar-100-python.tar.gz")))


def test_cifar_default_root_under_cache_dir(tmp_path):
    with pytest.raises(DataError) as ei:
        SOURCES.get("cifar10")(_cfg(cache_dir=str(tmp_path)))
    assert str(tmp_path / "sources" / "cifar10") in str(ei.value)


def test_download_offline_is_a_clear_error(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("Name or service not known")
    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(DataError) as ei:
        SOURCES.get("cifar10")(_cfg(root=str(tmp_path / "c10"), download=True))
    msg = str(ei.value)
    assert "could not download" in msg and str(tmp_path / "c10" / "cifar-10-python.tar.gz") in msg
    assert not list((tmp_path / "c10").glob("*.part-*"))  # no partial file left behind


class _FakeResponse(io.BytesIO):
    headers: dict = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_checks_md5_then_reads_archive(tmp_path, monkeypatch, cifar_archive):
    payload = cifar_archive.read_bytes()
    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout=None: _FakeResponse(payload))
    with pytest.raises(DataError, match="md5"):  # the subset is not the official archive
        SOURCES.get("cifar10")(_cfg(root=str(tmp_path / "a"), download=True))
    assert not (tmp_path / "a" / "cifar-10-python.tar.gz").exists()
    assert not [p for p in (tmp_path / "a").iterdir()] if (tmp_path / "a").exists() else True  # no temp left
    spec = dict(cifar_mod._SPECS["cifar10"], md5=hashlib.md5(payload).hexdigest())
    monkeypatch.setitem(cifar_mod._SPECS, "cifar10", spec)
    raw = SOURCES.get("cifar10")(_cfg(root=str(tmp_path / "b"), download=True))
    assert raw.train_x.shape == (5438, 32, 32, 3)
    assert (tmp_path / "b" / "cifar-10-python.tar.gz").is_file()


# ═════════════════════════════════════════════════════════ ImageFolder ══
def _find_gray_jpeg(tiny_root: Path) -> Path:
    from PIL import Image
    for f in sorted((tiny_root / "train").glob("*/*.JPEG")):
        with Image.open(f) as im:
            if im.mode == "L":
                return f
    pytest.skip("no grayscale JPEG in tiny-imagenet-100")


@pytest.fixture(scope="module")
def small_tree(tiny_subset_root, tmp_path_factory):
    """A 3-class ImageFolder tree of real JPEGs plus a grayscale JPEG, a palette PNG and a CMYK JPEG."""
    from PIL import Image
    tiny_root = tiny_subset_root
    root = tmp_path_factory.mktemp("ifold") / "mini"
    classes = sorted(p.name for p in (tiny_root / "train").iterdir())[:3]
    for split, n in (("train", 4), ("val", 2)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for f in sorted((tiny_root / split / c).glob("*.JPEG"))[:n]:
                shutil.copy(f, root / split / c / f.name)
    gray = _find_gray_jpeg(tiny_root)
    shutil.copy(gray, root / "train" / classes[0] / "z_gray.JPEG")
    rgb_src = sorted((root / "train" / classes[1]).glob("*.JPEG"))[0]
    with Image.open(rgb_src) as im:
        im.convert("P").save(root / "train" / classes[1] / "z_palette.png")
        im.convert("CMYK").save(root / "val" / classes[2] / "z_cmyk.jpg", quality=95)
    (root / "train" / classes[2] / "notes.txt").write_text("not an image")   # ignored
    (root / "classes.tsv").write_text("".join(f"{c}\tdescription of {c}\n" for c in classes))
    return root


def test_imagefolder_dir(small_tree):
    from PIL import Image
    raw = SOURCES.get("imagefolder")(_cfg(root=str(small_tree)))
    classes = sorted(p.name for p in (small_tree / "train").iterdir())
    assert raw.classes == classes
    assert raw.train_x.shape == (3 * 4 + 2, 64, 64, 3) and raw.test_x.shape == (3 * 2 + 1, 64, 64, 3)
    assert raw.train_y.tolist() == [0] * 5 + [1] * 5 + [2] * 4
    assert raw.test_y.tolist() == [0, 0, 1, 1, 2, 2, 2]
    # torchvision ImageFolder order: sorted file names within each class.
    names0 = sorted(p.name for p in (small_tree / "train" / classes[0]).iterdir())
    assert names0[-1] == "z_gray.JPEG"
    with Image.open(small_tree / "train" / classes[0] / names0[0]) as im:
        np.testing.assert_array_equal(raw.train_x[0], np.asarray(im.convert("RGB")))
    with Image.open(small_tree / "train" / classes[0] / "z_gray.JPEG") as im:
        lum = np.asarray(im)
    g = raw.train_x[4]  # grayscale → RGB: three equal channels, equal to the luminance
    assert (g[..., 0] == lum).all() and (g[..., 1] == lum).all() and (g[..., 2] == lum).all()
    with Image.open(small_tree / "train" / classes[1] / "z_palette.png") as im:
        np.testing.assert_array_equal(raw.train_x[9], np.asarray(im.convert("RGB")))
    assert raw.info["class_descriptions"] == [f"description of {c}" for c in classes]


def _make_tar(src: Path, dest: Path, mode: str, arcname: str) -> Path:
    with tarfile.open(dest, mode) as tf:
        tf.add(src, arcname=arcname)
    return dest


@pytest.mark.parametrize("cache_bytes", [512 << 20, 0], ids=["one-pass", "two-pass"])
def test_imagefolder_tar_equals_dir(small_tree, tmp_path, monkeypatch, cache_bytes):
    from ueperf.data.sources import imagefolder as ifmod
    monkeypatch.setattr(ifmod, "_TAR_CACHE_BYTES", cache_bytes)  # 0: re-read members in a 2nd pass
    ref = SOURCES.get("imagefolder")(_cfg(root=str(small_tree)))
    for mode, name, arc in (("w:gz", "mini.tar.gz", "mini"), ("w", "flat.tar", ".")):
        archive = _make_tar(small_tree, tmp_path / name, mode, arc)
        raw = SOURCES.get("imagefolder")(_cfg(root=str(archive), train_limit=8))
        assert raw.classes == ref.classes
        keep = [0, 1, 2, 5, 6, 7, 10, 11]  # round-robin: 3 per class for the first two, 2 for the last
        np.testing.assert_array_equal(raw.train_x, ref.train_x[keep])
        np.testing.assert_array_equal(raw.train_y, ref.train_y[keep])
        np.testing.assert_array_equal(raw.test_x, ref.test_x)
        np.testing.assert_array_equal(raw.test_y, ref.test_y)


def test_imagefolder_truncated_jpeg_names_the_file(small_tree, tmp_path):
    tree = tmp_path / "t"
    shutil.copytree(small_tree, tree)
    victim = sorted((tree / "train").glob("*/*.JPEG"))[2]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as ei:
        SOURCES.get("imagefolder")(_cfg(root=str(tree)))
    assert str(victim) in str(ei.value) and "truncated" in str(ei.value)
    archive = _make_tar(tree, tmp_path / "t.tar.gz", "w:gz", "t")
    with pytest.raises(DataError) as ei:
        SOURCES.get("imagefolder")(_cfg(root=str(archive)))
    assert f"t/train/{victim.parent.name}/{victim.name}" in str(ei.value)


def test_imagefolder_truncation_is_not_padded_even_if_pil_allows_it(small_tree, tmp_path):
    from PIL import ImageFile
    tree = tmp_path / "t"
    shutil.copytree(small_tree, tree)
    victim = sorted((tree / "val").glob("*/*.JPEG"))[0]
    victim.write_bytes(victim.read_bytes()[:-600])
    ImageFile.LOAD_TRUNCATED_IMAGES = True  # some other library set it
    try:
        with pytest.raises(DataError, match=victim.name):
            SOURCES.get("imagefolder")(_cfg(root=str(tree)))
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def test_imagefolder_sizes_must_match_or_resize(small_tree, tmp_path):
    from PIL import Image
    tree = tmp_path / "t"
    shutil.copytree(small_tree, tree)
    cls = sorted(p.name for p in (tree / "train").iterdir())[1]
    Image.new("RGB", (48, 40), (10, 200, 30)).save(tree / "train" / cls / "zz_odd.png")
    with pytest.raises(DataError, match=r"zz_odd\.png is 48x40.*data\.image_size"):
        SOURCES.get("imagefolder")(_cfg(root=str(tree)))
    raw = SOURCES.get("imagefolder")(_cfg(root=str(tree), image_size=32))
    assert raw.train_x.shape == (15, 32, 32, 3) and raw.test_x.shape == (7, 32, 32, 3)
    odd = raw.train_x[raw.train_y == 1][-1]  # the odd file sorts last in its class
    assert np.abs(odd.astype(int) - [10, 200, 30]).max() <= 1


def test_imagefolder_layout_errors(small_tree, tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "absent")):
        SOURCES.get("imagefolder")(_cfg(root=str(tmp_path / "absent")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no train/ folder"):
        SOURCES.get("imagefolder")(_cfg(root=str(tmp_path / "empty")))
    tree = tmp_path / "t"
    shutil.copytree(small_tree, tree)
    (tree / "val" / "n99999999").mkdir()
    shutil.copy(next((tree / "val").glob("*/*.JPEG")), tree / "val" / "n99999999" / "a.JPEG")
    with pytest.raises(DataError, match="n99999999"):
        SOURCES.get("imagefolder")(_cfg(root=str(tree)))
    shutil.rmtree(tree / "val")
    with pytest.raises(DataError, match="no val/ or test/"):
        SOURCES.get("imagefolder")(_cfg(root=str(tree)))


def test_imagefolder_real_archive_stratified_limits(tiny_archive):
    raw = SOURCES.get("imagefolder")(_cfg(root=str(tiny_archive), train_limit=200, test_limit=100))
    assert len(raw.classes) == 100 and raw.classes == sorted(raw.classes)
    assert raw.train_x.shape == (200, 64, 64, 3) and raw.test_x.shape == (100, 64, 64, 3)
    assert np.bincount(raw.train_y, minlength=100).tolist() == [2] * 100   # round-robin over classes
    assert np.bincount(raw.test_y, minlength=100).tolist() == [1] * 100
    assert (np.diff(raw.train_y) >= 0).all()  # kept in ImageFolder order
    assert raw.info["class_descriptions"][0]  # from classes.tsv
    assert raw.info["format"] == "imagefolder-tar"


def test_parallel_decode_equals_serial_and_reports_bad_files(tiny_subset_root, tmp_path):
    files = sorted((tiny_subset_root / "train").glob("*/*.JPEG"))[:40]
    jobs = [(i, str(f), str(f)) for i, f in enumerate(files)]
    serial = decode_many(iter(jobs), total=len(jobs), workers=1)
    parallel = decode_many(iter(jobs), total=len(jobs), workers=2, parallel_min=1)
    np.testing.assert_array_equal(serial, parallel)
    shuffled = [jobs[i] for i in np.random.default_rng(0).permutation(len(jobs))]  # rows, not order
    np.testing.assert_array_equal(decode_many(iter(shuffled), total=len(jobs), workers=2, parallel_min=1),
                                  serial)
    bad = tmp_path / "bad.JPEG"
    bad.write_bytes(files[0].read_bytes()[:300])
    with pytest.raises(DataError, match="bad.JPEG"):
        decode_many(iter(jobs + [(len(jobs), str(bad), str(bad))]), total=len(jobs) + 1, workers=2,
                    parallel_min=1)


# ════════════════════════════════════════════════════ synthetic, embedded ══
def test_synthetic_is_deterministic_and_balanced():
    cfg = _cfg(dataset="synthetic", synthetic_classes=5, synthetic_train=100, synthetic_test=25, synthetic_size=16)
    a, b = SOURCES.get("synthetic")(cfg), SOURCES.get("synthetic")(cfg)
    for k in ("train_x", "train_y", "test_x", "test_y"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert a.train_x.shape == (100, 16, 16, 3) and a.test_x.shape == (25, 16, 16, 3)
    assert np.bincount(a.train_y).tolist() == [20] * 5 and len(a.classes) == 5
    assert not np.array_equal(a.train_x[:25], a.test_x)  # independent draws
    c = SOURCES.get("synthetic")(_cfg(synthetic_classes=5, synthetic_train=100, synthetic_test=25,
                                      synthetic_size=16, train_limit=10))
    np.testing.assert_array_equal(c.train_x, a.train_x[:10])
    # Class-dependent: per-class mean colours differ far more than the noise of the means.
    means = np.stack([a.train_x[a.train_y == k].mean((0, 1, 2)) for k in range(5)])
    assert np.ptp(means, axis=0).max() > 20
    with pytest.raises(ConfigError, match="synthetic_classes"):
        SOURCES.get("synthetic")(_cfg(synthetic_classes=1))
    with pytest.raises(ConfigError, match="data.train_limit=-5"):
        SOURCES.get("synthetic")(_cfg(train_limit=-5))


def test_embedded_sample():
    raw = SOURCES.get("embedded")(_cfg())
    assert raw.train_x.shape == (2000, 32, 32, 3) and raw.test_x.shape == (500, 32, 32, 3)
    assert np.bincount(raw.train_y).tolist() == [200] * 10 and np.bincount(raw.test_y).tolist() == [50] * 10
    assert raw.classes == CIFAR10_CLASSES
    assert raw.info["dataset"] == "cifar10" and "CIFAR-10 sample" in raw.info["description"]


def test_embedded_sample_is_the_real_cifar_subset_and_regenerates(cifar_archive, tmp_path):
    raw = SOURCES.get("embedded")(_cfg())
    full = SOURCES.get("cifar10")(_cfg(root=str(cifar_archive)))
    with np.load(REPO / "ueperf" / "data" / "embedded" / "cifar10_sample.npz") as z:
        tr_index, te_index = z["train_index"], z["test_index"]
    # Official indices → rows of the subset (batch b holds official rows (b-1)*10000 + r).
    counts = [full.info["batches"][f"data_batch_{i}"]["n"] for i in range(1, 6)]
    offsets = np.cumsum([0] + counts[:-1])
    rows = offsets[tr_index // 10000] + tr_index % 10000
    np.testing.assert_array_equal(raw.train_x, full.train_x[rows])
    np.testing.assert_array_equal(raw.test_x, full.test_x[te_index])
    out = tmp_path / "again.npz"
    env = dict(os.environ, UEPERF_SHARED_DATA=str(cifar_archive.parent))
    script = REPO / "scripts" / "make_embedded_sample.py"
    subprocess.run([sys.executable, str(script), "--out", str(out)], check=True, env=env,
                   capture_output=True)
    assert out.read_bytes() == (REPO / "ueperf" / "data" / "embedded" / "cifar10_sample.npz").read_bytes()


# ═══════════════════════════════════════════════════════════════ store ══
def _arrays(n_train=20, n_test=8, size=8, k=4, seed=0):
    rng = np.random.default_rng(seed)
    return ((rng.integers(0, 256, (n_train, size, size, 3), dtype=np.uint8), rng.integers(0, k, n_train)),
            (rng.integers(0, 256, (n_test, size, size, 3), dtype=np.uint8), rng.integers(0, k, n_test)),
            [f"c{i}" for i in range(k)])


def test_store_roundtrip(tmp_path):
    train, test, classes = _arrays()
    s = write_store(tmp_path / "s", train=train, test=test, classes=classes, meta={"seed": 3})
    t = open_store(tmp_path / "s")
    for st in (s, t):
        assert isinstance(st.train.x, np.memmap) and st.train.x.dtype == np.uint8
        assert st.train.y.dtype == np.int64 and not isinstance(st.train.y, np.memmap)
        np.testing.assert_array_equal(st.train.x, train[0])
        np.testing.assert_array_equal(st.test.y, test[1])
        assert len(st.train) == 20 and len(st.test) == 8
        assert st.classes == classes and st.num_classes == 4 and st.image_shape == (8, 8, 3)
        assert st.name == "s" and st.kind == "clean" and st.train.name == "train"
    m = t.manifest
    assert m["meta"] == {"seed": 3} and m["format_version"] == store_mod.FORMAT_VERSION
    assert m["files"]["train_x.npy"]["sha256"] == hashlib.sha256((tmp_path / "s" / "train_x.npy").read_bytes()).hexdigest()
    assert m["splits"]["test"]["x_shape"] == [8, 8, 8, 3] and m["libraries"]["numpy"] == np.__version__
    assert not list(tmp_path.glob(".s.*"))  # no temporary folders left


@pytest.mark.parametrize("case,match", [
    ("float", "dtype float32"),
    ("nchw", r"expected \(N, H, W, 3\)"),
    ("label_range", r"labels span \[0, 7\]"),
    ("length", "20 images but labels"),
    ("split_sizes", "both splits must share one image size"),
    ("no_classes", "classes is empty"),
])
def test_store_rejects_bad_inputs(tmp_path, case, match):
    (tx, ty), (ex, ey), classes = _arrays()
    if case == "float":
        tx = tx.astype(np.float32)
    elif case == "nchw":
        tx = tx.transpose(0, 3, 1, 2)
    elif case == "label_range":
        ty = ty.copy()
        ty[0] = 7
        ty[1] = 0
    elif case == "length":
        ty = ty[:-1]
    elif case == "split_sizes":
        ex = np.zeros((8, 4, 4, 3), np.uint8)
    else:
        classes = []
    with pytest.raises(DataError, match=match):
        write_store(tmp_path / "s", train=(tx, ty), test=(ex, ey), classes=classes)
    assert not (tmp_path / "s").exists() and not list(tmp_path.iterdir())


def test_store_overwrite(tmp_path):
    train, test, classes = _arrays()
    write_store(tmp_path / "s", train=train, test=test, classes=classes)
    with pytest.raises(DataError, match="already exists.*overwrite=True"):
        write_store(tmp_path / "s", train=train, test=test, classes=classes)
    train2, test2, _ = _arrays(seed=1)
    s = write_store(tmp_path / "s", train=train2, test=test2, classes=classes, overwrite=True)
    np.testing.assert_array_equal(open_store(s.path).train.x, train2[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_store_interrupted_write_leaves_nothing_valid(tmp_path, monkeypatch):
    train, test, classes = _arrays()
    real_save = np.save
    calls = []

    def crashing_save(f, arr, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated crash while writing test_x.npy")
        return real_save(f, arr, **kw)

    monkeypatch.setattr(store_mod.np, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        write_store(tmp_path / "s", train=train, test=test, classes=classes)
    monkeypatch.setattr(store_mod.np, "save", real_save)
    assert not (tmp_path / "s").exists()
    with pytest.raises(DataError, match="does not exist"):
        open_store(tmp_path / "s")
    # A failure at the final rename (manifest already written in the temp folder) is also atomic.
    monkeypatch.setattr(store_mod.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(OSError, match="disk gone"):
        write_store(tmp_path / "s", train=train, test=test, classes=classes)
    assert not (tmp_path / "s").exists() and not list(tmp_path.iterdir())


def test_store_killed_mid_write_never_opens_as_valid(tmp_path):
    # A real hard kill (no cleanup handlers run) after two of the four arrays are written.
    code = f"""
import os, signal, numpy as np
from ueperf.data import store
real = np.save
n = [0]
def save(f, a, **kw):
    n[0] += 1
    if n[0] == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    real(f, a, **kw)
store.np.save = save
x = np.zeros((10, 4, 4, 3), np.uint8); y = np.zeros(10, np.int64)
store.write_store({str(tmp_path / 's')!r}, train=(x, y), test=(x, y), classes=['a'])
"""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    assert not (tmp_path / "s").exists()
    leftovers = list(tmp_path.glob(".s.tmp-*"))
    assert len(leftovers) == 1  # the half-written temp folder...
    with pytest.raises(DataError, match="manifest.json is missing"):
        open_store(leftovers[0])  # ...is not a store


def test_open_folder_without_manifest(tmp_path):
    train, test, classes = _arrays()
    s = write_store(tmp_path / "s", train=train, test=test, classes=classes)
    (s.path / "manifest.json").unlink()
    with pytest.raises(DataError, match=r"manifest\.json is missing.*rm -r"):
        open_store(s.path)


def test_open_detects_tampering_truncation_and_bad_manifest(tmp_path):
    train, test, classes = _arrays()
    s = write_store(tmp_path / "s", train=train, test=test, classes=classes)
    fx = s.path / "train_x.npy"
    good = fx.read_bytes()
    tampered = bytearray(good)
    tampered[-1] ^= 0xFF  # one pixel changed; still a valid .npy
    fx.write_bytes(bytes(tampered))
    with pytest.raises(DataError, match=r"train_x\.npy does not match its sha256"):
        open_store(s.path)
    assert open_store(s.path, verify=False).train.x[-1, -1, -1, -1] == tampered[-1]
    fx.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(DataError, match=r"train_x\.npy.*sha256"):
        open_store(s.path)
    with pytest.raises(DataError, match=r"cannot read .*train_x\.npy.*truncated"):
        open_store(s.path, verify=False)
    fx.write_bytes(good)
    np.save(s.path / "test_y.npy", np.zeros(3, np.int64))  # valid .npy, wrong shape
    with pytest.raises(DataError, match=r"test_y\.npy holds int64 \(3,\) but the manifest says int64 \(8,\)"):
        open_store(s.path, verify=False)
    (s.path / "test_y.npy").unlink()
    with pytest.raises(DataError, match=r"test_y\.npy is missing"):
        open_store(s.path, verify=False)
    (s.path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match=r"cannot parse .*manifest\.json"):
        open_store(s.path)


# ═════════════════════════════════════════════════════════════ prepare ══
def test_prepare_caches_and_reuses(tmp_path, monkeypatch, cifar_archive):
    builds = []
    real_write = prepare_mod.write_store

    def counting_write(*a, **k):
        builds.append(a[0])
        return real_write(*a, **k)

    monkeypatch.setattr(prepare_mod, "write_store", counting_write)
    cfg = _cfg(dataset="cifar10", root=str(cifar_archive), cache_dir=str(tmp_path), train_limit=500)
    s1 = prepare_dataset(cfg)
    mtime = (s1.path / "manifest.json").stat().st_mtime_ns
    s2 = prepare_dataset(cfg)
    assert len(builds) == 1 and s2.path == s1.path and s1.path.parent == tmp_path
    assert s1.path.name.startswith("cifar10-") and len(s1.path.name) == len("cifar10-") + 12
    assert (s2.path / "manifest.json").stat().st_mtime_ns == mtime
    assert len(s2.train) == 500 and len(s2.test) == 1017
    m = s2.manifest
    assert m["source"]["root"] == str(cifar_archive) and m["meta"]["data_config"]["train_limit"] == 500
    assert m["source"]["root_sha256"] == hashlib.sha256(cifar_archive.read_bytes()).hexdigest()
    # A field that changes the data gives a new store; one that does not (loader) reuses it.
    s3 = prepare_dataset(_cfg(dataset="cifar10", root=str(cifar_archive), cache_dir=str(tmp_path), train_limit=400))
    s4 = prepare_dataset(_cfg(dataset="cifar10", root=str(cifar_archive), cache_dir=str(tmp_path),
                              train_limit=500, loader="cpu"))
    assert s3.path != s1.path and s4.path == s1.path and len(builds) == 2
    # The store folder itself can be given as the dataset.
    s5 = prepare_dataset(_cfg(dataset=str(s1.path)))
    assert s5.path == s1.path and len(builds) == 2


def test_prepare_rebuilds_when_the_source_changes(tmp_path, small_tree):
    tree = tmp_path / "tree"
    shutil.copytree(small_tree, tree)
    cfg = _cfg(dataset="imagefolder", root=str(tree), cache_dir=str(tmp_path / "cache"))
    s1 = prepare_dataset(cfg)
    cls = sorted(p.name for p in (tree / "val").iterdir())[0]
    shutil.copy(next((tree / "train" / cls).glob("*.JPEG")), tree / "val" / cls / "extra.JPEG")
    s2 = prepare_dataset(cfg)
    assert s2.path != s1.path and len(s2.test) == len(s1.test) + 1


def test_prepare_errors(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'cifar10'"):
        prepare_dataset(_cfg(dataset="cifar1O", cache_dir=str(tmp_path)))
    with pytest.raises(DataError, match="no store at"):
        prepare_dataset(_cfg(dataset=str(tmp_path / "not-here"), cache_dir=str(tmp_path)))
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="manifest.json is missing"):
        prepare_dataset(_cfg(dataset=str(tmp_path / "plain"), cache_dir=str(tmp_path)))
    with pytest.raises(DataError, match=str(tmp_path / "missing")):
        prepare_dataset(_cfg(dataset="imagefolder", root=str(tmp_path / "missing"), cache_dir=str(tmp_path)))


def test_prepare_other_ranks_wait_for_main(tmp_path):
    cfg = _cfg(dataset="synthetic", synthetic_train=64, synthetic_test=16, synthetic_size=8,
               cache_dir=str(tmp_path))
    got = {}

    def waiter():
        got["store"] = prepare_dataset(cfg, rank=1, wait_timeout_s=60, poll_s=0.05)

    t = threading.Thread(target=waiter)
    t.start()
    main = prepare_dataset(cfg, rank=0)
    t.join(timeout=60)
    assert got["store"].path == main.path
    np.testing.assert_array_equal(got["store"].train.x, main.train.x)
    with pytest.raises(DataError, match="timed out"):
        prepare_dataset(_cfg(dataset="synthetic", synthetic_train=65, cache_dir=str(tmp_path)),
                        rank=1, wait_timeout_s=0.2, poll_s=0.05)


def test_prepare_waiting_ranks_see_the_main_failure(tmp_path):
    cfg = _cfg(dataset="imagefolder", root=str(tmp_path / "absent"), cache_dir=str(tmp_path / "cache"))
    errors = {}

    def waiter():
        try:
            prepare_dataset(cfg, is_main=False, wait_timeout_s=60, poll_s=0.05)
        except DataError as e:
            errors["e"] = e

    t = threading.Thread(target=waiter)
    t.start()
    with pytest.raises(DataError, match="does not exist"):
        prepare_dataset(cfg, is_main=True)
    t.join(timeout=60)
    assert "main process failed" in str(errors["e"]) and "does not exist" in str(errors["e"])


def test_prepare_embedded_end_to_end(tmp_path):
    s = prepare_dataset(_cfg(cache_dir=str(tmp_path)))
    assert len(s.train) == 2000 and len(s.test) == 500 and s.num_classes == 10
    assert s.manifest["source"]["dataset"] == "cifar10" and s.name == "embedded"
    assert json.loads((s.path / "manifest.json").read_text())["kind"] == "clean"


def test_class_subsets_split_a_source_into_disjoint_halves(small_tree, cifar_archive):
    """data.classes keeps a subset before the limits, renumbered 0..k-1: the two halves of a source
    (a prior's source and its target) share no class; names work too; bad specs say what exists."""
    full = SOURCES.get("imagefolder")(_cfg(root=str(small_tree)))
    a = SOURCES.get("imagefolder")(_cfg(root=str(small_tree), classes="0:1"))
    b = SOURCES.get("imagefolder")(_cfg(root=str(small_tree), classes="1:3", train_limit=4))
    assert a.classes == full.classes[:1] and b.classes == full.classes[1:]
    assert not set(a.classes) & set(b.classes)
    assert set(a.train_y.tolist()) == {0} and set(b.train_y.tolist()) <= {0, 1}
    np.testing.assert_array_equal(a.train_x, full.train_x[full.train_y == 0])
    assert np.bincount(b.train_y).tolist() == [2, 2]                     # the limit counts kept classes only
    assert b.info["class_subset"]["original_labels"] == [1, 2]
    named = SOURCES.get("imagefolder")(_cfg(root=str(small_tree), classes=f"{full.classes[2]},{full.classes[0]}"))
    assert named.classes == [full.classes[2], full.classes[0]]          # the given order is the label order
    np.testing.assert_array_equal(named.test_x[named.test_y == 0], full.test_x[full.test_y == 2])
    cifar = SOURCES.get("cifar10")(_cfg(root=str(cifar_archive), classes="5:10", train_limit=50))
    assert cifar.classes[0] == "dog" and len(cifar.classes) == 5 and cifar.train_y.max() <= 4
    assert len(cifar.train_y) == 50 and set(np.unique(cifar.test_y).tolist()) == set(range(5))
    for bad, msg in (("3:9", "0 <= A < B <= 3"), ("2:1", "0 <= A < B"), ("x:y", "integer"), ("nope", "unknown")):
        with pytest.raises(ConfigError, match=msg):
            SOURCES.get("imagefolder")(_cfg(root=str(small_tree), classes=bad))
