"""The device-resident loader (CPU twin here; CUDA tests run where a GPU is present)."""
from __future__ import annotations

import sys
import types
import warnings

import numpy as np
import pytest
import torch

from ueperf.data import make_loader, write_store
from ueperf.data.loaders import DeviceLoader
from ueperf.data.order import epoch_permutation
from ueperf.data.store import Split
from ueperf.errors import ConfigError, DataError


def _split(n=50, size=4, k=5, seed=0) -> Split:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(n) % 256  # make every image distinct and recognisable
    return Split(x=x, y=rng.integers(0, k, n).astype(np.int64), name="train")


def _loader(split, b, **kw):
    args = dict(device="cpu", shuffle=True, drop_last=False, seed=0)
    args.update(kw)
    return DeviceLoader(split, b, **args)


def _epoch_indices(loader, epoch=0):
    loader.set_epoch(epoch)
    return torch.cat([idx for _, _, idx in loader]).tolist()


def test_batch_contract_matches_the_split():
    sp = _split()
    loader = make_loader(sp, 8, device="cpu", shuffle=True, drop_last=True, seed=1)
    assert isinstance(loader, DeviceLoader)
    n = 0
    for x, y, idx in loader:
        assert x.dtype == torch.uint8 and y.dtype == torch.int64 and idx.dtype == torch.int64
        assert x.shape == (8, 4, 4, 3) and y.shape == (8,) and idx.shape == (8,)
        assert x.device.type == y.device.type == idx.device.type == "cpu"
        np.testing.assert_array_equal(x.numpy(), sp.x[idx.numpy()])
        np.testing.assert_array_equal(y.numpy(), sp.y[idx.numpy()])
        n += 1
    assert n == len(loader) == 50 // 8


def test_every_sample_once_per_epoch_single_rank():
    sp = _split(n=53)
    loader = _loader(sp, 8)
    for epoch in range(3):
        assert sorted(_epoch_indices(loader, epoch)) == list(range(53))
    dl = _loader(sp, 8, drop_last=True)
    got = _epoch_indices(dl)
    assert len(got) == 48 and len(set(got)) == 48  # 6 full batches, no repeats


def test_two_ranks_partition_each_epoch():
    sp = _split(n=51)
    for drop_last in (True, False):
        ranks = [_loader(sp, 4, drop_last=drop_last, rank=r, world_size=2) for r in range(2)]
        for epoch in (0, 1):
            parts = [_epoch_indices(rk, epoch) for rk in ranks]
            assert not set(parts[0]) & set(parts[1])
            if drop_last:
                # 51 → 25 per rank (tail dropped) → 6 full batches each, same count on both ranks.
                assert len(parts[0]) == len(parts[1]) == 24 and len(ranks[0]) == len(ranks[1]) == 6
            else:
                assert sorted(parts[0] + parts[1]) == list(range(51))
        # Both ranks slice the same permutation: rank r takes perm[r::2].
        perm = epoch_permutation(51, 0, 1)
        if drop_last:
            perm = perm[:50]
        assert _epoch_indices(ranks[0], 1) == perm[0::2].tolist()[: len(ranks[0]) * 4]
        assert _epoch_indices(ranks[1], 1) == perm[1::2].tolist()[: len(ranks[1]) * 4]


def test_permutation_depends_on_seed_and_epoch_only():
    sp = _split(n=64)
    a, b = _loader(sp, 16, seed=7), _loader(_split(n=64, seed=3), 16, seed=7)
    assert _epoch_indices(a, 5) == _epoch_indices(b, 5)  # other instance, other data: same order
    assert _epoch_indices(a, 5) == _epoch_indices(a, 5)  # repeatable
    assert _epoch_indices(a, 5) != _epoch_indices(a, 6)
    assert _epoch_indices(a, 5) != _epoch_indices(_loader(sp, 16, seed=8), 5)
    assert _epoch_indices(a, 6) != _epoch_indices(_loader(sp, 16, seed=8), 5)  # not seed + epoch
    assert _epoch_indices(a, 0) != list(range(64))
    # Without set_epoch, each iteration runs the next epoch.
    c = _loader(sp, 16, seed=7)
    runs = [torch.cat([i for _, _, i in c]).tolist() for _ in range(3)]
    assert runs == [_epoch_indices(a, e) for e in range(3)]
    with pytest.raises(ConfigError, match="seed=-1"):
        _loader(sp, 16, seed=-1)


def test_same_order_as_the_ffcv_backend():
    fl = pytest.importorskip("ueperf.data.ffcv_loader")  # numpy-only at import; ffcv not needed
    sp = _split(n=37)
    for shuffle, drop_last, w in ((True, True, 3), (True, False, 2), (False, False, 4)):
        for r in range(w):
            loader = _loader(sp, 5, seed=11, shuffle=shuffle, drop_last=drop_last, rank=r, world_size=w)
            want = fl.epoch_order(37, shuffle=shuffle, seed=11, epoch=4, rank=r, world_size=w,
                                  drop_last=drop_last)
            assert loader.order(4).tolist() == want.tolist()


