"""A fast victim: airbench94 (K. Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", arXiv
2404.00498) as a recipe of the one engine — the same loaders, fused augmentation, compile, records
and resume as every other recipe, so it runs under ``python -m ueperf.train --recipe fast_victim``
and ``python -m ueperf.sweep --recipe fast_victim`` on clean or protected data alike."""
from __future__ import annotations

from ..config import RunConfig
from . import RECIPES

# airbench94's optimiser, stated per 1,024 images of a summed loss with momentum 0.85 [paper]; in
# this engine's convention (mean loss over the batch, torch SGD with coupled weight decay) these are
# lr = 11.5 / (1 + 1 / (1 − 0.85)) = 1.5 and weight decay = 0.0153 / 11.5, so that lr × weight decay
# = 0.0153 / 7.67 = 2.0e-3 per step at the peak, as there [conversion: ours]
PAPER_LR, PAPER_WD, MOMENTUM = 11.5, 0.0153, 0.85
LR = PAPER_LR / (1.0 + 1.0 / (1.0 - MOMENTUM))
WEIGHT_DECAY = PAPER_WD / PAPER_LR


@RECIPES.register("fast_victim")
def fast_victim() -> RunConfig:
    """airbench94's network and training (fastnet, whitening, Lookahead, TTA, ...) on CIFAR-10:
    10 epochs of batch 1024, about 94% clean accuracy in seconds on one GPU in the paper.

    Every technique is a key with an off value (``fast.*``, ``optim.*``), so a run can leave any one
    out (``--set fast.lookahead=false``); ``bench/fast_victim.py`` measures each. What differs from
    the paper: 10 whole epochs instead of 9.9 (the engine counts epochs); random flips instead of
    the paper's alternating flip; the 2-px translation pads with zeros (the fused augmentation's
    crop) where the paper reflects; no torch.compile by default (``--set train.compile=true`` on a
    GPU). Values were not tuned here: each is the paper's, converted where noted.

    Countermeasures and paradigms keep this recipe's epochs, lr and momentum (``keeps``): UEraser
    or ft does not turn it into a 200- or 30-epoch run at lr 0.1; change them with --set."""
    cfg = RunConfig()
    cfg.data.dataset = "cifar10"
    cfg.model.name = "fastnet"
    cfg.model.width = 1.0               # widths 64/256/256 [paper]
    cfg.train.epochs = 10               # [paper: 9.9]
    cfg.train.batch_size = 1024         # [paper]
    cfg.augment.crop_padding = 2        # 2-px random translation [paper; zero padding here, reflection there]
    cfg.augment.flip = True             # horizontal flip [paper: alternating flip; random here]
    cfg.augment.normalize = True        # CIFAR-10 mean / std [paper]
    cfg.optim.lr = LR                   # 1.5 [paper: 11.5, converted above]
    cfg.optim.momentum = MOMENTUM       # [paper]
    cfg.optim.nesterov = True           # [paper]
    cfg.optim.weight_decay = WEIGHT_DECAY  # 1.33e-3 [paper: 0.0153, converted above]
    cfg.optim.schedule = "linear"       # linear warm-up, then linear decay to 0 [paper]
    cfg.optim.warmup_epochs = 2.0       # the first 20 % of the run [paper]
    cfg.optim.warmup_start = 0.2        # the warm-up starts at 0.2 × lr [paper]
    f = cfg.fast
    f.whiten = True                     # 2×2 patch whitening, weights frozen [paper]
    f.whiten_images = 5000              # [ours: a 10 % sample of CIFAR-10 pins the 12×12 covariance]
    f.whiten_eps = 5e-4                 # [ours]
    f.whiten_bias_epochs = 3.0          # [paper]
    f.identity_init = True              # [paper]
    f.bn_momentum = 0.4                 # [paper: 0.6 in the convention running = 0.6 · running + 0.4 · batch]
    f.bn_bias_lr = 64.0                 # [paper]
    f.label_smoothing = 0.2             # [paper]
    f.lookahead = True                  # [paper]
    f.lookahead_every = 5               # [paper]
    f.lookahead_decay = 0.95            # [paper]
    f.tta = "multicrop"                 # flips × 1-px shifts, 6 views [paper]
    return cfg


fast_victim.keeps = ("train.epochs", "optim.lr", "optim.momentum")
