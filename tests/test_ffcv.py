"""FFCV backend (ueperf.data.ffcv_loader): beton writing and the loader's batch contract.

Needs ffcv (scripts/install_extras.sh); skipped without it, except the test that checks the
error a user gets when ffcv is missing.
"""
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ueperf.errors import ConfigError, DataError
from ueperf.data import ffcv_loader as fl
from ueperf.data.order import epoch_order


def _ffcv_import_error():
    try:
        import ffcv  # noqa: F401
        import ffcv.loader  # noqa: F401
    except Exception as e:  # ImportError, or a missing shared library (OSError)
        return f"{type(e).__name__}: {e}"
    return None


_ERR = _ffcv_import_error()
needs_ffcv = pytest.mark.skipif(_ERR is not None, reason=f"ffcv is not importable ({_ERR}); "
                                f"install it with scripts/install_extras.sh")

N, H, W = 37, 8, 6  # N prime: no batch size divides it, so the last batch is partial


def _arrays(n=N, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, H, W, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=n).astype(np.int64)
    return x, y


def _split(n=N, seed=0, name="train"):
    x, y = _arrays(n, seed)
    return SimpleNamespace(x=x, y=y, name=name, store_path=None)


def _epoch(loader):
    """All batches of one epoch, kept (not consumed one by one) to check each is its own copy."""
    return [b for b in loader]


def _check_batches(batches, x, y, device="cpu"):
    for xb, yb, ib in batches:
        assert xb.dtype == torch.uint8 and xb.dim() == 4 and tuple(xb.shape[1:]) == (H, W, 3)
        assert yb.dtype == torch.int64 and ib.dtype == torch.int64
        assert yb.shape == ib.shape == (xb.shape[0],)
        assert xb.device.type == yb.device.type == ib.device.type == torch.device(device).type
        i = ib.numpy()
        np.testing.assert_array_equal(xb.numpy(), x[i])  # raw encoding is lossless
        np.testing.assert_array_equal(yb.numpy(), y[i])


# ───────────────────────────────────────── without ffcv ──
def test_missing_ffcv_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ffcv", None)  # makes `import ffcv` raise ImportError
    assert not fl.ffcv_available()
    with pytest.raises(ConfigError, match=r"pip install ueperf\[ffcv\].*libturbojpeg0-dev"):
        fl.FFCVLoader(_split(), 8, device="cpu")
    with pytest.raises(ConfigError, match="libopencv-dev"):
        fl.write_beton(_split(), "/nonexistent/x.beton")


