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
(BN before each conv, no BN in the projection shortcut): that is ``senet18_preact`` below, into
which APBench's and kuangliu's SENet18 checkpoints load; kuangliu's post-activation
``SENet(BasicBlock, ...)`` checkpoints load into ``senet18`` (``fc1``/``fc2`` → ``se.fc1``/``se.fc2``).

``senet18_preact`` — the pre-activation SE block (He et al., ECCV 2016's ordering)::

    a = ReLU(BN₁(x));  shortcut = x, or a 1×1 conv of a (no BN) where the shape changes;
    U = conv₂(ReLU(BN₂(conv₁(a))));  out = SE(U) + shortcut     (no ReLU after the sum)

with the CIFAR model zoo's stem (conv-BN-ReLU) and, as there, no BN-ReLU after the last stage
before the pooling. Names as ``senet18`` (``layerN.M.bn1/conv1/bn2/conv2/se.fc1/se.fc2``,
``layerN.0.downsample.0``, ``fc``); the zoo's ``shortcut.0``, ``fc1``/``fc2`` and ``linear`` load.
Parameters (width 1, 10 classes, CIFAR stem): 11,260,354.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .base import init_weights, register_model, scale_channels
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


class PreActSEBlock(nn.Module):
    """Pre-activation basic block with SE on the residual branch before the sum (APBench's and
    kuangliu's SENet18 ``PreActBlock``). (N, cin, H, W) → (N, planes, H/s, W/s)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, planes, kernel_size=1, stride=stride, bias=False))
                           if stride != 1 or cin != planes else None)
        self.se = SqueezeExcitation(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(a)
        out = self.conv2(torch.relu(self.bn2(self.conv1(a))))
        return self.se(out) + shortcut


class PreActSENet(SENet):
    """APBench's SENet-18: pre-activation SE blocks; stem conv-BN-ReLU, no BN after the last stage.
    Groups and stages are ResNet's (stem = conv1 + bn1, one group per block, head)."""

    def __init__(self, layers, num_classes: int, width: float = 1.0, stem: str = "cifar") -> None:
        super().__init__(SEBasicBlock, layers, num_classes, width, stem)  # stem, pooling, head, names
        c = [scale_channels(ch, width) for ch in (64, 128, 256, 512)]
        cin = c[0]
        for s, (planes, n) in enumerate(zip(c, layers), start=1):
            blocks = []
            for i in range(n):
                blocks.append(PreActSEBlock(cin, planes, stride=2 if (i == 0 and s > 1) else 1))
                cin = planes
            setattr(self, f"layer{s}", nn.Sequential(*blocks))
        init_weights(self)


@register_model("senet18", stems=SENet.stems, min_size={"cifar": 8, "imagenet": 32},
                description="SENet-18: ResNet-18 with SE (r 16) in every basic block")
def senet18(num_classes: int, width: float = 1.0, stem: str = "cifar") -> SENet:
    return SENet(SEBasicBlock, (2, 2, 2, 2), num_classes, width, stem)


@register_model("senet18_preact", stems=SENet.stems, min_size={"cifar": 8, "imagenet": 32},
                description="SENet-18 of APBench / kuangliu: pre-activation blocks with SE (r 16); their checkpoints load")
def senet18_preact(num_classes: int, width: float = 1.0, stem: str = "cifar") -> PreActSENet:
    return PreActSENet((2, 2, 2, 2), num_classes, width, stem)
