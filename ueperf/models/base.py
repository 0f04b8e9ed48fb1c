"""The model base class every registered architecture derives from, and shared helpers.

A :class:`UEModel` is a classifier ``f = h ∘ g`` (spec §1): ``features(x)`` is g, the penultimate
activation after global average pooling, shape (N, D); ``head`` is h, the final ``nn.Linear``
(D → K). ``layer_groups()`` splits the model into ordered parameter groups ℓ = 1..L, shallow → deep
(spec §4.3); per-group learning rates (ST), partial freezing (paradigms LP / PF-k, spec §5) and
per-layer activation statistics act on these groups.

In-place ReLUs: the architectures apply ``ReLU(inplace=True)`` only to a tensor that nothing else
reads afterwards (the output of a BatchNorm or of a residual sum), which autograd allows. A forward
hook on a BatchNorm module therefore sees a tensor that the next ReLU overwrites; hook the block
(or the group module) instead — block outputs are never modified in place.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..errors import ConfigError, ModelError
from ..registry import Registry

GroupRef = Union[int, str]

STEMS = ("cifar", "imagenet")


def scale_channels(channels: int, width: float) -> int:
    """``channels`` multiplied by the width multiplier, rounded, at least 1.

    ``width = 1.0`` returns ``channels`` unchanged, so width 1 is the published architecture.
    """
    return max(1, int(round(channels * width)))


def init_weights(model: nn.Module) -> None:
    """Standard initialisation (as torchvision's ResNet and the common CIFAR model zoos).

    Convolutions: Kaiming normal, ``mode="fan_out"``, ReLU gain (He et al. 2015), bias 0.
    BatchNorm: weight 1, bias 0. Linear layers keep PyTorch's default (uniform ±1/sqrt(fan_in)),
    as torchvision's ResNet does. Meta-device models (built under ``torch.device("meta")`` to
    count parameters) have no values to initialise and are skipped — the first meta
    ``normal_`` call would otherwise cost seconds of lazy op registration.
    """
    if any(p.is_meta for p in model.parameters()):
        return
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def global_pool(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) → (N, C): global average pooling, flattened.

    ``adaptive_avg_pool2d`` keeps channels-last inputs fast and works for any H, W ≥ 1;
    ``flatten`` (a reshape) is valid for both memory formats, unlike ``view``.
    """
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


