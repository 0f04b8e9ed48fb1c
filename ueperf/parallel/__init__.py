"""Process groups, model wrapping and collectives — the ONLY place that imports
``torch.distributed`` or ``deepspeed``.

The engine talks to a :class:`DistContext` and a :class:`Wrapped` model; it never branches on
the backend itself. The same training code runs as one process (``python -m ueperf.train``), under
DDP (``torchrun --nproc_per_node=N -m ueperf.train``) or with DeepSpeed ZeRO-1/2
(``--set parallel.backend=deepspeed``, also under torchrun).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn

from ..errors import ConfigError

_BACKENDS = ("auto", "none", "ddp", "deepspeed")


@dataclass
class DistContext:
    """Where this process sits: rank r of world_size, on `device`, using `backend`."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str = "none"          # none | ddp | deepspeed
    initialized_here: bool = False  # we created the process group (and so destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or self.backend == "deepspeed"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask on Linux, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else default


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` → cuda:<local_rank> when CUDA is present, else cpu."""
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={spec!r} but CUDA is not available on this machine; "
                          f"use train.device=cpu (or auto)")
    if spec == "cuda":
        return torch.device(f"cuda:{local_rank}")
    try:
        return torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"train.device={spec!r} is not a device (use auto, cpu, cuda or cuda:N)") from None


def init(backend: str = "auto", device: str = "auto", dist_backend: str = "auto") -> DistContext:
    """Set up this process: read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), pick the
    device, and initialise the process group when there is more than one process (or DeepSpeed).
    """
    if backend not in _BACKENDS:
        raise ConfigError(f"parallel.backend={backend!r}: expected one of {', '.join(_BACKENDS)}")
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if backend == "auto":
        backend = "ddp" if world > 1 else "none"
    if backend == "none" and world > 1:
        raise ConfigError(f"parallel.backend=none but WORLD_SIZE={world}: use ddp or deepspeed under torchrun")
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    ctx = DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev, backend=backend)
    if backend in ("ddp", "deepspeed"):
        import torch.distributed as dist
        if not dist.is_initialized():
            os.environ.setdefault("LOCAL_RANK", str(local_rank))  # DeepSpeed asserts on it
            if "MASTER_ADDR" not in os.environ:
                if world > 1:
                    raise ConfigError("WORLD_SIZE > 1 but MASTER_ADDR is not set: launch with torchrun")
                # a single-process DeepSpeed run: a private one-member group on loopback
                os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
                os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
            pg = dist_backend if dist_backend != "auto" else ("nccl" if dev.type == "cuda" else "gloo")
            dist.init_process_group(pg, rank=rank, world_size=world,
                                    device_id=dev if (pg == "nccl") else None)
            ctx.initialized_here = True
    return ctx


def shutdown(ctx: DistContext, failed: bool = False) -> None:
    """Tear down the process group this process created.

    After a clean run every rank first waits at a barrier, so no rank destroys its group while a
    peer is still working (rank 0 writing plots) or in a collective: a gloo rank that destroyed its
    group and exited while rank 0 was still plotting aborted at exit ("terminate called without an
    active exception", SIGABRT; 1 of 20 two-process runs under load). After a failure (``failed``)
    the peers may be inside a collective that will never complete, so neither the barrier nor the
    destroy is attempted: the exception propagates and torchrun stops the other ranks.
    """
    if not ctx.initialized_here:
        return
    import torch.distributed as dist
    if dist.is_initialized() and not failed:
        if ctx.world_size > 1:
            dist.barrier()
        dist.destroy_process_group()
    ctx.initialized_here = False


# ───────────────────────────────────────────── collectives ──
def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``t`` over ranks in place (no-op on one process). Returns ``t``."""
    if ctx.world_size > 1:
        import torch.distributed as dist
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.world_size > 1:
        import torch.distributed as dist
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def broadcast_object(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    if ctx.world_size <= 1:
        return obj
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any, ctx: DistContext) -> List[Any]:
    if ctx.world_size <= 1:
        return [obj]
    import torch.distributed as dist
    out: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_rows(rows: torch.Tensor, shard: torch.Tensor, n: int, ctx: DistContext) -> torch.Tensor:
    """Rows of this rank's ``shard`` (sample indices, in shard order) → the full (n, ...) tensor on
    every rank. Built on :func:`all_reduce_sum`: each rank puts its rows into a zero tensor and the
    shards are disjoint, so the sum is the assembly, exactly (x + 0 = x)."""
    if rows.shape[0] != shard.numel():
        raise ValueError(f"gather: got {rows.shape[0]} rows for a shard of {shard.numel()} samples")
    if ctx.world_size == 1 and bool((shard == torch.arange(n, device=shard.device)).all()):
        return rows
    full = torch.zeros((n, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
    full[shard.to(rows.device)] = rows
    return all_reduce_sum(full, ctx)


def broadcast_tensor(t: torch.Tensor, ctx: DistContext, src: int = 0) -> torch.Tensor:
    """``t`` of rank ``src`` on every rank (identity on one process); bool tensors travel as uint8."""
    if ctx.world_size == 1:
        return t
    dt = t.dtype
    buf = t.to(torch.uint8) if dt == torch.bool else t
    buf = buf.clone() if ctx.rank == src else torch.zeros_like(buf)
    all_reduce_sum(buf, ctx)
    return buf.to(dt)


def barrier(ctx: DistContext) -> None:
    if ctx.world_size > 1:
        import torch.distributed as dist
        dist.barrier()


# ───────────────────────────────────────────── wrapped model ──
class Wrapped:
    """A model + optimiser behind one interface for every backend.

    ``module`` is the bare model (for evaluation, state dicts, layer groups); ``forward`` goes
    through the DDP/DeepSpeed wrapper; ``backward_step(loss, grad_clip)`` does backward, optional
    global-norm clipping and the optimiser step; ``param_groups`` are the optimiser's groups (the
    engine writes learning rates there each step).
    """

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, ctx: DistContext,
                 runner: Optional[nn.Module] = None, engine: Any = None):
        self.module = module
        self.optimizer = optimizer
        self.ctx = ctx
        self.runner = runner if runner is not None else module
        self.engine = engine  # DeepSpeed engine, or None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner(x)

    @property
    def param_groups(self) -> List[Dict[str, Any]]:
        return self.optimizer.param_groups

    def zero_grad(self) -> None:
        if self.engine is None:
            self.optimizer.zero_grad(set_to_none=True)

    def backward_step(self, loss: torch.Tensor, grad_clip: float = 0.0) -> None:
        if self.engine is not None:
            # DeepSpeed owns backward, clipping (config "gradient_clipping") and the step.
            self.engine.backward(loss)
            self.engine.step()
            return
        loss.backward()
        if grad_clip > 0:
            params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, grad_clip, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    # -- checkpoints: always in the bare model's own names, so any backend can resume any other --
    def state_dict(self) -> Dict[str, Any]:
        return {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def sync_buffers(self) -> None:
        """Make every rank's buffers (BN running statistics) rank 0's. DDP does this at every
        forward (broadcast_buffers); DeepSpeed does not, so it is done at epoch end."""
        if self.engine is not None and self.ctx.world_size > 1:
            import torch.distributed as dist
            for b in self.module.buffers():
                dist.broadcast(b, src=0)

    # -- DeepSpeed keeps optimiser state partitioned across ranks: it writes its own sharded
    #    checkpoint (collective: every rank calls these), tagged so a crash never mixes epochs.
    def save_sharded(self, folder: str, tag: str) -> None:
        self.engine.save_checkpoint(folder, tag=tag)

    def load_sharded(self, folder: str, tag: str) -> None:
        path, _ = self.engine.load_checkpoint(folder, tag=tag)
        if path is None:
            raise ConfigError(f"DeepSpeed checkpoint {folder}/{tag} is missing or unreadable; "
                              f"delete the run folder to restart")

    @property
    def compute_dtype_is_bf16_weights(self) -> bool:
        """DeepSpeed bf16 keeps the module in bf16: inputs must be bf16 too."""
        return self.engine is not None and bool(getattr(self.engine, "bfloat16_enabled", lambda: False)())


ZERO_STAGES = (1, 2)  # the DeepSpeed ZeRO stages ueperf runs (the optimiser is torch SGD: its state is partitioned)


def deepspeed_config(*, micro_batch: int, zero_stage: int, bf16: bool, grad_clip: float) -> Dict[str, Any]:
    """The DeepSpeed config the engine runs with, built from the ueperf config (``micro_batch`` =
    ``train.batch_size`` / ranks, ``parallel.zero_stage``, bf16 from ``train.precision``,
    ``optim.grad_clip``); launch/deepspeed/*.json are these with "auto" for the first, third, fourth."""
    return {
        "train_micro_batch_size_per_gpu": int(micro_batch),
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": int(zero_stage)},
        "zero_allow_untested_optimizer": True,  # torch SGD: ZeRO-1/2 only partition its state
        "bf16": {"enabled": bool(bf16)},
        # DeepSpeed casts parameters but not buffers: BN running stats must follow to bf16
        **({"data_types": {"buffer_dtype": "bf16"}} if bf16 else {}),
        "gradient_clipping": float(grad_clip),
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }


def wrap(model: nn.Module, optimizer: torch.optim.Optimizer, ctx: DistContext, *,
         micro_batch: int, zero_stage: int = 1, bf16: bool = False, grad_clip: float = 0.0,
         find_unused_parameters: bool = False) -> Wrapped:
    """Wrap ``model``/``optimizer`` for ``ctx.backend``. ``micro_batch`` is the per-rank batch."""
    if ctx.backend == "none":
        return Wrapped(model, optimizer, ctx)
    if ctx.backend == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        # Buffers (BN statistics) are synced from rank 0 at every forward: DDP's default, left
        # implicit because the keyword for it was renamed (broadcast_buffers → forward_sync_buffers).
        ddp = DDP(model, device_ids=ids, find_unused_parameters=find_unused_parameters,
                  gradient_as_bucket_view=True)
        return Wrapped(model, optimizer, ctx, runner=ddp)
    if ctx.backend == "deepspeed":
        if zero_stage not in ZERO_STAGES:
            raise ConfigError(f"parallel.zero_stage={zero_stage}: ueperf supports ZeRO stages 1 and 2")
        try:
            import deepspeed
        except ImportError:
            raise ConfigError("parallel.backend=deepspeed needs DeepSpeed: "
                              "DS_BUILD_OPS=0 pip install 'ueperf[deepspeed]'") from None
        ds_config = deepspeed_config(micro_batch=micro_batch, zero_stage=zero_stage, bf16=bf16, grad_clip=grad_clip)
        engine, ds_opt, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config,
                                                    dist_init_required=False)
        return Wrapped(model, ds_opt, ctx, runner=engine, engine=engine)
    raise ConfigError(f"unknown parallel backend {ctx.backend!r}")
