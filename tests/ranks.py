"""Ranks as threads for the sharded-generation tests: the collectives the protection runner gives
a method (``ctx.gather``, ``ctx.broadcast``), exchanged through a barrier."""
from __future__ import annotations

import threading
from typing import Callable, Dict

import torch


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