def test_eval_sharding_is_strided_and_complete():
    sp = _split(n=10)
    parts = [_epoch_indices(_loader(sp, 3, shuffle=False, rank=r, world_size=3)) for r in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    lens = [len(_loader(sp, 3, shuffle=False, rank=r, world_size=3)) for r in range(3)]
    assert lens == [2, 1, 1]


@pytest.mark.parametrize("n,b,w,drop_last", [(50, 8, 1, False), (50, 8, 1, True), (48, 8, 1, True),
                                              (50, 7, 3, True), (50, 7, 3, False), (5, 1, 2, True)])
def test_len_matches_iteration(n, b, w, drop_last):
    sp = _split(n=n)
    for r in range(w):
        loader = _loader(sp, b, drop_last=drop_last, rank=r, world_size=w)
        sizes = [len(idx) for _, _, idx in loader]
        assert len(sizes) == len(loader)
        per_rank = n // w if drop_last else len(range(r, n, w))
        expected = per_rank // b if drop_last else -(-per_rank // b)
        assert len(loader) == expected
        assert all(s == b for s in sizes[:-1]) and (not sizes or (sizes[-1] == b) == (drop_last or per_rank % b == 0))
        assert loader.num_samples == sum(sizes)


def test_batch_of_one_and_batch_larger_than_split():
    sp = _split(n=6)
    ones = _loader(sp, 1)
    assert len(ones) == 6 and sorted(_epoch_indices(ones)) == list(range(6))
    big = _loader(sp, 100)
    batches = list(big)
    assert len(big) == 1 and len(batches) == 1 and batches[0][0].shape == (6, 4, 4, 3)
    big_train = _loader(sp, 100, drop_last=True)
    assert len(big_train) == 0 and list(big_train) == []


def test_loader_from_a_memory_mapped_store(tmp_path):
    sp = _split(n=30)
    store = write_store(tmp_path / "s", train=(sp.x, sp.y), test=(sp.x[:5], sp.y[:5]),
                        classes=[f"c{i}" for i in range(5)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "non-writable array" warning
        loader = make_loader(store.train, 7, device="cpu", shuffle=False, drop_last=False, seed=0)
        x, y, idx = next(iter(loader))
    np.testing.assert_array_equal(x.numpy(), sp.x[:7])
    np.testing.assert_array_equal(y.numpy(), sp.y[:7])


def test_backend_selection_and_errors(monkeypatch):
    sp = _split(n=20)
    assert isinstance(make_loader(sp, 4, device="cpu", shuffle=False, drop_last=False, seed=0, backend="cpu"),
                      DeviceLoader)
    with pytest.raises(ConfigError, match="data.loader=gpu needs a CUDA device"):
        make_loader(sp, 4, device="cpu", shuffle=False, drop_last=False, seed=0, backend="gpu")
    with pytest.raises(ConfigError, match="expected one of auto, gpu, cpu, ffcv"):
        make_loader(sp, 4, device="cpu", shuffle=False, drop_last=False, seed=0, backend="dali")
    with pytest.raises(ConfigError, match="rank=2, world_size=2"):
        make_loader(sp, 4, device="cpu", shuffle=False, drop_last=False, seed=0, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="batch_size=0"):
        make_loader(sp, 0, device="cpu", shuffle=False, drop_last=False, seed=0)

    calls = {}

    class FakeFFCV:  # a loader that takes where the split lives as arguments
        def __init__(self, split, batch_size, **kw):
            calls.update(split=split, batch_size=batch_size, **kw)

    fake = types.ModuleType("ueperf.data.ffcv_loader")
    fake.FFCVLoader = FakeFFCV
    monkeypatch.setitem(sys.modules, "ueperf.data.ffcv_loader", fake)
    stored = Split(x=sp.x, y=sp.y, name="test", store_path="/stores/s")
    make_loader(stored, 4, device="cpu", shuffle=True, drop_last=True, seed=3, rank=1, world_size=2,
                backend="ffcv", order="quasi_random")
    assert calls == dict(split=stored, batch_size=4, device=torch.device("cpu"), shuffle=True, drop_last=True,
                         seed=3, rank=1, world_size=2, store_path="/stores/s", split_name="test",
                         order="quasi_random")

    class StrictFFCV:  # one that reads it off the split: not passed
        def __init__(self, split, batch_size, *, device, shuffle, drop_last, seed, rank, world_size):
            calls.update(strict=True)

    fake.FFCVLoader = StrictFFCV
    make_loader(stored, 4, device="cpu", shuffle=True, drop_last=True, seed=3, backend="ffcv")
    assert calls["strict"]
    monkeypatch.setitem(sys.modules, "ueperf.data.ffcv_loader", None)  # import fails
    with pytest.raises(DataError, match=r"data.loader=ffcv is unavailable.*ueperf\[ffcv\]"):
        make_loader(sp, 4, device="cpu", shuffle=False, drop_last=False, seed=0, backend="ffcv")


# ─────────────────────────────────────────────── CUDA (skipped without a GPU) ──
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
def test_cuda_resident_loader_matches_cpu_twin_without_host_syncs():
    sp = _split(n=300, size=8)
    gpu = make_loader(sp, 32, device="cuda", shuffle=True, drop_last=True, seed=2, backend="auto")
    cpu = make_loader(sp, 32, device="cpu", shuffle=True, drop_last=True, seed=2)
    assert isinstance(gpu, DeviceLoader) and gpu.x.is_cuda
    gpu.set_epoch(3)
    cpu.set_epoch(3)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync while iterating raises
    try:
        batches = [(x, y, i) for x, y, i in gpu]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for (x, y, i), (cx, cy, ci) in zip(batches, cpu):
        assert x.is_cuda and y.is_cuda and i.is_cuda
        assert torch.equal(x.cpu(), cx) and torch.equal(y.cpu(), cy) and torch.equal(i.cpu(), ci)


@pytest.mark.gpu
@cuda
def test_cuda_streaming_backend():
    sp = _split(n=100, size=8)
    loader = make_loader(sp, 16, device="cuda", shuffle=False, drop_last=False, seed=0, backend="cpu")
    assert not loader.x.is_cuda
    x, y, idx = next(iter(loader))
    assert x.is_cuda and y.is_cuda and idx.is_cuda
    np.testing.assert_array_equal(x.cpu().numpy(), sp.x[:16])
