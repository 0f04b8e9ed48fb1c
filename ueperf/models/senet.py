"""SENet-18: ResNet-18 with squeeze-and-excitation in every basic block (Hu et al., CVPR 2018,
arXiv 1709.01507; reduction r = 16), the SENet-18 of the CIFAR model zoos and UE benchmarks.

The SE-ResNet module of the paper (its Fig. 3): the residual branch U (conv-BN-ReLU-conv-BN) is
recalibrated channel-wise before the sum with the identity,

    s = σ(W₂ δ(W₁ z)),   z = global average pool of U,   out = ReLU(s ⊙ U + shortcut(x)),

with W₁: C → C/r and W₂: C/r → C (1×1 convs with bias, as the paper's Caffe models and the CIFAR
zoos), δ = ReLU, σ = sigmoid. Everything else is :mod:`ueperf.models.resnet`'s ResNet-18 —
torchvision names, the same two stems (``cifar``: 3×3 stride 1, no max-pool, down-sampling 8;
``imagenet``: 7×7 stride 2 + max-pool, down-sampling 32), layer groups and stages. The SE convs are
``layerN.M.se.fc1/fc2``.

Width: C/r = max(1, C // 16) of the scaled block width C.

Parameters (width 1, 10 classes, CIFAR stem): 11,263,042 = ResNet-18's 11,173,962 + 89,080 for
the eight SE modules (C²/8 + C + C/16 per block). The SENet18 of kuangliu/pytorch-cifar and APBench
(``SENet(PreActBlock, [2, 2, 2, 2])``, 11,260,354) puts the SE module in *pre-activation* blocks
(BN before each conv, no BN in the projection shortcut); its checkpoints do not load here, those of
kuangliu's post-activation ``SENet(BasicBlock, ...)`` do (``fc1``/``fc2`` → ``se.fc1``/``se.fc2``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .base import register_model
from .resnet import BasicBlock, ResNet

SE_REDUCTION = 16  # r [paper]


class SqueezeExcitation(nn.Module):
    """(N, C, H, W) → (N, C, H, W): ``x`` scaled per channel by σ(fc2(ReLU(fc1(avgpool(x)))))."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        squeezed = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, squeezed, kernel_size=1)
        self.fc2 = nn.Conv2d(squeezed, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = nn.functional.adaptive_avg_pool2d(x, 1)           # squeeze: (N, C, 1, 1)
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(z))))  # excitation
        return x * s  # a new tensor: x (the BN output) is still needed for the gradient of s


class SEBasicBlock(BasicBlock):
    """ResNet basic block with SE on the residual branch before the sum (the paper's SE-ResNet
    module). (N, cin, H, W) → (N, planes, H/s, W/s)."""

    def __init__(self, cin: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None) -> None:
        super().__init__(cin, planes, stride, downsample)
        self.se = SqueezeExcitation(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        out += identity  # modifies the SE product, never x
        return self.relu(out)


class SENet(ResNet):
    """SE-ResNet; ``features`` → (N, 512·width). Groups and stages are ResNet's."""

    # ResNet's CIFAR-zoo renames plus kuangliu's SE names on the block (``layer1.0.fc1``).
    checkpoint_aliases = ResNet.checkpoint_aliases + ((r"^(layer\d\.\d+)\.fc([12])\.", r"\1.se.fc\2."),)


@register_model("senet18", stems=SENet.stems, min_size={"cifar": 8, "imagenet": 32},
                description="SENet-18: ResNet-18 with SE (r 16) in every basic block")
def senet18(num_classes: int, width: float = 1.0, stem: str = "cifar") -> SENet:
    return SENet(SEBasicBlock, (2, 2, 2, 2), num_classes, width, stem)
