"""MobileNet-V2 (Sandler et al., CVPR 2018, arXiv 1801.04381), with torchvision's module names.

The network of the paper's Table 2: a 3×3 conv (32), then 17 inverted-residual bottlenecks in seven
sequences (expansion t, output channels c, repeats n, stride s of the first repeat)

    t  c    n  s        t  c    n  s
    1  16   1  1        6  64   4  2
    6  24   2  2        6  96   3  1
    6  32   3  2        6  160  3  2
                        6  320  1  1

then a 1×1 conv to 1280 channels, global average pooling and the linear classifier. A bottleneck
(Fig. 3b / Table 1) is 1×1 expand to t·cin + BN + ReLU6 (absent when t = 1), 3×3 depthwise conv
(stride s) + BN + ReLU6, 1×1 linear projection + BN (no activation); the input is added back when
stride = 1 and cin = cout. Convolutions carry no bias; every conv is followed by BatchNorm.

Names are torchvision's ``mobilenet_v2`` with its ``features`` Sequential called ``body`` (as in
DenseNet/VGG here, ``features`` being the feature method): ``body.0`` = stem conv/BN/ReLU6,
``body.1..17`` = bottlenecks (``body.i.conv`` = [expand] / depthwise / project conv / BN),
``body.18`` = the 1×1 conv to 1280; the head is ``classifier`` (torchvision:
``classifier.1`` after a Dropout; renamed on load), so torchvision checkpoints load by name.

Stems:
- ``imagenet``: the published strides — stem conv stride 2 and the Table-2 strides; total
  down-sampling 32 (224 px → 7×7, 64 px → 2×2).
- ``cifar``: the usual CIFAR adaptation (e.g. kuangliu/pytorch-cifar's MobileNetV2): stem conv
  stride 1 and the second sequence (c = 24) at stride 1; total down-sampling 8 (32 px → 4×4).
  Unlike that code, no 1×1 projection shortcut is added where cin ≠ cout (the paper adds the input
  back only when the shapes match), so the layer shapes are the paper's.
  Both stems have the same parameter shapes (only strides differ).

Width: ``scale_channels`` on every channel count, the 1280 of the last conv included, expansion on
the scaled input (hidden = t · cin). At width 1 these are exactly the published counts (all
multiples of 8). At other widths this differs from the paper/torchvision, which round to multiples
of 8 and keep 1280 for width < 1.

Parameters (width 1): 10 classes 2,236,682; 1000 classes 3,504,872 (= torchvision mobilenet_v2).
Activations are ReLU6 as published; the classifier's dropout (0.2 in torchvision) is
``model.dropout`` here (default 0).
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn

from .base import UEModel, register_model, global_pool, init_weights, scale_channels

# (expansion t, output channels c, repeats n, stride s of the first repeat): the paper's Table 2.
MOBILENET_V2_CFG: Tuple[Tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
# Resolution stage (UEModel.group_stages) of each Table-2 sequence: stage k starts where the
# published network halves the resolution (the c = 96 and c = 320 sequences keep it).
SEQUENCE_STAGES = (1, 2, 3, 4, 4, 5, 5)


def _conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias) + BN + ReLU6, as torchvision's ``Conv2dNormActivation`` (keys ``.0``, ``.1``).

    In place is safe: the ReLU6 only ever overwrites the BatchNorm output.
    """
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=kernel, stride=stride, padding=(kernel - 1) // 2,
                  groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """Bottleneck of the paper's Table 1: [1×1 expand + BN + ReLU6] → 3×3 depthwise (stride s)
    + BN + ReLU6 → 1×1 linear projection + BN, plus the input when stride 1 and cin = cout.

    (N, cin, H, W) → (N, cout, H/s, W/s).
    """

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.use_residual = stride == 1 and cin == cout
        layers: List[nn.Module] = []
        if expansion != 1:
            layers.append(_conv_bn_relu6(cin, hidden, 1))
        layers += [_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),  # depthwise
                   nn.Conv2d(hidden, cout, kernel_size=1, bias=False),      # linear bottleneck
                   nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.use_residual:
            out += x  # modifies the projection BN's output, never x (which the caller may still hold)
        return out


class MobileNetV2(UEModel):
    """MobileNet-V2; ``features`` → (N, 1280·width)."""

    head_name = "classifier"
    stem_conv_key = "body.0.0.weight"
    checkpoint_aliases = ((r"^features\.", "body."), (r"^classifier\.1\.", "classifier."))

    def __init__(self, num_classes: int, width: float = 1.0, stem: str = "cifar") -> None:
        super().__init__(num_classes, width, stem)
        imagenet = stem == "imagenet"
        cin = scale_channels(32, width)
        layers: List[nn.Module] = [_conv_bn_relu6(3, cin, 3, stride=2 if imagenet else 1)]
        self._stages = [0]  # resolution stage of body[i]
        for seq, (t, c, n, s) in enumerate(MOBILENET_V2_CFG):
            cout = scale_channels(c, width)
            if seq == 1 and not imagenet:
                s = 1  # CIFAR: keep 32 px through the c = 24 sequence
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                self._stages.append(SEQUENCE_STAGES[seq])
                cin = cout
        last = scale_channels(1280, width)
        layers.append(_conv_bn_relu6(cin, last, 1))
        self._stages.append(SEQUENCE_STAGES[-1])
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(last, num_classes)
        init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) → (N, D): stem, 17 bottlenecks, 1×1 conv to 1280, global average pooling."""
        return global_pool(self.body(x))

    def layer_groups(self) -> List[Tuple[str, nn.Module]]:
        """``stem`` (body.0), ``block1`` … ``block17`` (body.1..17), ``conv_last`` (body.18, the
        1×1 conv to 1280), ``head`` (classifier): 20 groups."""
        n = len(self.body)
        groups: List[Tuple[str, nn.Module]] = [("stem", self.body[0])]
        groups += [(f"block{i}", self.body[i]) for i in range(1, n - 1)]
        groups += [("conv_last", self.body[n - 1]), ("head", self.classifier)]
        return groups

    def group_stages(self) -> List[int]:
        """stem 0; the bottlenecks by the published resolution levels — block1: 1, block2-3: 2,
        block4-6: 3, block7-13: 4, block14-17 and conv_last: 5; head 6. The same for both stems
        (the CIFAR stem only removes two strides), so PF-k freezes the same layers for either."""
        return self._stages + [max(self._stages) + 1]


@register_model("mobilenet_v2", stems=MobileNetV2.stems, min_size={"cifar": 8, "imagenet": 32},
                description="MobileNet-V2 (torchvision names, body = features); CIFAR stem: stride 1, "
                            "second sequence stride 1")
def mobilenet_v2(num_classes: int, width: float = 1.0, stem: str = "cifar") -> MobileNetV2:
    return MobileNetV2(num_classes, width, stem)
