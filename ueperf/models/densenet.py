"""DenseNet-121 (Huang et al., CVPR 2017), growth 32, blocks (6, 12, 24, 16), bottleneck ×4,
compression 0.5, with torchvision's module names.

torchvision keeps the whole network but the classifier in a Sequential called ``features``; here
it is called ``body`` (``features`` is the feature method) and checkpoint keys ``features.*`` are
renamed to ``body.*``, so torchvision DenseNet checkpoints load by name (including the old
``norm.1``-style layer keys, renamed as torchvision's own loader does).

Stems:
- ``cifar``: 3×3 conv stride 1 (2·growth = 64 channels) + BN + ReLU, no max-pool; total
  down-sampling 8 (the three transitions). 6,956,426 parameters for 10 classes — the CIFAR
  DenseNet-121 of kuangliu/pytorch-cifar (6,956,298) plus torchvision's ``norm0`` after the stem
  conv (128 parameters), kept so both stems share one layout.
- ``imagenet``: torchvision's 7×7 conv stride 2 + BN + ReLU + 3×3 max-pool stride 2; total
  down-sampling 32; 7,978,856 parameters for 1000 classes (torchvision's densenet121).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List, Tuple

import torch
from torch import nn

from .base import UEModel, register_model, global_pool, init_weights, scale_channels


class _DenseLayer(nn.Module):
    """BN-ReLU-1×1 conv (4·growth) - BN-ReLU-3×3 conv (growth).

    (N, C_in, H, W) (as a list of tensors to concatenate) → (N, growth, H, W).
    """

    def __init__(self, cin: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)  # overwrites the BN output only
        self.conv1 = nn.Conv2d(cin, bn_size * growth, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, kernel_size=3, padding=1, bias=False)

    def forward(self, inputs: List[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(inputs, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(x)))


class _DenseBlock(nn.ModuleDict):
    """``n`` dense layers; (N, C, H, W) → (N, C + n·growth, H, W)."""

    def __init__(self, n: int, cin: int, growth: int, bn_size: int) -> None:
        super().__init__()
        for i in range(n):
            self.add_module(f"denselayer{i + 1}", _DenseLayer(cin + i * growth, growth, bn_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for layer in self.values():
            feats.append(layer(feats))
        return torch.cat(feats, 1)


class _Transition(nn.Sequential):
    """BN-ReLU-1×1 conv (compression) - 2×2 average pool: (N, C, H, W) → (N, C', H/2, W/2)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(cin))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(cin, cout, kernel_size=1, bias=False))
        self.add_module("pool", nn.AvgPool2d(kernel_size=2, stride=2))


class DenseNet(UEModel):
    """DenseNet-BC; ``features`` → (N, D) with D = 1024 for DenseNet-121 at width 1."""

    head_name = "classifier"
    stem_conv_key = "body.conv0.weight"
    checkpoint_aliases = (
        (r"^features\.", "body."),
        # Old torchvision checkpoints: "denselayer1.norm.1.weight" → "denselayer1.norm1.weight".
        (r"(denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$",
         r"\1\2"),
    )

    def __init__(self, blocks: Tuple[int, ...], num_classes: int, width: float = 1.0,
                 stem: str = "cifar", growth: int = 32, bn_size: int = 4) -> None:
        super().__init__(num_classes, width, stem)
        growth = scale_channels(growth, width)
        c = scale_channels(64, width)  # 2·growth initial features (torchvision: 64)
        if stem == "imagenet":
            stem_layers = [("conv0", nn.Conv2d(3, c, kernel_size=7, stride=2, padding=3, bias=False)),
                           ("norm0", nn.BatchNorm2d(c)), ("relu0", nn.ReLU(inplace=True)),
                           ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1))]
        else:
            stem_layers = [("conv0", nn.Conv2d(3, c, kernel_size=3, padding=1, bias=False)),
                           ("norm0", nn.BatchNorm2d(c)), ("relu0", nn.ReLU(inplace=True))]
        self._n_stem = len(stem_layers)
        body = OrderedDict(stem_layers)
        for i, n in enumerate(blocks):
            body[f"denseblock{i + 1}"] = _DenseBlock(n, c, growth, bn_size)
            c += n * growth
            if i != len(blocks) - 1:
                body[f"transition{i + 1}"] = _Transition(c, c // 2)  # compression θ = 0.5
                c //= 2
        body["norm5"] = nn.BatchNorm2d(c)
        self.body = nn.Sequential(body)
        self.classifier = nn.Linear(c, num_classes)
        init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) → (N, D): body, final BN + ReLU, global average pooling."""
        return global_pool(torch.relu_(self.body(x)))  # in place on norm5's output

    def layer_groups(self) -> List[Tuple[str, nn.Module]]:
        """stem, denseblock1, transition1, …, denseblock4, head (norm5 + classifier): 9 groups."""
        groups: List[Tuple[str, nn.Module]] = [("stem", self.body[:self._n_stem])]
        for name, module in self.body.named_children():
            if name.startswith(("denseblock", "transition")):
                groups.append((name, module))
        groups.append(("head", nn.ModuleList([self.body.norm5, self.classifier])))
        return groups

    def group_stages(self) -> List[int]:
        """stem 0; denseblock i and the transition after it: stage i; head: last + 1."""
        stages = [0]
        for name, _ in self.layer_groups()[1:-1]:
            stages.append(int(name[-1]))
        return stages + [stages[-1] + 1]


@register_model("densenet121", stems=DenseNet.stems, min_size={"cifar": 8, "imagenet": 32},
                description="DenseNet-121, growth 32 (torchvision names, body = features)")
def densenet121(num_classes: int, width: float = 1.0, stem: str = "cifar") -> DenseNet:
    return DenseNet((6, 12, 24, 16), num_classes, width, stem)
