"""ResNet-18 / ResNet-50 (He et al., CVPR 2016) with torchvision's module names.

Module and state_dict names are torchvision's (``conv1, bn1, layer1..layer4, fc``; blocks
``layerN.M.conv1/bn1/...``, projection shortcuts ``layerN.0.downsample.0/1``), so torchvision
and timm ResNet checkpoints load by name. Two stems:

- ``cifar``: 3×3 conv, stride 1, no max-pool (the CIFAR ResNet of the UE literature, e.g.
  kuangliu/pytorch-cifar used by EM/REM/APBench); total down-sampling 8 (32 px → 4×4 at layer4).
- ``imagenet``: 7×7 conv, stride 2, then 3×3 max-pool stride 2 (torchvision); total
  down-sampling 32 (224 px → 7×7, 64 px → 2×2).

Published parameter counts (width 1): CIFAR ResNet-18, 10 classes: 11,173,962; torchvision
ResNet-18, 1000 classes: 11,689,512; ResNet-50, 1000 classes: 25,557,032.
Bottlenecks put the stride on the 3×3 conv (torchvision's "ResNet v1.5").
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Type, Union

import torch
from torch import nn

from .base import UEModel, register_model, init_weights, scale_channels


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convs + identity/projection shortcut. (N, cin, H, W) → (N, planes, H/s, W/s)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        # In place is safe: it only ever overwrites a BatchNorm output or the residual sum.
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # modifies the bn2 output, never x (which the caller may still hold)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (stride here: v1.5), 1×1 expand ×4. (N, cin, H, W) → (N, 4·planes, H/s, W/s)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


Block = Union[Type[BasicBlock], Type[Bottleneck]]


def _make_layer(block: Block, cin: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """One stage: ``blocks`` blocks, the first with stride ``stride`` and, where the shape
    changes, a 1×1 conv + BN projection shortcut (torchvision's ``downsample``)."""
    cout = planes * block.expansion
    downsample = None
    if stride != 1 or cin != cout:
        downsample = nn.Sequential(_conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
    layers = [block(cin, planes, stride, downsample)]
    layers += [block(cout, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ResNet(UEModel):
    """ResNet with torchvision names; ``features`` → (N, 512·expansion·width)."""

    head_name = "fc"
    stem_conv_key = "conv1.weight"
    # CIFAR model zoos (kuangliu/pytorch-cifar, the EM and REM repositories) name the head
    # ``linear`` and the projection shortcut ``shortcut``; otherwise their names are torchvision's.
    checkpoint_aliases = ((r"^linear\.", "fc."), (r"\.shortcut\.", ".downsample."))

    def __init__(self, block: Block, layers: Tuple[int, int, int, int], num_classes: int,
                 width: float = 1.0, stem: str = "cifar") -> None:
        super().__init__(num_classes, width, stem)
        c = [scale_channels(ch, width) for ch in (64, 128, 256, 512)]
        imagenet = stem == "imagenet"
        self.conv1 = (nn.Conv2d(3, c[0], kernel_size=7, stride=2, padding=3, bias=False)
                      if imagenet else _conv3x3(3, c[0]))
        self.bn1 = nn.BatchNorm2d(c[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = (nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if imagenet
                        else nn.Identity())
        self.layer1 = _make_layer(block, c[0], c[0], layers[0], stride=1)
        self.layer2 = _make_layer(block, c[0] * block.expansion, c[1], layers[1], stride=2)
        self.layer3 = _make_layer(block, c[1] * block.expansion, c[2], layers[2], stride=2)
        self.layer4 = _make_layer(block, c[2] * block.expansion, c[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(c[3] * block.expansion, num_classes)
        init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) → (N, D) after layer4 and global average pooling."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def layer_groups(self) -> List[Tuple[str, nn.Module]]:
        """stem (conv1+bn1), each residual block ``layerN.M``, head (fc) — spec §4.3.

        ResNet-18: 1 + 8 + 1 = 10 groups; ResNet-50: 1 + 16 + 1 = 18.
        """
        groups: List[Tuple[str, nn.Module]] = [("stem", nn.ModuleList([self.conv1, self.bn1]))]
        for s in range(1, 5):
            layer = getattr(self, f"layer{s}")
            groups += [(f"layer{s}.{i}", blk) for i, blk in enumerate(layer)]
        groups.append(("head", self.fc))
        return groups

    def group_stages(self) -> List[int]:
        stages = [0]
        for s in range(1, 5):
            stages += [s] * len(getattr(self, f"layer{s}"))
        return stages + [5]


@register_model("resnet18", stems=ResNet.stems, min_size={"cifar": 8, "imagenet": 32},
                description="ResNet-18 (torchvision names); CIFAR stem: 3x3 s1, no max-pool")
def resnet18(num_classes: int, width: float = 1.0, stem: str = "cifar") -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, width, stem)


@register_model("resnet50", stems=ResNet.stems, min_size={"cifar": 8, "imagenet": 32},
                description="ResNet-50 v1.5 (torchvision names)")
def resnet50(num_classes: int, width: float = 1.0, stem: str = "cifar") -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, width, stem)

