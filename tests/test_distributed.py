"""2-process gloo runs under torchrun match the single-process contract: every rank sees a
disjoint shard of the same epoch permutation, together covering what one process sees, and the
weights stay synchronised. DeepSpeed (ZeRO-1/2) is run the same way when it is installed."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "dist_worker.py"


def _torchrun(nproc, out, overrides, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={_free_port()}",
           str(WORKER), str(out)] + overrides
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    assert "broadcast_buffers" not in r.stderr, r.stderr[-5000:]   # no deprecated DDP keyword (torch >= 2.12)
    return [json.loads((out / f"rank{i}.json").read_text()) for i in range(nproc)]


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _common(tmp_path, name):
    return [f"out_dir={tmp_path}", f"name={name}", "train.device=cpu", "train.progress=false",
            "train.epochs=2", "train.batch_size=64", "data.synthetic_train=320", "data.synthetic_test=100",
            f"data.cache_dir={tmp_path / 'cache'}"]


@pytest.mark.parametrize("backend", ["ddp", "deepspeed"])
def test_two_process_run_matches_single_process(tmp_path, backend):
    if backend == "deepspeed":
        pytest.importorskip("deepspeed", reason="DeepSpeed not installed (pip install ueperf[deepspeed])")
    over = _common(tmp_path, "dist") + [f"parallel.backend={backend}"]
    single = _torchrun(1, _mk(tmp_path / "one"), _common(tmp_path, "single") + [f"parallel.backend={'none' if backend == 'ddp' else backend}"])[0]
    r0, r1 = _torchrun(2, _mk(tmp_path / "two"), over)
    assert r0["world"] == r1["world"] == 2 and r0["backend"] == backend
    for ep in ("0", "1"):
        a, b, s = r0["seen"][ep], r1["seen"][ep], single["seen"][ep]
        assert len(a) == len(b) == len(s) // 2          # equal shards, half the work each
        assert not set(a) & set(b)                       # disjoint
        assert sorted(a + b) == sorted(s)                # same coverage as one process (320 = 5 x 64)
    assert r0["seen"]["0"] != r0["seen"]["1"]            # a new permutation each epoch
    # weights and BN buffers synchronised across ranks
    assert r0["param_sum"] == pytest.approx(r1["param_sum"], rel=1e-5, abs=1e-5)
    assert r0["param_abs"] == pytest.approx(r1["param_abs"], rel=1e-5)
    # evaluation covers the test set exactly once across ranks, and both ranks agree on accuracy
    assert r0["test_images"] == r1["test_images"] == 100
    assert r0["test_acc"] == r1["test_acc"]


def _mk(p):
    p.mkdir(parents=True, exist_ok=True)
    return p
