"""fastnet: the small VGG-like network of airbench (K. Jordan, "94% on CIFAR-10 in 3.29 seconds on a
single GPU", arXiv 2404.00498), written here from the paper's description of airbench94.

Layout (32 px input; ``w`` = ``model.width``)::

    whiten   Conv 2×2, 3 → 24, no padding, bias      32 → 31 px   stage 0
             GELU
    block1   Conv 3×3 (pad 1, no bias) 24 → 64w → MaxPool 2 → BN → GELU
             → Conv 3×3 64w → 64w → BN → GELU        31 → 15 px   stage 1
    block2   the same, 64w → 256w                    15 → 7 px    stage 2
    block3   the same, 256w → 256w                   7 → 3 px     stage 3
    head     global max-pool → Linear(256w, K, no bias) → × 1/9   stage 4

What follows the paper:

- the 2×2 whitening convolution without padding and with 24 = 2 · (3 · 2 · 2) output channels:
  one filter per eigenvector of the 2×2×3 patch covariance and one per negated eigenvector, so
  the GELU after it keeps the information of both signs. The width multiplier does not change it
  (its size is fixed by the patch dimension). The engine fits it to the training images at train
  start and freezes its weights when ``fast.whiten`` is on (``ueperf.engine.fast``); otherwise it
  is an ordinary conv with PyTorch's default init that trains like every other;
- three blocks of conv → max-pool → BN → GELU → conv → BN → GELU, widths 64 / 256 / 256, convs
  without bias (each is followed by a BN, which has the shift);
- BatchNorm with its scale fixed at 1 (only the shift β is learned; :class:`ShiftNorm2d`);
- max-pooling of the last 3×3 map to 1×1 (global), a bias-free linear head and its output
  multiplied by 1/9;
- PyTorch's default initialisation of every conv and of the head; the partial identity
  initialisation of the paper is the engine's ``fast.identity_init``, and BatchNorm's momentum
  its ``fast.bn_momentum`` (both off unless the recipe turns them on, as fast_victim does).

Where this deviates:

- the final pooling is a *global* max-pool at every image size (the paper's MaxPool(3) is global
  at 32 px only); so 64 px images work too, and the smallest image is 9 px (9 → 8 → 4 → 2 → 1);
- the 1/9 scale sits in the head (:class:`ScaledLinear`, still an ``nn.Linear``) so that
  ``head(features(x)) == forward(x)``, the models' contract; ``features`` is the unscaled
  max-pooled map;
- BatchNorm keeps PyTorch's ε = 1e-5 (airbench's is smaller; it matters only for channels with
  near-zero variance).

Layer groups, shallow → deep: ``whiten`` (the conv and its GELU), ``block1``, ``block2``,
``block3``, ``head`` — five groups, stages 0, 1, 2, 3, 4 (one per resolution), so paradigm PF-k
freezes the stem and the first k blocks and ST damps the shallow blocks first. At width 1 and 10
classes the network has 1,971,640 parameters (1,971,352 trained with ``fast.whiten``, which freezes
the 288 whitening weights).
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import UEModel, register_model, scale_channels

WIDTHS = (64, 256, 256)   # block widths at width 1 [paper]
PATCH = 2                 # side of the whitening patches [paper]
HEAD_SCALE = 1.0 / 9.0    # the head's output scale [paper]


class ShiftNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose scale is fixed at 1: y = (x − μ) / sqrt(σ² + ε) + β, β learned.

    A ``nn.BatchNorm2d`` (so every BatchNorm rule applies: running statistics, eval mode,
    ``fast.bn_momentum``) with no ``weight`` parameter; ``bias`` is β."""

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, affine=False)
        self.bias = nn.Parameter(torch.zeros(num_features))


class ScaledLinear(nn.Linear):
    """``nn.Linear`` without bias whose output is multiplied by ``scale``: z = scale · W f."""

    def __init__(self, in_features: int, out_features: int, scale: float) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight) * self.scale

    def extra_repr(self) -> str:
        return super().extra_repr() + f", scale={self.scale:.4g}"


class ConvGroup(nn.Module):
    """conv 3×3 → max-pool 2 → BN → GELU → conv 3×3 → BN → GELU: one resolution stage."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = ShiftNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, kernel_size=3, padding=1, bias=False)
        self.norm2 = ShiftNorm2d(cout)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class FastNet(UEModel):
    """airbench94's network (see the module docstring); ``features`` → (N, 256·width)."""

    stems = ("cifar",)
    head_name = "head"
    stem_conv_key = "whiten.weight"

    def __init__(self, num_classes: int, width: float = 1.0, stem: str = "cifar") -> None:
        super().__init__(num_classes, width, stem)
        patch_dim = 3 * PATCH * PATCH
        self.whiten = nn.Conv2d(3, 2 * patch_dim, kernel_size=PATCH, padding=0, bias=True)
        self.whiten_act = nn.GELU()
        w1, w2, w3 = (scale_channels(c, width) for c in WIDTHS)
        self.block1 = ConvGroup(2 * patch_dim, w1)
        self.block2 = ConvGroup(w1, w2)
        self.block3 = ConvGroup(w2, w3)
        self.head = ScaledLinear(w3, num_classes, HEAD_SCALE)

    @property
    def head(self) -> nn.Linear:
        """The final linear layer (a :class:`ScaledLinear`). The submodule is named ``head``, which is
        also the name of ``UEModel.head``: read it from the registered modules (as the ViT does)."""
        return self._modules["head"]

    @property
    def whiten_layer(self) -> nn.Conv2d:
        """The patch-whitening convolution (what ``fast.whiten`` fits and freezes)."""
        return self.whiten

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) → (N, 256·width): the blocks, then a global max-pool (H, W ≥ 9)."""
        x = self.whiten_act(self.whiten(x))
        x = self.block3(self.block2(self.block1(x)))
        return torch.flatten(F.adaptive_max_pool2d(x, 1), 1)

    def layer_groups(self) -> List[Tuple[str, nn.Module]]:
        """``whiten``, ``block1``, ``block2``, ``block3``, ``head``: 5 groups."""
        return [("whiten", nn.Sequential(self.whiten, self.whiten_act)), ("block1", self.block1),
                ("block2", self.block2), ("block3", self.block3), ("head", self.head)]

    def group_stages(self) -> List[int]:
        """One resolution stage per block: whiten 0, blocks 1-3, head 4."""
        return [0, 1, 2, 3, 4]


@register_model("fastnet", stems=FastNet.stems, min_size={"cifar": 9},
                description="airbench94's small VGG-like net: 2x2 whitening conv, 3 conv blocks (64/256/256), "
                            "global max-pool, head x 1/9")
def fastnet(num_classes: int, width: float = 1.0, stem: str = "cifar") -> FastNet:
    return FastNet(num_classes, width, stem)
