"""VGG-16 with BatchNorm (Simonyan & Zisserman 2015; BN variant), CIFAR layout.

The layout of kuangliu/pytorch-cifar's ``VGG('VGG16')``, the VGG-16 of the UE literature:
13 × (3×3 conv with bias, BN, ReLU) with 5 max-pools, then one ``Linear(512, K)``. At width 1 and
10 classes it has 14,728,266 parameters. The conv stack is a flat ``nn.Sequential`` named
``body`` whose indices equal kuangliu's and torchvision's ``vgg16_bn().features`` indices
(``features.N`` checkpoint keys are renamed to ``body.N``; ``features`` is the feature method
here). torchvision's ImageNet classifier (three Linear layers) does not fit this head and is
skipped when loading such a checkpoint.

Global average pooling before the classifier makes any image side ≥ 32 work (32 px → 1×1 after
the 5 pools, as in the CIFAR model; 64 px → 2×2; 224 px → 7×7 are averaged). VGG has no separate
stem, so only the ``cifar`` layout exists; at 224 px it is the same conv stack as torchvision's.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn

from .base import UEModel, register_model, global_pool, init_weights, scale_channels

# Channels of the 13 convs; "M" = 2×2 max-pool, stride 2 (VGG configuration "D").
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(UEModel):
    """VGG with BN; ``features`` → (N, 512·width)."""

    stems = ("cifar",)
    head_name = "classifier"
    stem_conv_key = "body.0.weight"
    checkpoint_aliases = ((r"^features\.", "body."),)

    def __init__(self, cfg: Tuple, num_classes: int, width: float = 1.0,
                 stem: str = "cifar") -> None:
        super().__init__(num_classes, width, stem)
        layers: List[nn.Module] = []
        # (start, stop, stage) slices of ``body`` per group: conv + BN + ReLU (+ the max-pool that
        # follows it, so each of the 13 groups is one conv layer — spec §4.3).
        self._group_slices: List[Tuple[int, int, int]] = []
        cin, stage = 3, 1
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                start, _, st = self._group_slices[-1]
                self._group_slices[-1] = (start, len(layers), st)
                stage += 1
                continue
            cout = scale_channels(v, width)
            start = len(layers)
            layers += [nn.Conv2d(cin, cout, kernel_size=3, padding=1),  # bias=True as published
                       nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            self._group_slices.append((start, len(layers), stage))
            cin = cout
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)
        init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) → (N, D) after the conv stack and global average pooling (H, W ≥ 32)."""
        return global_pool(self.body(x))

    def layer_groups(self) -> List[Tuple[str, nn.Module]]:
        """``conv1`` … ``conv13`` (each conv + BN + ReLU [+ pool]), then ``head``: 14 groups."""
        groups: List[Tuple[str, nn.Module]] = [
            (f"conv{i + 1}", self.body[a:b]) for i, (a, b, _) in enumerate(self._group_slices)]
        groups.append(("head", self.classifier))
        return groups

    def group_stages(self) -> List[int]:
        """Stage = resolution level (1..5, between max-pools); VGG has no stem (no stage 0)."""
        stages = [st for _, _, st in self._group_slices]
        return stages + [max(stages) + 1]


@register_model("vgg16", stems=VGG.stems, min_size={"cifar": 32},
                description="VGG-16 with BN, one Linear(512, K) head (kuangliu layout)")
def vgg16(num_classes: int, width: float = 1.0, stem: str = "cifar") -> VGG:
    return VGG(VGG16_CFG, num_classes, width, stem)
