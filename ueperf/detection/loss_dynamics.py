"""``loss_dynamics`` — which samples does a small CNN learn first? (docs/methods.md §9.2)

A network trained on a set that holds unlearnable examples fits them before anything else: the
perturbation is a shortcut, simpler than the image (Huang et al., ICLR 2021, on error-minimising
noise; Sandoval-Segura et al., "Poisons that are learned faster are more effective", CVPR-W 2022;
Yu et al., ICANN 2024, arXiv 2408.08143, for mixed sets). Anti-Backdoor Learning (Li et al.,
NeurIPS 2021) isolates poisoned samples by the same sign: the lowest losses early in training.

Here: train ``runs`` small CNNs (a registered model, default resnet18 at width 0.125) from
scratch for ``epochs`` epochs on the residual view (:mod:`~ueperf.detection.base`; ``view=raw``:
the pixels), Adam, no augmentation, batches from the repository's loader, and record the loss of
every sample each time it is trained on (the training forward pass: no extra cost). Then

- sample speed  s_i = 1 − mean_{runs, epochs} ℓ_i / ln K: 0 for a sample still at chance-level loss
  through the whole window, → 1 for one fitted from its first visit. Averaging over runs removes
  much of the noise of one short run (on the half-protected test set one run's AUROC ranged
  0.70-0.78 with the seed, the mean of three runs' speeds 0.83-0.95; §9.2);
- dataset score = the mean speed (the "fraction learnt early" of the window is recorded too, but
  as a count over a threshold it moves more between seeds); protected iff ≥ ``threshold`` = 0.72
  [ours], calibrated on the synthetic source (16 px, 400 images, 10 classes: 0.65-0.66 clean,
  0.79-0.80 with class-wise noise of ε = 32/255 on every image, seeds 0-2 × 1-2 threads); the
  embedded CIFAR-10 sample at that size scores 0.58-0.60 clean;
- a sample is flagged when its own speed reaches the same value (``sample_threshold``).

The window is where the two differ most relative to the spread between seeds: both sets are
fitted in the end, the class-wise noise 1.5-2 epochs sooner (§9.2).

The speed depends on the budget (epochs × batches) and the set's size: the threshold holds for
the default budget at the scale it was calibrated on; measure clean stores of your own scale with
``bench/detect_report.py`` before trusting the verdict on a large set.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..data.store import Split
from ..errors import ConfigError
from ..precision import autocast_auto
from . import DETECTORS
from .base import DetectContext, Detection, Detector, check_labels, check_view, cnn_input, progress_bar, require_positive


def train_losses(ctx: DetectContext, cfg, run: int) -> torch.Tensor:
    """(epochs, N) float32 on the device: each sample's training loss in each epoch of one run."""
    from ..data.loaders import make_loader
    from ..models import build_model
    n = int(ctx.y.shape[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.torch_seed(2, run))
        model = build_model(cfg.model, ctx.num_classes, int(ctx.x.shape[1]), width=cfg.width)
    model = model.to(ctx.device)
    if ctx.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loader = make_loader(Split(x=ctx.x, y=ctx.y), cfg.batch_size, device=ctx.device, shuffle=True,
                         drop_last=False, seed=int(ctx.rng(3, run).integers(0, 2 ** 31)))
    losses = torch.zeros(cfg.epochs, n, device=ctx.device)
    model.train()
    for e in range(cfg.epochs):
        loader.set_epoch(e)
        for xb, yb, ib in loader:
            with autocast_auto(ctx.device):
                out = model(cnn_input(xb, cfg.view))
            loss = F.cross_entropy(out.float(), yb, reduction="none")
            opt.zero_grad(set_to_none=True)
            loss.mean().backward()
            opt.step()
            losses[e, ib] = loss.detach()
        ctx.log({"run": run + 1, "epoch": e + 1})
    return losses


@DETECTORS.register("loss_dynamics")
class LossDynamics(Detector):
    """How fast each sample's loss collapses while small CNNs train on the data: shortcut samples are learnt first.

    Details: the module docstring (docs/methods.md §9.2)."""

    reference = ("early-training loss dynamics: Li et al., Anti-Backdoor Learning, NeurIPS 2021 (low early loss "
                 "isolates poisons); Sandoval-Segura et al., Poisons that are learned faster are more effective, "
                 "CVPR-W 2022; Yu et al., ICANN 2024 (arXiv 2408.08143): UEs are fitted faster than clean data")

    @dataclass
    class Config:
        view: str = "residual"          # residual (pixel − its 3×3 mean) | raw (the pixels) [ours]
        model: str = "resnet18"         # registered model trained from scratch [ours]
        width: float = 0.125            # its channel-width multiplier [ours]
        epochs: int = 8                 # the early window: epochs of each run [ours]
        batch_size: int = 64            # images per step [ours]
        lr: float = 0.002               # Adam learning rate [ours]
        runs: int = 3                   # independent runs whose per-sample losses are averaged [ours]
        sample_threshold: float = 0.72  # flag a sample whose speed 1 − mean loss/ln K is at least this [ours]
        threshold: float = 0.72         # protected when the mean speed is at least this [ours]

    def check(self, cfg) -> None:
        check_view(self.name, cfg.view)
        require_positive(self.name, cfg, "width", "epochs", "batch_size", "lr", "runs")
        for key in ("threshold", "sample_threshold"):
            if not getattr(cfg, key) <= 1:
                raise ConfigError(f"{self.name}.{key}={getattr(cfg, key)}: speeds are at most 1")
        from ..models import MODELS
        MODELS.get(cfg.model)  # ConfigError naming the registered models

    def detect(self, ctx: DetectContext) -> Detection:
        cfg = ctx.cfg
        y = check_labels(ctx.y, ctx.num_classes)
        ctx = DetectContext(ctx.x, y, ctx.num_classes, cfg, ctx.seed, ctx.device, ctx.progress, ctx.log)
        bar = progress_bar(ctx, cfg.runs, f"{self.name} ({cfg.model} x{cfg.width:g}, {cfg.epochs} epochs)")
        total = torch.zeros(cfg.epochs, len(y), device=ctx.device)
        for r in range(cfg.runs):
            total += train_losses(ctx, cfg, r)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        curve = (total / cfg.runs).cpu().double().numpy()            # (epochs, N) mean over runs
        speed = 1.0 - curve.mean(0) / math.log(ctx.num_classes)
        learnt = speed >= cfg.sample_threshold
        first = (curve[0] / math.log(ctx.num_classes)) <= 1.0 - cfg.sample_threshold
        details = {"mean_loss_per_epoch": [float(v) for v in curve.mean(1)], "mean_speed": float(speed.mean()),
                   "fraction_learnt_early": float(learnt.mean()),
                   "fraction_learnt_in_first_epoch": float(first.mean()),
                   "steps_per_run": int(cfg.epochs * math.ceil(len(y) / cfg.batch_size)), "config": asdict(cfg)}
        return Detection(
            score=float(speed.mean()), threshold=float(cfg.threshold),
            calibration=("[ours] synthetic source, 16 px, 400 images: clean vs class-wise noise (tests/test_detect.py); "
                         "depends on the budget and the set's size: recalibrate on clean stores of your scale"),
            score_meaning=(f"mean learning speed 1 - (mean training loss)/ln K over the first {cfg.epochs} epochs of "
                           f"{cfg.runs} {cfg.model} run(s) ({cfg.view} view)"),
            sample_scores=speed, sample_threshold=float(cfg.sample_threshold),
            sample_meaning="learning speed 1 - (mean training loss over the early window) / ln K",
            details=details)