def test_epoch_order_contract():
    n, world = 23, 3
    full = epoch_order(n, shuffle=True, seed=5, epoch=2)
    assert sorted(full.tolist()) == list(range(n))
    np.testing.assert_array_equal(full, epoch_order(n, shuffle=True, seed=5, epoch=2))
    assert not np.array_equal(full, epoch_order(n, shuffle=True, seed=5, epoch=3))
    # (seed, epoch) is hashed as a pair: seed+1 at epoch e is not seed at epoch e+1
    assert not np.array_equal(epoch_order(n, shuffle=True, seed=6, epoch=2),
                              epoch_order(n, shuffle=True, seed=5, epoch=3))
    parts = [epoch_order(n, shuffle=True, seed=5, epoch=2, rank=r, world_size=world, drop_last=True)
             for r in range(world)]
    assert [len(p) for p in parts] == [n // world] * world
    for r, p in enumerate(parts):
        np.testing.assert_array_equal(p, full[: world * (n // world)][r::world])
    tails = [epoch_order(n, shuffle=False, seed=0, epoch=0, rank=r, world_size=world) for r in range(world)]
    assert sorted(np.concatenate(tails).tolist()) == list(range(n))


@pytest.mark.parametrize("shuffle,drop_last,world", [(True, True, 3), (True, False, 2), (False, False, 4)])
def test_epoch_order_matches_the_device_loader(shuffle, drop_last, world):
    # switching data.loader between the resident loader and FFCV must not change the data order
    from ueperf.data.loaders import DeviceLoader
    split = _split()
    for r in range(world):
        dl = DeviceLoader(split, 4, device="cpu", shuffle=shuffle, drop_last=drop_last, seed=11,
                          rank=r, world_size=world)
        for epoch in (0, 5):
            np.testing.assert_array_equal(
                epoch_order(N, shuffle=shuffle, seed=11, epoch=epoch, rank=r, world_size=world,
                               drop_last=drop_last),
                dl.order(epoch).numpy())


# ───────────────────────────────────────── with ffcv ──
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from ueperf.data.store import write_store
    x, y = _arrays()
    ex, ey = _arrays(n=11, seed=1)
    return write_store(tmp_path_factory.mktemp("s") / "store", train=(x, y), test=(ex, ey),
                       classes=[str(i) for i in range(10)])


@needs_ffcv
def test_write_beton_is_atomic_and_idempotent(tmp_path):
    split = _split()
    path = fl.write_beton(split, tmp_path / "a.beton")
    assert path == (tmp_path / "a.beton").absolute() and path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.beton", "a.beton.json"]  # no temp left
    mtime = path.stat().st_mtime_ns
    assert fl.write_beton(split, path) == path and path.stat().st_mtime_ns == mtime  # matches: kept
    with pytest.raises(DataError, match="overwrite=True"):
        fl.write_beton(_split(seed=3), path)  # different data, overwrite=False
    with pytest.raises(DataError, match="overwrite=True"):
        fl.write_beton(split, path, encoding="jpg")  # same data, other encoding
    fl.write_beton(_split(seed=3), path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.beton", "a.beton.json"]


@needs_ffcv
def test_sequential_epoch_from_store(store):
    split = store.train
    # 10 batches: more than FFCV's batches_ahead + 2 = 5 reused output buffers, so keeping them
    # all (as _epoch does) checks that each yielded batch is its own copy
    loader = fl.FFCVLoader(split, 4, device="cpu", shuffle=False, drop_last=False, seed=0, num_workers=2)
    assert loader.beton_path == store.path / "ffcv" / "train.beton"  # next to the store
    assert len(loader) == 10  # ceil(37 / 4)
    batches = _epoch(loader)
    assert [b[0].shape[0] for b in batches] == [4] * 9 + [1]
    idx = torch.cat([b[2] for b in batches]).numpy()
    np.testing.assert_array_equal(idx, np.arange(N))  # every index once, in order
    _check_batches(batches, np.asarray(split.x), split.y)
    # a second pass reads the same beton again (no rewrite) and gives the same batches
    mtime = loader.beton_path.stat().st_mtime_ns
    again = fl.FFCVLoader(split, 4, device="cpu", shuffle=False, drop_last=False, seed=0, num_workers=2)
    assert again.beton_path.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(torch.cat([b[2] for b in _epoch(again)]).numpy(), idx)


@needs_ffcv
def test_make_loader_ffcv_equals_the_resident_loader(store):
    # the same batches, in the same order, whichever backend data.loader picks
    from ueperf.data.loaders import make_loader
    kw = dict(device="cpu", shuffle=True, drop_last=True, seed=2, rank=1, world_size=2)
    ff = make_loader(store.train, 4, backend="ffcv", num_workers=1, **kw)
    dl = make_loader(store.train, 4, backend="cpu", **kw)
    assert isinstance(ff, fl.FFCVLoader) and len(ff) == len(dl) == (N // 2) // 4
    for loader in (ff, dl):
        loader.set_epoch(3)
    for (xa, ya, ia), (xb, yb, ib) in zip(_epoch(ff), _epoch(dl), strict=True):
        assert torch.equal(ia, ib) and torch.equal(ya, yb) and torch.equal(xa, xb)


@needs_ffcv
def test_shuffled_epochs(tmp_path):
    split = _split()
    mk = lambda **kw: fl.FFCVLoader(split, 8, device="cpu", shuffle=True, drop_last=False, seed=7,
                                    num_workers=2, beton_path=tmp_path / "t.beton", **kw)
    loader = mk()
    order = lambda: torch.cat([b[2] for b in _epoch(loader)]).numpy()
    e0 = order()  # no set_epoch: epoch 0, then 1
    e1 = order()
    assert sorted(e0.tolist()) == list(range(N)) and sorted(e1.tolist()) == list(range(N))
    assert not np.array_equal(e0, e1)
    np.testing.assert_array_equal(e0, epoch_order(N, shuffle=True, seed=7, epoch=0))
    loader.set_epoch(1)
    np.testing.assert_array_equal(order(), e1)  # same (seed, epoch) -> same order
    loader.set_epoch(0)
    batches = _epoch(loader)
    np.testing.assert_array_equal(torch.cat([b[2] for b in batches]).numpy(), e0)
    _check_batches(batches, split.x, split.y)
    # an early break stops FFCV's producer, and the next epoch starts cleanly
    loader.set_epoch(1)
    for _ in loader:
        break
    loader.set_epoch(1)
    np.testing.assert_array_equal(order(), e1)


@needs_ffcv
def test_ranks_partition_the_epoch_and_drop_the_tail(tmp_path):
    split = _split()
    world, bs = 2, 5
    loaders = [fl.FFCVLoader(split, bs, device="cpu", shuffle=True, drop_last=True, seed=3, rank=r,
                             world_size=world, num_workers=1, beton_path=tmp_path / "d.beton")
               for r in range(world)]
    for ld in loaders:
        ld.set_epoch(4)
    per_rank = [torch.cat([b[2] for b in _epoch(ld)]).numpy() for ld in loaders]
    # 37 // 2 = 18 samples per rank -> 3 full batches of 5 each, the rest dropped
    assert [len(ld) for ld in loaders] == [3, 3] and [len(p) for p in per_rank] == [15, 15]
    perm = epoch_order(N, shuffle=True, seed=3, epoch=4)[: world * (N // world)]
    for r, got in enumerate(per_rank):
        np.testing.assert_array_equal(got, perm[r::world][:15])
    assert not set(per_rank[0]) & set(per_rank[1])


@needs_ffcv
def test_batch_of_one_keeps_its_batch_dim(tmp_path):
    split = _split(n=3)
    loader = fl.FFCVLoader(split, 1, device="cpu", shuffle=False, drop_last=False, num_workers=1,
                           beton_path=tmp_path / "one.beton")
    batches = _epoch(loader)
    assert len(batches) == 3
    for k, (xb, yb, ib) in enumerate(batches):
        assert xb.shape == (1, H, W, 3) and yb.shape == (1,) and ib.shape == (1,) and int(ib) == k
    _check_batches(batches, split.x, split.y)


@needs_ffcv
def test_stale_or_foreign_beton(tmp_path):
    path = tmp_path / "s.beton"
    fl.write_beton(_split(seed=1), path)
    with pytest.raises(DataError, match="not written from this split"):
        fl.FFCVLoader(_split(seed=2), 4, device="cpu", beton_path=path, num_workers=1)
    # the managed cache location is rewritten when its split changes
    cache = tmp_path / "cache"
    a = fl.default_beton_path(_split(seed=1), cache_dir=cache)
    b = fl.default_beton_path(_split(seed=2), cache_dir=cache)
    assert a != b and a.name == b.name == "train.beton" and str(a).startswith(str(cache))
    ro = SimpleNamespace(**vars(_split(seed=1)))
    ro.store_path = Path("/proc/definitely-not-writable")
    assert str(fl.default_beton_path(ro, cache_dir=cache)).startswith(str(cache))


@needs_ffcv
def test_jpeg_encoding_is_close(tmp_path):
    # smooth images: JPEG at quality 95 keeps them within ~1.6 grey levels on average, while
    # a channel-order mistake (BGR/RGB) would be off by ~14
    hh, ww = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    base = np.stack([hh * 8, ww * 8, (hh + ww) * 4], -1)
    x = np.stack([base + 10 * k for k in range(10)]).astype(np.uint8)
    split = SimpleNamespace(x=x, y=np.arange(10, dtype=np.int64), name="test", store_path=None)
    loader = fl.FFCVLoader(split, 4, device="cpu", encoding="jpg", jpeg_quality=95, num_workers=1,
                           beton_path=tmp_path / "j.beton")
    seen = []
    for xb, yb, ib in loader:
        assert xb.dtype == torch.uint8 and xb.shape[1:] == (16, 16, 3)
        got, src = xb.numpy().astype(int), x[ib.numpy()].astype(int)
        assert np.abs(got - src).mean() < 3.0
        assert np.abs(got - src[..., ::-1]).mean() > 10.0
        np.testing.assert_array_equal(yb.numpy(), ib.numpy())
        seen.extend(ib.tolist())
    assert sorted(seen) == list(range(10))


@needs_ffcv
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the injected error
def test_producer_failure_raises_instead_of_hanging(tmp_path):
    import threading

    loader = fl.FFCVLoader(_split(), 4, device="cpu", num_workers=1, beton_path=tmp_path / "f.beton")

    def boom(**kwargs):  # stands in for a decoding stage that fails inside FFCV's thread
        raise ValueError("injected decode failure")

    code, outputs = loader._loader.code
    loader._loader.code = ([(boom, [])], outputs)
    caught = []
    t = threading.Thread(target=lambda: caught.append(pytest.raises(DataError, _epoch, loader)),
                         daemon=True)
    t.start()
    t.join(timeout=30)  # FFCV's own iterator would block here forever
    assert not t.is_alive() and caught and "loader thread stopped" in str(caught[0].value)


def test_bad_arguments():
    if _ERR is not None:
        pytest.skip(f"ffcv is not importable ({_ERR})")
    with pytest.raises(ConfigError, match="rank"):
        fl.FFCVLoader(_split(), 4, device="cpu", rank=2, world_size=2)
    with pytest.raises(ConfigError, match="leaves no batch"):
        fl.FFCVLoader(_split(), 64, device="cpu", drop_last=True)
    with pytest.raises(ConfigError, match="encoding"):
        fl.write_beton(_split(), "/tmp/never.beton", encoding="png")
    with pytest.raises(DataError, match="uint8"):
        fl.write_beton(SimpleNamespace(x=np.zeros((2, 4, 4, 3), np.float32), y=np.zeros(2, np.int64)),
                       "/tmp/never.beton")
    assert not os.path.exists("/tmp/never.beton")
