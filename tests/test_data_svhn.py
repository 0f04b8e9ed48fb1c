"""The SVHN source and its MATLAB v5 reader, on small files written here in the official layout.

The files are made by a minimal MATLAB v5 writer of this module (uncompressed, zlib-compressed,
big-endian, a double class stored as uint8 as MATLAB does) and, where scipy is installed, by
``scipy.io.savemat`` too, which also checks that the writer here writes what MATLAB readers read.
"""
from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import pytest

from ueperf.config import DataConfig
from ueperf.data import SOURCES, prepare_dataset
from ueperf.data.sources import svhn as svhn_mod
from ueperf.data.sources._mat5 import read_mat5
from ueperf.errors import DataError

N_TRAIN, N_TEST = 30, 10

# ─────────────────────────────────────────────── a tiny MATLAB v5 writer ──
_MI = {"i1": 1, "u1": 2, "i2": 3, "u2": 4, "i4": 5, "u4": 6, "f4": 7, "f8": 9}
_MX = {"f8": 6, "f4": 7, "i1": 8, "u1": 9, "i2": 10, "u2": 11, "i4": 12, "u4": 13}
MX_CHAR = 4


def _element(order: str, mi: int, data: bytes) -> bytes:
    if len(data) <= 4:  # small data element: count | type in one word, data in the other
        return struct.pack(order + "I", (len(data) << 16) | mi) + data.ljust(4, b"\0")
    return struct.pack(order + "II", mi, len(data)) + data + b"\0" * (-len(data) % 8)


def _matrix(order: str, name: str, arr: np.ndarray, stored: Optional[str] = None,
            cls: Optional[int] = None) -> bytes:
    """One miMATRIX element; ``stored``: the data's type when narrower than the class's."""
    arr = np.asarray(arr)
    kind = arr.dtype.str[1:]
    stored = stored or kind
    flags = struct.pack(order + "II", cls if cls is not None else _MX[kind], 0)
    dims = np.array(arr.shape, dtype=order + "i4").tobytes()
    data = arr.astype(np.dtype(order + stored)).tobytes(order="F")  # column-major, the file's byte order
    body = (_element(order, 6, flags) + _element(order, 5, dims) + _element(order, 1, name.encode())
            + _element(order, _MI[stored], data))
    return struct.pack(order + "II", 14, len(body)) + body


def write_mat(path: Path, variables: Dict[str, Tuple], *, compress: bool, order: str = "<") -> Path:
    """``variables``: name → (array,) or (array, stored type) or (array, stored, class)."""
    text = b"MATLAB 5.0 MAT-file, Platform: test, Created on: ueperf tests".ljust(116, b" ")
    out = [text, b"\0" * 8, struct.pack(order + "H", 0x0100), b"IM" if order == "<" else b"MI"]
    for name, spec in variables.items():
        m = _matrix(order, name, *spec)
        if compress:
            c = zlib.compress(m)
            m = struct.pack(order + "II", 15, len(c)) + c
        out.append(m)
    path.write_bytes(b"".join(out))
    return path


# ─────────────────────────────────────────────── data in the official layout ──
def _images(n: int, seed: int) -> np.ndarray:
    """(n, 32, 32, 3) uint8 NHWC, random, plus an asymmetric marker to pin the orientation."""
    x = np.random.default_rng(seed).integers(0, 200, (n, 32, 32, 3), dtype=np.uint8)
    x[:, 0, 5, 2] = 255       # row 0, column 5, blue
    x[:, 7, 0, 0] = 254       # row 7, column 0, red
    return x


def _labels(n: int, offset: int) -> np.ndarray:
    """Official labels 1..10 (10 = digit 0), every value present."""
    return (np.arange(n) + offset) % 10 + 1


def _official(x: np.ndarray) -> np.ndarray:
    return x.transpose(1, 2, 3, 0)  # X(:, :, :, i) = image i, rows x columns x RGB


TRAIN_X, TRAIN_L = _images(N_TRAIN, 0), _labels(N_TRAIN, 0)
TEST_X, TEST_L = _images(N_TEST, 1), _labels(N_TEST, 3)


def _write_split(path: Path, x: np.ndarray, labels: np.ndarray, variant: str) -> None:
    y = labels.astype(np.float64).reshape(-1, 1)
    if variant.startswith("scipy"):
        sio = pytest.importorskip("scipy.io", reason="scipy not installed: the savemat variant needs it")
        sio.savemat(str(path), {"X": _official(x), "y": y}, do_compression=variant == "scipy-v7")
    elif variant == "v6":
        write_mat(path, {"X": (_official(x),), "y": (y,)}, compress=False)
    elif variant == "v7":
        write_mat(path, {"X": (_official(x),), "y": (y, "u1")}, compress=True)  # MATLAB stores y as uint8
    elif variant == "big-endian":
        write_mat(path, {"y": (y, "u2"), "X": (_official(x),)}, compress=False, order=">")
    else:
        raise AssertionError(variant)


