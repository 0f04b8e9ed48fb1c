"""What a long job will cost, said before it starts: its size times a speed measured on this machine.

    seconds ≈ image passes / (images per second of one forward + backward of the model, measured)

An *image pass* is one image through one forward and one backward of the model (a training step
costs one per image, a PGD iteration one, an evaluation about a third). Jobs count their passes
from their config (a training run: images × epochs × the countermeasure's factor; EM: rounds ×
(model-step batches + images × PGD steps + a stop test)); :func:`measure_rate` times a few steps of
the model on random images of the right shape, on the device the job will use (a fresh model:
the job's own weights and statistics are never touched). The trainer measures its own first steps
instead (:class:`ueperf.engine.trainer.Trainer`), which includes everything its hooks add.

A job on the CPU that would take more than :data:`GPU_SIZED_S` is a GPU-sized job: it says so.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Optional

GPU_SIZED_S = 3600.0     # a CPU job longer than this gets the "sized for a GPU" warning
MEASURE_BATCH = 16       # images per timed step: enough to keep the cores busy, cheap on a CPU
MEASURE_STEPS = 2        # timed steps, after one untimed warm-up step


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"12 min"``, ``"3.4 h"``, ``"2.1 days"``."""
    s = float(seconds)
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def measure_rate(model_name: str, width: float, num_classes: int, image_size: int, device: Any,
                 batch: int = MEASURE_BATCH, steps: int = MEASURE_STEPS, channels: int = 3) -> float:
    """Images per second of forward + backward (one image pass) of a fresh ``model_name`` at
    ``width`` on ``device``: one warm-up step, then ``steps`` timed ones on random images
    (fp32; bf16 autocast on CUDA, as the jobs run)."""
    import torch
    import torch.nn.functional as F

    from ..models import build_model
    from ..precision import autocast
    dev = torch.device(device)
    model = build_model(model_name, num_classes=max(2, int(num_classes)), image_size=int(image_size),
                        width=float(width)).to(dev)
    model.train()
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.rand(batch, channels, image_size, image_size, generator=g).to(dev)
    y = torch.randint(0, max(2, int(num_classes)), (batch,), generator=g).to(dev)
    half = torch.bfloat16 if dev.type == "cuda" else None

    def step() -> None:
        with autocast(dev, half):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return batch * steps / max(time.perf_counter() - t0, 1e-9)


def countermeasure_factor(cfg: Any) -> float:
    """Image passes per training image of a run's countermeasures, relative to plain training:
    PGD adversarial training runs ``at.steps`` attack iterations per step, UEraser (not lite) ``R``
    copies; the rest cost about one (ST's ACM checks and ISS's one-time squeeze are small)."""
    names = [n.strip() for n in str(getattr(cfg, "countermeasure", "nt")).split("+")]
    f = 1.0
    if "at" in names:
        f *= 1 + int(cfg.at.steps)
    if any(n in ("ueraser", "ueraser_max") for n in names):
        f *= max(1, int(cfg.ueraser.repeats))
    return f


def training_passes(cfg: Any, n_train: int, epochs: Optional[int] = None) -> float:
    """Image passes of a training run of ``cfg`` on ``n_train`` images: images × epochs ×
    :func:`countermeasure_factor` (the per-epoch evaluation, a third of a pass per test image, is left out)."""
    e = cfg.train.epochs if epochs is None else epochs
    return float(n_train) * e * countermeasure_factor(cfg)


def estimate_line(what: str, seconds: float, device: Any, detail: str = "") -> str:
    return f"expected cost of {what}: ~{format_duration(seconds)} on {device}" + (f" ({detail})" if detail else "")


def gpu_sized_warning(what: str, seconds: float, device: Any) -> Optional[str]:
    """The warning for a GPU-sized job on the CPU (None otherwise)."""
    if str(device).startswith("cpu") and seconds > GPU_SIZED_S:
        return (f"{what} is sized for a GPU: ~{format_duration(seconds)} on this CPU. Run it on a GPU, or "
                f"shrink it first (fewer epochs or rounds, data train_limit, a narrower model.width)")
    return None


def announce(what: str, seconds: float, device: Any, detail: str = "", stream=None) -> Optional[str]:
    """Print the estimate (stderr) and, for a GPU-sized job on the CPU, a warning; returns the
    warning text (for the job's manifest or summary) or None."""
    stream = stream or sys.stderr
    print(estimate_line(what, seconds, device, detail), file=stream, flush=True)
    warn = gpu_sized_warning(what, seconds, device)
    if warn:
        print(f"warning: {warn}", file=stream, flush=True)
    return warn
