"""Wide ResNets WRN-28-10 and WRN-34-10 (Zagoruyko & Komodakis, BMVC 2016), pre-activation,
dropout 0, CIFAR layout.

Module names follow xternalz/WideResNet-pytorch, the implementation behind the WRN-34-10 of
Madry/TRADES adversarial training and the UE repositories (``conv1``; ``block{1,2,3}.layer.M``
with ``bn1, conv1, bn2, conv2, convShortcut``; final ``bn1``; ``fc``), so their checkpoints load
by name. Depth d gives n = (d − 4) / 6 blocks per stage (28 → 4, 34 → 5); widths 16, 16k, 32k,
64k with k = 10. Parameter counts for 10 classes: WRN-28-10 36,479,194; WRN-34-10 46,160,474.

Only the CIFAR stem (3×3 conv, stride 1) exists — the WRN paper's ImageNet networks are a
different (bottleneck) family; larger images simply give larger final maps, which the global
average pool absorbs (64 px → 16×16 at the last stage). Total down-sampling 4.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn

from .base import UEModel, register_model, global_pool, init_weights, scale_channels


class WideBasic(nn.Module):
    """Pre-activation block: BN-ReLU-3×3 conv (stride s) - BN-ReLU-3×3 conv, + shortcut.

    When the shape changes, the 1×1 ``convShortcut`` reads the pre-activated input (as in
    xternalz's code); otherwise the shortcut is the raw input. (N, cin, H, W) → (N, cout, H/s, W/s).
    """

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)  # overwrites the BN output only, never the input x
        self.conv1 = nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, kernel_size=3, stride=1, padding=1, bias=False)
        self.equal_in_out = cin == cout and stride == 1
        self.convShortcut = (None if self.equal_in_out else
                             nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.relu1(self.bn1(x))
        shortcut = x if self.convShortcut is None else self.convShortcut(o)
        out = self.conv2(self.relu2(self.bn2(self.conv1(o))))
        return out + shortcut


class _Stage(nn.Module):
    """``n`` WideBasic blocks, kept under ``.layer`` for xternalz's key names."""

    def __init__(self, n: int, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[WideBasic(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                     for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(UEModel):
    """WRN-d-k; ``features`` → (N, 64·k·width)."""

    stems = ("cifar",)
    head_name = "fc"
    stem_conv_key = "conv1.weight"

    def __init__(self, depth: int, widen: int, num_classes: int, width: float = 1.0,
                 stem: str = "cifar") -> None:
        super().__init__(num_classes, width, stem)
        assert (depth - 4) % 6 == 0, "WRN depth must be 6n + 4"
        n = (depth - 4) // 6
        c = [scale_channels(ch, width) for ch in (16, 16 * widen, 32 * widen, 64 * widen)]
        self.conv1 = nn.Conv2d(3, c[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = _Stage(n, c[0], c[1], 1)
        self.block2 = _Stage(n, c[1], c[2], 2)
        self.block3 = _Stage(n, c[2], c[3], 2)
        self.bn1 = nn.BatchNorm2d(c[3])  # the final BN (xternalz's name)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(c[3], num_classes)
        init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) → (N, D): stem, 3 stages, final BN + ReLU, global average pooling."""
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return global_pool(self.relu(self.bn1(x)))

    def layer_groups(self) -> List[Tuple[str, nn.Module]]:
        """stem (conv1), each block ``blockS.M``, head (final bn1 + fc): 3n + 2 groups
        (WRN-28-10: 14, WRN-34-10: 17)."""
        groups: List[Tuple[str, nn.Module]] = [("stem", self.conv1)]
        for s in (1, 2, 3):
            stage = getattr(self, f"block{s}").layer
            groups += [(f"block{s}.{i}", blk) for i, blk in enumerate(stage)]
        groups.append(("head", nn.ModuleList([self.bn1, self.fc])))
        return groups

    def group_stages(self) -> List[int]:
        stages = [0]
        for s in (1, 2, 3):
            stages += [s] * len(getattr(self, f"block{s}").layer)
        return stages + [4]


@register_model("wrn28_10", stems=WideResNet.stems, min_size={"cifar": 4},
                description="Wide ResNet 28-10, pre-activation, dropout 0")
def wrn28_10(num_classes: int, width: float = 1.0, stem: str = "cifar") -> WideResNet:
    return WideResNet(28, 10, num_classes, width, stem)


@register_model("wrn34_10", stems=WideResNet.stems, min_size={"cifar": 4},
                description="Wide ResNet 34-10, pre-activation, dropout 0")
def wrn34_10(num_classes: int, width: float = 1.0, stem: str = "cifar") -> WideResNet:
    return WideResNet(34, 10, num_classes, width, stem)