class UEModel(nn.Module):
    """Base class of the registered classifiers.

    Subclasses set ``head_name`` (the attribute name of the final ``nn.Linear``, so checkpoint
    keys stay torchvision-compatible: ``fc`` for ResNets, ``classifier`` for VGG/DenseNet) and
    implement :meth:`features` and :meth:`layer_groups`.

    Attributes: ``arch`` (registered name, set by :func:`ueperf.models.build_model`), ``stem``
    ("cifar" | "imagenet"), ``width``, ``num_classes``.
    """

    head_name: str = "fc"
    #: (regex, replacement) pairs that rename keys of foreign checkpoints to this model's names
    #: (e.g. the CIFAR model zoos' ``linear.`` → ``fc.``); see :mod:`ueperf.models.pretrained`.
    checkpoint_aliases: Tuple[Tuple[str, str], ...] = ()
    #: the stem convolution's state_dict key, named in "wrong stem" checkpoint errors.
    stem_conv_key: str = "conv1.weight"

    #: the stem layouts this architecture has (the first is used for small images).
    stems: Tuple[str, ...] = STEMS

    def __init__(self, num_classes: int, width: float, stem: str) -> None:
        super().__init__()
        if stem not in self.stems:
            raise ConfigError(f"{type(self).__name__} has no {stem!r} stem; it has: "
                              f"{', '.join(self.stems)}")
        self.arch = type(self).__name__.lower()  # build_model sets the registered name
        self.num_classes, self.width, self.stem = num_classes, width, stem
        # Indices (into layer_groups()) of frozen groups; train() keeps their modules in eval.
        self._frozen_groups: set = set()
        self.dropout = 0.0  # dropout probability on the features before the head (spec §3.4 baseline)

    # ── the classifier ──────────────────────────────────────────────────────────────────────
    @property
    def head(self) -> nn.Linear:
        """The final linear layer h: (N, D) → (N, K) logits."""
        return self.get_submodule(self.head_name)

    @property
    def feature_dim(self) -> int:
        """D, the width of :meth:`features`' output (= ``head.in_features``)."""
        return self.head.in_features

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """(N, 3, H, W) float images → (N, D) penultimate activations after global pooling."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float images → (N, K) logits, ``head(features(x))``."""
        f = self.features(x)
        if self.dropout > 0:
            f = torch.nn.functional.dropout(f, self.dropout, self.training)
        return self.head(f)

    # ── layer groups ────────────────────────────────────────────────────────────────────────
    def layer_groups(self) -> List[Tuple[str, nn.Module]]:  # pragma: no cover - abstract
        """Ordered (name, module) groups, shallow → deep (spec §4.3).

        Every parameter and every buffer (BatchNorm statistics) of the model belongs to exactly
        one group; the first group holds the stem convolution, the last one the head. A group that
        spans several sibling modules is returned as a fresh ``nn.ModuleList``/``nn.Sequential``
        view over them (it is not registered on the model, so the state_dict is unchanged).
        """
        raise NotImplementedError

    def group_stages(self) -> List[int]:  # pragma: no cover - abstract
        """Resolution stage of each group, aligned with :meth:`layer_groups`.

        0 = stem (before the first stage), 1..S = body stages (one per feature-map resolution:
        ResNet ``layer1..layer4``), S + 1 = head. Paradigm PF-k (spec §5) freezes the groups with
        stage ≤ k.
        """
        raise NotImplementedError

    def group_names(self) -> List[str]:
        return [name for name, _ in self.layer_groups()]

    def group_output_module(self, group: GroupRef) -> nn.Module:
        """The registered module whose forward output is ``group``'s output — where a forward
        hook sees what the group hands to the next one.

        A group that is itself a submodule of the model (a residual block, a transition) is its
        own answer; a group returned as an unregistered ``nn.Sequential`` view over consecutive
        layers (VGG's conv + BN + ReLU [+ pool] slices, DenseNet's stem) resolves to its last
        layer — hooks on the view itself would never fire. Raises :class:`ModelError` for a
        group whose output is computed outside its modules (ResNet's stem: ReLU is functional).
        """
        groups = self.layer_groups()
        name, module = groups[self._group_index(group, groups)]
        registered = {id(m) for m in self.modules()}
        while id(module) not in registered and isinstance(module, nn.Sequential) and len(module):
            module = module[-1]
        if id(module) not in registered:
            arch = getattr(self, "arch", type(self).__name__)
            raise ModelError(f"{arch}: layer group {name!r} has no single module whose output is the group's "
                             f"output (it is a view over {type(module).__name__} parts)")
        return module

    def group_parameters(self, trainable_only: bool = False) -> List[Tuple[str, List[nn.Parameter]]]:
        """[(group name, [parameters])] shallow → deep, e.g. to build per-group optimiser groups.

        ``trainable_only`` drops parameters with ``requires_grad=False`` (frozen groups then come
        back with an empty list, so group indices stay aligned with :meth:`layer_groups`).
        """
        out = []
        for name, module in self.layer_groups():
            params = [p for p in module.parameters() if p.requires_grad or not trainable_only]
            out.append((name, params))
        return out

    def _group_index(self, ref: GroupRef, groups: Sequence[Tuple[str, nn.Module]]) -> int:
        names = [n for n, _ in groups]
        if isinstance(ref, bool) or not isinstance(ref, (int, str)):
            raise ConfigError(f"layer group must be an index or a name, got {ref!r}. "
                              f"Groups of {self.arch}: {', '.join(names)}")
        if isinstance(ref, str):
            if ref not in names:
                raise ConfigError(f"{self.arch} has no layer group {ref!r}. "
                                  f"Its groups, shallow → deep: {', '.join(names)}")
            return names.index(ref)
        if not -len(names) <= ref < len(names):
            raise ConfigError(f"layer group index {ref} is out of range: {self.arch} has "
                              f"{len(names)} groups (0..{len(names) - 1}): {', '.join(names)}")
        return ref % len(names)

    def set_group_trainable(self, group: GroupRef, trainable: bool, keep_requires_grad: bool = False) -> None:
        """Freeze (``trainable=False``) or unfreeze one group, by index (0-based) or name.

        Frozen means ``requires_grad=False`` for its parameters AND its modules in eval mode
        (BatchNorm uses and keeps its running statistics) even after ``model.train()``
        (spec §5: "BN of frozen part: eval mode").
        """
        groups = self.layer_groups()
        i = self._group_index(group, groups)
        module = groups[i][1]
        # keep_requires_grad: under DDP the set of parameters that get gradients is fixed when the
        # model is wrapped, so a group frozen mid-run keeps requires_grad and is held still by a
        # zero learning rate instead (the caller's job); its BN still switches to eval mode.
        if not keep_requires_grad:
            for p in module.parameters():
                p.requires_grad_(trainable)
        if trainable:
            self._frozen_groups.discard(i)
            module.train(self.training)
        else:
            self._frozen_groups.add(i)
            module.eval()

    def freeze_groups(self, groups: Iterable[GroupRef]) -> None:
        """Freeze each of ``groups`` (indices or names); see :meth:`set_group_trainable`."""
        for g in groups:
            self.set_group_trainable(g, False)

    def unfreeze_all(self) -> None:
        """Make every group trainable again (requires_grad and train/eval follow the model)."""
        for i in range(len(self.layer_groups())):
            self.set_group_trainable(i, True)

    def frozen_groups(self) -> List[int]:
        """Sorted indices of the frozen groups."""
        return sorted(self._frozen_groups)

    def train(self, mode: bool = True) -> "UEModel":
        """Like ``nn.Module.train`` but frozen groups stay in eval mode."""
        super().train(mode)
        if mode and self._frozen_groups:
            groups = self.layer_groups()
            for i in self._frozen_groups:
                groups[i][1].eval()
        return self

    # ── checkpoints ─────────────────────────────────────────────────────────────────────────
    def adapt_checkpoint(self, state: Dict[str, torch.Tensor], notes: List[str]) -> Dict[str, torch.Tensor]:
        """Hook of :func:`~ueperf.models.pretrained.load_pretrained`: adapt a foreign checkpoint's
        tensors (already renamed to this model's keys) before they are compared with the model's.

        The default changes nothing. Vision transformers resample a position embedding made for
        another patch grid (:meth:`ueperf.models.vit.VisionTransformer.adapt_checkpoint`). Append
        what was changed to ``notes`` (it is reported); raise :class:`ModelError` for a
        checkpoint that cannot fit, naming the key and both shapes.
        """
        return state

    def extra_repr(self) -> str:
        return f"arch={self.arch}, stem={self.stem}, width={self.width}, num_classes={self.num_classes}"


