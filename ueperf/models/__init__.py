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
mobilenet_v2  cifar, imagenet    stem, 17 bottlenecks, conv_last, head → 20
senet18       cifar, imagenet    stem, 8 SE residual blocks, head → 10
vit_small     patch              embed (patch + pos + cls), 12 blocks, norm + head → 14
cait_small    patch              embed, 24 SA blocks, 2 class-attention blocks, norm + head → 28
fastnet       cifar              whitening conv, 3 conv blocks, head (airbench94) → 5
============  =================  ================================================

Transformers have one stem, ``patch`` (``model.stem=auto`` picks it); their patch size follows
the image size (4 px below 64 px, 8 px below 96 px, 16 px from 96 px) and the side must be a
multiple of it (see :mod:`ueperf.models.vit`).

Importing this package imports torch but builds nothing; every module of the package is imported
on the first registry lookup, and an architecture registers itself in its own file
(``@register_model``): a new one is one new file plus its test.
"""
from __future__ import annotations

from ..errors import ConfigError
from .base import MODELS, STEMS, ModelSpec, UEModel, check_positive_int, check_width, register_model
from .pretrained import load_pretrained


def resolve_stem(spec: ModelSpec, image_size: int, stem: str) -> str:
    """``auto`` → ``cifar`` for images ≤ 32 px, else ``imagenet`` where the model has one."""
    if stem not in STEMS + ("auto",):
        raise ConfigError(f"model stem must be one of auto, cifar, imagenet, got {stem!r}. "
                          f"Use auto (cifar for <= 32 px, imagenet above) unless you need to force one.")
    if stem == "auto":
        return "imagenet" if image_size > 32 and "imagenet" in spec.stems else spec.stems[0]
    if stem not in spec.stems:
        settable = f" or model.stem={spec.stems[0]}" if spec.stems[0] in STEMS else ""
        raise ConfigError(f"model {spec.name!r} has no {stem!r} stem (it has: "
                          f"{', '.join(spec.stems)}); it runs at any image size >= "
                          f"{spec.min_size[spec.stems[0]]} px with its {spec.stems[0]} layout. "
                          f"Set model.stem=auto{settable}.")
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
    model = spec(num_classes, width, stem, image_size=image_size)  # only sized specs use it
    model.arch = name
    return model


__all__ = ["MODELS", "ModelSpec", "UEModel", "build_model", "load_pretrained", "register_model", "resolve_stem"]