def make_svhn(folder: Path, variant: str = "v7", splits=("train", "test")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = {"train": (TRAIN_X, TRAIN_L), "test": (TEST_X, TEST_L)}
    for s in splits:
        _write_split(folder / svhn_mod.FILES[s][0], *data[s], variant)
    return folder


def _cfg(**kw) -> DataConfig:
    return DataConfig(dataset="svhn", **kw)


# ═══════════════════════════════════════════════════════════ the reader ══
@pytest.mark.parametrize("compress", [False, True], ids=["v6", "v7"])
def test_writer_here_is_what_scipy_reads_and_reader_matches_scipy(tmp_path, compress):
    sio = pytest.importorskip("scipy.io", reason="scipy not installed")
    arrays = {"X": _official(TRAIN_X[:4]), "y": TRAIN_L[:4].astype(np.float64).reshape(-1, 1),
              "w": np.arange(6, dtype=np.int16).reshape(2, 3), "s": np.array([[7]], np.uint8)}
    ours = write_mat(tmp_path / "ours.mat", {k: (v,) for k, v in arrays.items()}, compress=compress)
    theirs = tmp_path / "theirs.mat"
    sio.savemat(str(theirs), arrays, do_compression=compress)
    for path in (ours, theirs):
        ref = sio.loadmat(str(path))
        got = read_mat5(path, list(arrays))
        for k, v in arrays.items():
            assert np.array_equal(ref[k], v) and ref[k].dtype == v.dtype  # the writer here is real v5
            assert got[k].dtype == v.dtype and got[k].shape == v.shape and np.array_equal(got[k], v), (path, k)


def test_reader_converts_a_narrow_stored_type_to_the_class(tmp_path):
    y = np.array([[1.0], [10.0], [3.0]])
    for order in ("<", ">"):
        p = write_mat(tmp_path / f"y{order == '<'}.mat", {"y": (y, "u1")}, compress=False, order=order)
        got = read_mat5(p, ["y"])["y"]
        assert got.dtype == np.float64 and got.shape == (3, 1) and np.array_equal(got, y)


# ═══════════════════════════════════════════════════════════ the source ══
VARIANTS = ["v6", "v7", "big-endian", "scipy-v6", "scipy-v7"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_svhn_pixels_orientation_and_labels(tmp_path, variant):
    root = make_svhn(tmp_path / "svhn", variant)
    raw = SOURCES.get("svhn")(_cfg(root=str(root)))
    assert raw.train_x.shape == (N_TRAIN, 32, 32, 3) and raw.train_x.dtype == np.uint8
    assert raw.test_x.shape == (N_TEST, 32, 32, 3) and raw.train_x.flags.c_contiguous
    assert np.array_equal(raw.train_x, TRAIN_X) and np.array_equal(raw.test_x, TEST_X)
    # X[:, :, :, i] is image i as rows x columns x RGB: the markers land where they were put.
    off = _official(TRAIN_X)
    for i in (0, 7, N_TRAIN - 1):
        assert np.array_equal(raw.train_x[i], off[:, :, :, i])
    assert (raw.train_x[:, 0, 5, 2] == 255).all() and (raw.train_x[:, 7, 0, 0] == 254).all()
    # labels 1..10 with 10 = digit 0 → 0..9, class name = digit
    assert raw.classes == [str(d) for d in range(10)]
    assert raw.train_y.dtype == np.int64 and np.array_equal(raw.train_y, TRAIN_L % 10)
    assert np.array_equal(raw.test_y, TEST_L % 10)
    assert 10 in TRAIN_L and 0 in raw.train_y and raw.train_y.max() == 9
    assert raw.info["source"] == "svhn"


def test_svhn_store_manifest_records_file_hashes(tmp_path):
    root = make_svhn(tmp_path / "svhn", "v7")
    st = prepare_dataset(_cfg(root=str(root), cache_dir=str(tmp_path / "cache"), train_limit=20))
    files = st.manifest["source"]["files"]
    for s in ("train", "test"):
        name = svhn_mod.FILES[s][0]
        data = (root / name).read_bytes()
        assert files[name]["sha256"] == hashlib.sha256(data).hexdigest()
        assert files[name]["bytes"] == len(data) and files[name]["md5_checked"] is False
    assert files["train_32x32.mat"]["images"] == N_TRAIN  # the file, before train_limit
    assert st.name == "svhn" and st.classes == [str(d) for d in range(10)]
    assert np.array_equal(np.asarray(st.train.x), TRAIN_X[:20]) and np.array_equal(st.test.y, TEST_L % 10)
    # Same config: the cached store is reused; an edited file makes a new one.
    assert prepare_dataset(_cfg(root=str(root), cache_dir=str(tmp_path / "cache"), train_limit=20)).path == st.path
    _write_split(root / "test_32x32.mat", TEST_X[::-1].copy(), TEST_L[::-1].copy(), "v6")
    st2 = prepare_dataset(_cfg(root=str(root), cache_dir=str(tmp_path / "cache"), train_limit=20))
    assert st2.path != st.path and np.array_equal(np.asarray(st2.test.x), TEST_X[::-1])


# ═══════════════════════════════════════════════════════════ downloads ══
class _FakeResponse(io.BytesIO):
    headers: dict = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _serve(monkeypatch, files: Dict[str, bytes], calls: list) -> None:
    def urlopen(url, timeout=None):
        calls.append(url)
        return _FakeResponse(files[url.rsplit("/", 1)[1]])
    monkeypatch.setattr("urllib.request.urlopen", urlopen)


def test_svhn_download_refuses_a_wrong_md5_then_accepts_the_right_one(tmp_path, monkeypatch):
    src = make_svhn(tmp_path / "made", "v7")
    payload = {p.name: p.read_bytes() for p in src.iterdir()}
    calls: list = []
    _serve(monkeypatch, payload, calls)
    dest = tmp_path / "dl"
    with pytest.raises(DataError, match=r"md5 is [0-9a-f]{32}, expected e26dedcc434d2e4c54c9b2d4a06d8373") as ei:
        SOURCES.get("svhn")(_cfg(root=str(dest), download=True))  # not the official files
    assert "train_32x32.mat" in str(ei.value) and calls == [svhn_mod.URL + "train_32x32.mat"]
    assert not dest.exists() or not list(dest.iterdir())  # nothing kept, no temp file left

    official = {s: (n, hashlib.md5(payload[n]).hexdigest()) for s, (n, _) in svhn_mod.FILES.items() if n in payload}
    monkeypatch.setattr(svhn_mod, "FILES", dict(svhn_mod.FILES, **official))
    calls.clear()
    raw = SOURCES.get("svhn")(_cfg(root=str(dest), download=True))
    assert calls == [svhn_mod.URL + "train_32x32.mat", svhn_mod.URL + "test_32x32.mat"]
    assert np.array_equal(raw.train_x, TRAIN_X) and np.array_equal(raw.test_y, TEST_L % 10)
    assert all(f["md5_checked"] for f in raw.info["files"].values())
    assert sorted(p.name for p in dest.iterdir()) == ["test_32x32.mat", "train_32x32.mat"]

    # Only what is missing is fetched; files in place are used as they are.
    (dest / "test_32x32.mat").unlink()
    calls.clear()
    raw = SOURCES.get("svhn")(_cfg(root=str(dest), download=True))
    assert calls == [svhn_mod.URL + "test_32x32.mat"]
    assert raw.info["files"]["train_32x32.mat"]["md5_checked"] is False


def test_svhn_download_offline_says_where_to_put_the_file(tmp_path, monkeypatch):
    import urllib.error

    def offline(*a, **k):
        raise urllib.error.URLError("Name or service not known")
    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(DataError) as ei:
        SOURCES.get("svhn")(_cfg(root=str(tmp_path / "s"), download=True))
    msg = str(ei.value)
    assert "could not download" in msg and str(tmp_path / "s" / "train_32x32.mat") in msg
    assert "folder holding train_32x32.mat and test_32x32.mat" in msg


# ═══════════════════════════════════════════════════════════ errors ══
def test_svhn_missing_files_say_where_to_put_which(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as ei:
        SOURCES.get("svhn")(_cfg(root=str(missing)))
    msg = str(ei.value)
    for part in (str(missing), "does not exist", "train_32x32.mat", "test_32x32.mat", svhn_mod.URL,
                 "data.download=true", "data.root"):
        assert part in msg, part
    half = make_svhn(tmp_path / "half", "v6", splits=("train",))
    with pytest.raises(DataError, match=r"half lacks test_32x32\.mat\. Put the official files"):
        SOURCES.get("svhn")(_cfg(root=str(half)))
    with pytest.raises(DataError, match=r"is a file; for SVHN it is the folder holding"):
        SOURCES.get("svhn")(_cfg(root=str(half / "train_32x32.mat")))
    with pytest.raises(DataError) as ei:  # default root: under the cache folder
        SOURCES.get("svhn")(_cfg(cache_dir=str(tmp_path / "c")))
    assert str(tmp_path / "c" / "sources" / "svhn") in str(ei.value)


def test_v73_hdf5_file_is_refused(tmp_path):
    root = make_svhn(tmp_path / "svhn", "v6", splits=("test",))
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    head = text.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02" + b"IM"
    (root / "train_32x32.mat").write_bytes(head.ljust(512, b"\0") + b"\x89HDF\r\n\x1a\n" + b"\0" * 600)
    with pytest.raises(DataError, match=r"train_32x32\.mat is a MATLAB v7\.3 file \(HDF5\).*-v7"):
        SOURCES.get("svhn")(_cfg(root=str(root)))


@pytest.mark.parametrize("content, match", [
    (b"", "too short to be a MATLAB .mat file"),
    (b"\x89HDF\r\n\x1a\n" + b"\0" * 200, "is an HDF5 file"),
    (b"\0" * 200, "not a MATLAB v5 .mat file"),
    (b"MATLAB 5.0 MAT-file".ljust(124, b" ") + b"\x00\x01XX", "endian indicator"),
])
def test_files_that_are_not_v5_mat_are_refused(tmp_path, content, match):
    p = tmp_path / "x.mat"
    p.write_bytes(content)
    with pytest.raises(DataError, match=match):
        read_mat5(p, ["X"])


def test_unexpected_variables_are_clear_errors(tmp_path):
    root = make_svhn(tmp_path / "svhn", "v6", splits=("test",))
    y = TRAIN_L.astype(np.float64).reshape(-1, 1)
    train = root / "train_32x32.mat"
    write_mat(train, {"X": (_official(TRAIN_X),), "labels": (y,)}, compress=True)
    with pytest.raises(DataError, match=r"has no variable 'y' \(it holds 'X', 'labels'\)"):
        SOURCES.get("svhn")(_cfg(root=str(root)))
    write_mat(train, {"X": (np.zeros((2, 3), np.uint16), "u2", MX_CHAR), "y": (y,)}, compress=False)
    with pytest.raises(DataError, match=r"variable 'X' is a char array value, expected a numeric array"):
        SOURCES.get("svhn")(_cfg(root=str(root)))
    write_mat(train, {"X": (_official(TRAIN_X).astype(np.float64),), "y": (y,)}, compress=True)
    with pytest.raises(DataError, match=r"'X' is float64 \(32, 32, 3, 30\); an SVHN file holds X as"):
        SOURCES.get("svhn")(_cfg(root=str(root)))
    write_mat(train, {"X": (_official(TRAIN_X),), "y": (y[:-1],)}, compress=False)
    with pytest.raises(DataError, match=r"30 images in 'X' but 'y' has shape \(29, 1\)"):
        SOURCES.get("svhn")(_cfg(root=str(root)))
    bad = y.copy()
    bad[3] = 0.0  # a label 0 is not in the official files (the digit 0 is 10)
    write_mat(train, {"X": (_official(TRAIN_X),), "y": (bad,)}, compress=False)
    with pytest.raises(DataError, match=r"labels outside 1\.\.10 \(e\.g\. \[0\.0\]\)"):
        SOURCES.get("svhn")(_cfg(root=str(root)))


def test_truncated_and_corrupt_files_are_clear_errors(tmp_path):
    full = write_mat(tmp_path / "full.mat", {"X": (_official(TRAIN_X),)}, compress=True).read_bytes()
    cut = tmp_path / "cut.mat"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match="truncated"):
        read_mat5(cut, ["X"])
    bad = bytearray(full)
    bad[136:138] = b"\x00\x00"  # the zlib header of the compressed element (after its 8-byte tag)
    (tmp_path / "bad.mat").write_bytes(bytes(bad))
    with pytest.raises(DataError, match="corrupt"):
        read_mat5(tmp_path / "bad.mat", ["X"])


# ═══════════════════════════════════════════════════════════ registration ══
def test_svhn_is_listed_and_has_a_recipe():
    from ueperf.listing import registered
    from ueperf.recipes import RECIPES
    assert "svhn" in dict(registered("datasets"))
    cfg = RECIPES.get("svhn_resnet18")()
    ref = RECIPES.get("cifar10_resnet18")()
    assert cfg.data.dataset == "svhn"
    assert (cfg.optim, cfg.augment, cfg.train, cfg.model) == (ref.optim, ref.augment, ref.train, ref.model)
