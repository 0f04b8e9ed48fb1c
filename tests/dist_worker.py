"""Run under torchrun by tests/test_distributed.py: trains a few steps and dumps, per rank, the
sample indices it saw per epoch and a checksum of its final weights."""
import json
import os
import sys

import torch

from ueperf.config import apply_overrides
from ueperf.engine.hooks import TrainHook
from ueperf.engine.trainer import Trainer
from ueperf.recipes import build


class Record(TrainHook):
    def __init__(self):
        self.seen = {}

    def on_batch(self, trainer, x, y, idx):
        self.seen.setdefault(trainer.epoch, []).extend(idx.tolist())
        return x, y


def main():
    out_dir, *overrides = sys.argv[1:]
    cfg = build("synthetic_smoke")
    apply_overrides(cfg, overrides)
    rec = Record()
    tr = Trainer(cfg, hooks=[rec]).setup()
    summary = tr.fit()
    flat = torch.cat([p.detach().float().flatten() for p in tr.model.parameters()])
    bufs = torch.cat([b.detach().float().flatten() for b in tr.model.buffers()])
    rank = tr.ctx.rank
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"seen": rec.seen, "param_sum": flat.double().sum().item(),
                   "param_abs": flat.double().abs().sum().item(), "buf_sum": bufs.double().sum().item(),
                   "world": tr.ctx.world_size, "backend": tr.ctx.backend,
                   "test_acc": summary["final_test_acc"], "test_images": tr.records[-1]["test_images"]}, f)
    tr.close()


if __name__ == "__main__":
    main()
