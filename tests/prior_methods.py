"""Helpers of the prior-based protection tests (BAIT, SSC): a ProtectContext over real arrays, one
generate-and-publish call, and ranks as threads for the sharded-generation tests (the collectives
the protection runner gives a method, ``ctx.gather`` and ``ctx.broadcast``, through a barrier)."""
from __future__ import annotations

import threading
from typing import Callable, Dict

import numpy as np
import torch

from ueperf.protections.base import ProtectContext, apply


def protect_ctx(x, y, cfg, seed=0, **extra) -> ProtectContext:
    """CPU context over uint8 NHWC ``x`` and labels ``y`` of 10 classes, no progress bars."""
    fields = dict(x=torch.from_numpy(np.ascontiguousarray(x)), y=torch.from_numpy(np.asarray(y)), num_classes=10,
                  classes=[str(k) for k in range(10)], cfg=cfg, seed=seed, device=torch.device("cpu"),
                  progress=False)
    fields.update(extra)
    return ProtectContext(**fields)


def generate(method, cfg, arrays, n, seed=0):
    """(method instance after generate, Perturbation, clean uint8, labels, published uint8) on the
    first ``n`` images of ``arrays``."""
    x, y = arrays[0][:n], arrays[1][:n]
    pert = method.generate(protect_ctx(x, y, cfg, seed=seed))
    return method, pert, x, y, apply(x, y, pert)


class Exchange:
    """Collectives for ``world`` ranks running as threads over ``n`` samples sharded
    ``arange(n)[r::world]`` (every rank calls them in the same order)."""

    def __init__(self, n: int, world: int):
        self.n, self.world = n, world
        self.bar, self.rows, self.sent = threading.Barrier(world, timeout=120), {}, None
        self.calls = {r: [] for r in range(world)}

    def gather(self, rank: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def fn(rows):
            self.calls[rank].append(rows.shape[0])
            self.rows[rank] = rows.clone()
            self.bar.wait()
            full = torch.zeros((self.n, *rows.shape[1:]), dtype=rows.dtype)
            for r, part in self.rows.items():
                full[torch.arange(self.n)[r::self.world]] = part
            self.bar.wait()  # everybody has read before the next call overwrites
            return full
        return fn

    def broadcast(self, rank: int):
        def fn(t, src=0):
            if rank == src:
                self.sent = t.clone()
            self.bar.wait()
            out = self.sent.clone()
            self.bar.wait()
            return out
        return fn

    def run(self, body: Callable[[int, dict], object]) -> Dict[int, object]:
        """Run ``body(rank, ctx_fields)`` on every rank (threads); ctx_fields holds rank,
        world_size, shard, gather, broadcast. Returns {rank: result}; re-raises a rank's error."""
        out, errors = {}, []

        def rank(r):
            try:
                shard = torch.arange(self.n)[r::self.world]
                out[r] = body(r, dict(rank=r, world_size=self.world, shard=shard, gather=self.gather(r),
                                      broadcast=self.broadcast(r)))
            except BaseException as e:  # noqa: BLE001 - reported below; free the other ranks
                errors.append(e)
                self.bar.abort()

        threads = [threading.Thread(target=rank, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return out
