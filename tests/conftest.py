"""Shared test fixtures: the real data archives of ../shared/data, unpacked once per session.

The archives are found through ``UEPERF_SHARED_DATA`` or at ``<repo>/../shared/data``; when they
are not there, the tests that need them are skipped with the reason (the rest still run).
"""
from __future__ import annotations

import os

# The README's test command runs the gate on every core (pytest-xdist, ``-n auto``): one process per
# core, so each takes one torch thread unless OMP_NUM_THREADS says otherwise (n workers × n threads on
# n cores ran several times slower); set before torch is imported, so the processes the tests start
# inherit it. A plain ``pytest`` (no workers) keeps torch's default.
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"
    import sys
    if "torch" in sys.modules:  # a plugin imported it first: the variable came too late for it
        sys.modules["torch"].set_num_threads(1)

import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from margins import GATE_SEED, Margin  # tests/margins.py: the margin rule of value-from-training checks

REPO = Path(__file__).resolve().parent.parent
CIFAR_ARCHIVE = "cifar-10-subset-python.tar.gz"
TINY_ARCHIVE = "tiny-imagenet-100.tar.gz"


@pytest.fixture
def margin(request) -> Margin:
    return Margin(request.node.nodeid)


def shared_data_dir() -> Path:
    env = os.environ.get("UEPERF_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def _archive(name: str) -> Path:
    path = shared_data_dir() / name
    if not path.is_file():
        pytest.skip(f"real data archive {name} not found at {path}: set UEPERF_SHARED_DATA to the "
                    f"folder holding it (the project's ../shared/data)")
    return path


def _unpack(archive: Path, dest: Path) -> None:
    # System tar is ~5x faster than tarfile on the 55,000 small files of tiny-imagenet-100.
    tar = shutil.which("tar")
    if tar is not None:
        subprocess.run([tar, "-xzf", str(archive), "-C", str(dest), "--no-same-owner"], check=True)
    else:
        with tarfile.open(archive) as tf:
            tf.extractall(dest, filter="data")


@pytest.fixture(scope="session")
def cifar_archive() -> Path:
    """The real CIFAR-10 subset archive (python-pickle layout, .tar.gz)."""
    return _archive(CIFAR_ARCHIVE)


@pytest.fixture(scope="session")
def tiny_archive() -> Path:
    """The real tiny-imagenet-100 archive (ImageFolder layout, .tar.gz)."""
    return _archive(TINY_ARCHIVE)


@pytest.fixture(scope="session")
def cifar_root(cifar_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder containing ``cifar-10-batches-py/`` (data_batch_1..5, test_batch, batches.meta)."""
    dest = tmp_path_factory.mktemp("cifar")
    _unpack(cifar_archive, dest)
    assert (dest / "cifar-10-batches-py" / "data_batch_1").is_file()
    return dest


@pytest.fixture(scope="session")
def tiny_root(tiny_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``tiny-imagenet-100/`` folder: ``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``, classes.tsv."""
    dest = tmp_path_factory.mktemp("tiny")
    _unpack(tiny_archive, dest)
    root = dest / "tiny-imagenet-100"
    assert (root / "train").is_dir() and (root / "val").is_dir()
    return root


@pytest.fixture(scope="session")
def tiny_subset_root(tiny_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-imagenet-100 cut to its first 4 classes (sorted wnids): same layout, ~2,200 files.

    One streaming pass over the archive writes only those classes' train/val JPEGs and
    classes.tsv: much cheaper than unpacking 55,000 files when a test needs a few real images.
    """
    dest = tmp_path_factory.mktemp("tiny_subset")
    keep = None
    with tarfile.open(tiny_archive, "r|gz") as tf:
        for m in tf:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) < 2:
                continue
            if parts[1] == "classes.tsv":
                text = tf.extractfile(m).read()
                keep = set(sorted(line.split("\t")[0] for line in text.decode().splitlines() if line)[:4])
            elif len(parts) == 4 and parts[1] in ("train", "val"):
                assert keep is not None, "classes.tsv must precede the images in the archive"
                if parts[2] not in keep:
                    continue
                text = tf.extractfile(m).read()
            else:
                continue
            out = dest.joinpath(*parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(text)
    root = dest / "tiny-imagenet-100"
    assert (root / "train").is_dir() and (root / "val").is_dir()
    return root



# A small pretrained prior for the prior-based protections (BAIT, SSC): a 1/8-width ResNet-18
# trained 2 epochs (SGD 0.1, crop + flip) on real training images [200, 2200), saved in
# torchvision key format as ``python -m ueperf.prior`` writes it. The first 200 images, which the
# tests craft on, are never seen by it.
PRIOR_WIDTH = 0.125
PRIOR_FIRST, PRIOR_IMAGES = 200, 2000


@pytest.fixture(scope="session")
def cifar_arrays(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """(x uint8 NHWC, y int64) of the first 2,200 real CIFAR-10 training images."""
    import numpy as np

    from ueperf.config import DataConfig
    from ueperf.data import prepare_dataset
    st = prepare_dataset(DataConfig(dataset="cifar10", root=str(cifar_root),
                                    cache_dir=str(tmp_path_factory.mktemp("arrays_cache")),
                                    train_limit=PRIOR_FIRST + PRIOR_IMAGES, test_limit=64))
    return np.array(st.train.x), np.array(st.train.y, dtype=np.int64)


@pytest.fixture(scope="session")
def small_prior(cifar_arrays, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from ueperf.augment.eot import eot_augment
    from ueperf.models import build_model
    from ueperf.protections.crafting import sgd_step
    x, y = cifar_arrays
    xp = torch.from_numpy(x[PRIOR_FIRST:]).float() / 255
    yp = torch.from_numpy(y[PRIOR_FIRST:])
    g = torch.Generator().manual_seed(GATE_SEED)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(GATE_SEED)
        model = build_model("resnet18", 10, 32, width=PRIOR_WIDTH)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    model.train()
    # one thread whoever asks first: the float sums (hence the prior's bytes) depend on the count
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    crop_flip = eot_augment(1)  # random crop (4 px) + flip
    for _ in range(2):
        perm = torch.randperm(len(yp), generator=g)
        for s in range(0, len(yp) - 127, 128):
            i = perm[s:s + 128]
            sgd_step(model, opt, crop_flip(xp[i], g), yp[i], 0.0, torch.device("cpu"))
    torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("prior") / "prior.pt"
    torch.save(model.state_dict(), path)
    return path


# Stores are sealed with a per-user key (ueperf.files.seal_key_path): the session uses its own, and
# its own cache folder for what configs cache by default (stores sealed with that key), so the gate
# never writes into the user's ~/.config or ~/.cache and every process it starts shares both.
if "UEPERF_SEAL_KEY" not in os.environ:
    import tempfile
    _session = tempfile.mkdtemp(prefix="ueperf-gate-")
    os.environ["UEPERF_SEAL_KEY"] = os.path.join(_session, "seal.key")
    os.environ["UEPERF_CACHE_DIR"] = os.path.join(_session, "cache")
    import atexit
    import shutil
    atexit.register(shutil.rmtree, _session, ignore_errors=True)
