"""Classifiers registered by name, each exposing its ordered layer groups (spec §4.3).

``build_model(name, num_classes, image_size, width=1.0, stem="auto")`` returns a
:class:`~ueperf.models.base.UEModel`: ``forward(x) -> logits``, ``features(x) -> (N, D)``,
``head`` (the final ``nn.Linear``), ``feature_dim``, ``layer_groups()`` shallow → deep.
``load_pretrained(model, path)`` loads a local torchvision-format checkpoint by key mapping.

Registered architectures (CIFAR versions at width 1 are the published ones):

============  =================  ================================================
name          stems              groups (spec §4.3)
============  =================  ================================================
resnet18      cifar, imagenet    stem, 8 residual blocks, head → 10
resnet50      cifar, imagenet    stem, 16 bottleneck blocks, head → 18
vgg16         cifar              13 conv+BN layers, head → 14
densenet121   cifar, imagenet    stem, 4 dense blocks, 3 transitions, head → 9
wrn28_10      cifar              stem, 12 blocks, final BN + fc → 14
wrn34_10      cifar              stem, 15 blocks, final BN + fc → 17
============  =================  ================================================

Importing this package imports torch but builds nothing; the architecture modules are imported
on the first registry lookup.
"""
from __future__ import annotations

from ..errors import ConfigError
from ..registry import Registry
from .base import STEMS, ModelSpec, UEModel, check_positive_int, check_width
from .pretrained import load_pretrained


def _load_builtin_models() -> None:
    """Register the built-in architectures (imports their modules; called lazily by MODELS)."""
    from . import densenet, resnet, vgg, wrn

    # min_size = total down-sampling factor: the smallest side that still leaves a 1×1 map.
    specs = [
        ModelSpec("resnet18", resnet.resnet18, resnet.ResNet.stems, {"cifar": 8, "imagenet": 32},
                  "ResNet-18 (torchvision names); CIFAR stem: 3x3 s1, no max-pool"),
        ModelSpec("resnet50", resnet.resnet50, resnet.ResNet.stems, {"cifar": 8, "imagenet": 32},
                  "ResNet-50 v1.5 (torchvision names)"),
        ModelSpec("vgg16", vgg.vgg16, vgg.VGG.stems, {"cifar": 32},
                  "VGG-16 with BN, one Linear(512, K) head (kuangliu layout)"),
        ModelSpec("densenet121", densenet.densenet121, densenet.DenseNet.stems,
                  {"cifar": 8, "imagenet": 32},
                  "DenseNet-121, growth 32 (torchvision names, body = features)"),
        ModelSpec("wrn28_10", wrn.wrn28_10, wrn.WideResNet.stems, {"cifar": 4},
                  "Wide ResNet 28-10, pre-activation, dropout 0"),
        ModelSpec("wrn34_10", wrn.wrn34_10, wrn.WideResNet.stems, {"cifar": 4},
                  "Wide ResNet 34-10, pre-activation, dropout 0"),
    ]
    for spec in specs:
        MODELS.register(spec.name)(spec)


MODELS: Registry[ModelSpec] = Registry("model", loader=_load_builtin_models)


def resolve_stem(spec: ModelSpec, image_size: int, stem: str) -> str:
    """``auto`` → ``cifar`` for images ≤ 32 px, else ``imagenet`` where the model has one."""
    if stem not in STEMS + ("auto",):
        raise ConfigError(f"model stem must be one of auto, cifar, imagenet, got {stem!r}. "
                          f"Use auto (cifar for <= 32 px, imagenet above) unless you need to force one.")
    if stem == "auto":
        return "imagenet" if image_size > 32 and "imagenet" in spec.stems else spec.stems[0]
    if stem not in spec.stems:
        raise ConfigError(f"model {spec.name!r} has no {stem!r} stem (it has: "
                          f"{', '.join(spec.stems)}); it runs at any image size >= "
                          f"{spec.min_size[spec.stems[0]]} px with its {spec.stems[0]} layout. "
                          f"Set model.stem=auto or model.stem={spec.stems[0]}.")
    return stem


def build_model(name: str, num_classes: int, image_size: int, width: float = 1.0,
                stem: str = "auto") -> UEModel:
    """Build the registered model ``name`` for ``num_classes`` classes and ``image_size`` px images.

    ``width`` multiplies every channel count (1.0 = the published architecture; 0.25 for fast
    CPU tests). ``stem`` is ``auto`` (CIFAR stem — 3×3 conv stride 1, no max-pool — for
    image_size ≤ 32, ImageNet stem — 7×7 stride 2 + max-pool — above, where the model has one),
    ``cifar`` or ``imagenet``. Raises :class:`ConfigError` for an unknown name (listing the known
    ones), a bad width, stem, class count or an image too small for the network.

    The model is built on the current default device (use ``with torch.device("meta"):`` to
    count parameters without allocating).
    """
    spec = MODELS.get(name)
    check_positive_int(num_classes, "num_classes", "It comes from the dataset's class count.")
    check_positive_int(image_size, "image_size", "Pass the side of the (square) training images in px.")
    width = check_width(width)
    stem = resolve_stem(spec, image_size, stem)
    if image_size < spec.min_size[stem]:
        raise ConfigError(f"image_size={image_size} is too small for {name} with the {stem} stem: "
                          f"it down-samples by {spec.min_size[stem]}, so images need at least "
                          f"{spec.min_size[stem]} px per side. Resize the data (data.image_size) or "
                          f"choose another model/stem.")
    model = spec(num_classes, width, stem)
    model.arch = name
    return model


__all__ = ["MODELS", "ModelSpec", "UEModel", "build_model", "load_pretrained", "resolve_stem"]