@dataclass(frozen=True, eq=False)  # eq=False: hashable by identity despite the dict field
class ModelSpec:
    """A registered architecture: how to build it and what it supports.

    ``build(num_classes, width, stem)`` returns the model; ``stems`` lists the stems it has
    (the first is the default for small images); ``min_size[stem]`` is the smallest image side
    the network accepts (its total down-sampling factor); ``description`` is for listings.
    ``sized``: the builder also takes ``image_size=`` (px per side), for architectures whose
    parameters depend on it (a vision transformer's patch size and position-embedding grid);
    CNNs are size-agnostic and never get it.
    """

    name: str
    build: Callable[..., UEModel]
    stems: Tuple[str, ...]
    min_size: dict
    description: str
    sized: bool = False

    def __call__(self, num_classes: int, width: float = 1.0, stem: Optional[str] = None,
                 image_size: Optional[int] = None) -> UEModel:
        stem = self.stems[0] if stem is None else stem
        if self.sized and image_size is not None:
            return self.build(num_classes, width, stem, image_size=image_size)
        return self.build(num_classes, width, stem)


# Every module of ueperf.models is imported on the first lookup: a new architecture is one new file
# whose builder carries @register_model (timm's way).
MODELS: Registry[ModelSpec] = Registry("model", package="ueperf.models")


def register_model(name: str, *, stems: Tuple[str, ...], min_size: dict, description: str,
                   sized: bool = False):
    """Decorator on a builder ``fn(num_classes, width, stem) -> UEModel``: registers it as ``name``.
    ``min_size[stem]`` = the total down-sampling factor (the smallest side leaving a 1×1 map).
    ``sized=True``: the builder is ``fn(num_classes, width, stem, image_size=...)`` (see
    :class:`ModelSpec`)."""
    def deco(fn: Callable[..., UEModel]) -> Callable[..., UEModel]:
        MODELS.register(name)(ModelSpec(name, fn, tuple(stems), dict(min_size), description, sized))
        return fn
    return deco


def check_positive_int(value: object, what: str, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}. {hint}")
    return value


def check_width(width: object) -> float:
    """Validate a width multiplier: a finite number in (0, 16]."""
    ok = (not isinstance(width, bool) and isinstance(width, (int, float))
          and math.isfinite(width) and 0 < width <= 16)
    if not ok:
        raise ConfigError(f"model width must be a number in (0, 16] that multiplies every channel "
                          f"count (1.0 = the published architecture, 0.25 = a quick CPU model), "
                          f"got {width!r}. Set model.width accordingly.")
    return float(width)
