"""Load a local pretrained checkpoint into a registered model by key mapping (spec §5 priors).

Accepted files: a torchvision-format ``state_dict`` (``torch.save(model.state_dict(), path)``),
timm ResNet checkpoints (same names), and the usual wrappers around one: a dict holding it under
``state_dict`` / ``model_state_dict`` / ``model`` / ``net`` (timm, Lightning-style trainers,
kuangliu/pytorch-cifar), keys prefixed by ``module.`` (DDP / DataParallel), ``_orig_mod.``
(``torch.compile``) or ``model.``. Per-architecture aliases rename other common layouts
(CIFAR zoos' ``linear``/``shortcut`` for ResNets, torchvision's ``features.*`` for VGG and
DenseNet; see each model's ``checkpoint_aliases``). timm / DeiT ViT and CaiT checkpoints load by
name into ``vit_small`` / ``cait_small``; a model's ``adapt_checkpoint`` hook then adapts what
names cannot (a ViT resamples a position embedding made for another patch grid, and says so).

Files are read with ``torch.load(..., weights_only=True)``: no code stored in a checkpoint is
ever executed. Nothing is downloaded.

Policy: the body must match exactly — every checkpoint key must exist in the model with the same
shape, and every model parameter/buffer must be in the checkpoint (except BatchNorm's
``num_batches_tracked``, which old torchvision files lack) — because a silently partial load
makes a "pretrained" run a random-init run. The head is the exception: when its shapes differ
(another class count) it is skipped and reported, leaving the model's fresh head.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Dict, List, Tuple

import torch
from torch import nn

from ..errors import ModelError, UeperfError
from ..files import torch_load_safe

# Wrapper keys under which training scripts store the weights, most specific first.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")
# Prefixes that wrappers add to every key: DDP/DataParallel, torch.compile, Lightning-style.
_PREFIXES = ("module.", "_orig_mod.", "model.")
_SHOW = 5  # how many offending keys an error message names


def _fmt(shape: torch.Size) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _target(model: nn.Module) -> nn.Module:
    """The bare model under DDP (``.module``) / ``torch.compile`` (``._orig_mod``) wrappers."""
    while not hasattr(type(model), "layer_groups"):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
    return model


def read_state_dict(path: str | os.PathLike) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Read ``path`` safely and return (flat name → tensor dict, notes on unwrapping).

    Raises :class:`ModelError` for a missing file, an unreadable file, a file holding Python
    objects (refused by ``weights_only``) and anything that is not a mapping of names to tensors.
    """
    p = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(p):
        raise ModelError(f"pretrained checkpoint {p!r} does not exist or is not a file. Give the "
                         f"path of a local .pth/.pt state_dict (model.pretrained); nothing is "
                         f"downloaded.")
    try:
        obj = torch_load_safe(p, "pretrained checkpoint",
                              "Point model.pretrained at a state dict saved with torch.save (a local "
                              ".pth/.pt; safetensors/ONNX files are not read). If you trust the file, re-save "
                              "just its tensors once: torch.save(torch.load(path, weights_only=False)"
                              "['state_dict'], 'weights.pth').")
    except UeperfError as e:
        raise ModelError(str(e)) from None

    notes: List[str] = []
    for _ in range(3):  # wrappers nest at most a couple of levels ({"model": {"state_dict": ...}})
        if not isinstance(obj, Mapping) or all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        key = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            break
        notes.append(f"took the weights from the checkpoint's {key!r} entry")
        obj = obj[key]

    if isinstance(obj, torch.Tensor):
        raise ModelError(f"{p} holds a single tensor of shape {_fmt(obj.shape)}, not a state dict "
                         f"(a mapping of parameter names to tensors) — is it a saved perturbation "
                         f"or data array rather than model weights?")
    if not isinstance(obj, Mapping):
        raise ModelError(f"{p} holds a {type(obj).__name__}, not a state dict (a mapping of "
                         f"parameter names to tensors). Save weights with "
                         f"torch.save(model.state_dict(), path).")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad or not obj:
        shown = ", ".join(f"{k!r}: {type(obj[k]).__name__}" for k in bad[:_SHOW])
        raise ModelError(f"{p} is not a state dict: " + (
            f"entries that are not name → tensor pairs: {shown}" if bad else "it is empty") +
            f". Top-level keys: {', '.join(map(repr, list(obj)[:8]))}. Expected the weights "
            f"directly or under one of {', '.join(_WRAPPER_KEYS)}.")
    return dict(obj), notes


def _map_keys(state: Dict[str, torch.Tensor], own: Mapping, aliases, notes: List[str]
              ) -> Dict[str, torch.Tensor]:
    """Strip wrapper prefixes and apply the model's aliases so names match ``own``'s."""
    for _ in range(len(_PREFIXES) + 1):
        prefix = next((px for px in _PREFIXES
                       if all(k.startswith(px) for k in state)
                       and not any(k.startswith(px) for k in own)), None)
        if prefix is None:
            break
        state = {k[len(prefix):]: v for k, v in state.items()}
        notes.append(f"stripped the key prefix {prefix!r}")

    out: Dict[str, torch.Tensor] = {}
    renamed = 0
    for key, value in state.items():
        new = key
        if new not in own:
            for pattern, repl in aliases:
                new = re.sub(pattern, repl, new)
        if new in out:
            raise ModelError(f"checkpoint keys collide after renaming: two keys map to {new!r} "
                             f"(one of them is {key!r}); the file mixes two naming schemes.")
        renamed += new != key
        out[new] = value
    if renamed:
        notes.append(f"renamed {renamed} keys to this model's names (e.g. torchvision 'features.' "
                     f"→ 'body.', CIFAR-zoo 'linear.' → 'fc.')")
    return out


def _stem_hint(key: str, ck: torch.Size, mine: torch.Size) -> str:
    if len(ck) != 4 or len(mine) != 4 or ck[-1] == mine[-1]:
        return ""
    if ck[-1] == 7:
        return (f" This checkpoint has an ImageNet stem (7x7 {key}); build the model with "
                f"stem=imagenet (model.stem=imagenet).")
    if ck[-1] == 3:
        return (f" This checkpoint has a CIFAR stem (3x3 {key}); build the model with stem=cifar "
                f"(model.stem=cifar).")
    return f" The stem kernels differ ({ck[-1]}x{ck[-1]} vs {mine[-1]}x{mine[-1]})."


def load_pretrained(model: nn.Module, path: str | os.PathLike, *,
                    skip_head_on_mismatch: bool = True) -> dict:
    """Copy the weights in ``path`` into ``model`` (in place) and return a report.

    ``model`` is a :class:`~ueperf.models.base.UEModel` (possibly inside DDP or torch.compile).
    The head (``model.head``) is loaded only if the checkpoint's head keys and shapes equal the
    model's; otherwise it is skipped (``skip_head_on_mismatch=True``) or a :class:`ModelError`
    is raised. Every other mismatch — unknown keys, missing keys, different shapes, non-finite
    values — is a :class:`ModelError` naming the first few keys (and both shapes) with a hint.

    Returns ``{"path", "loaded": [model keys], "skipped": [checkpoint keys], "head_loaded": bool,
    "notes": [str]}``.
    """
    target = _target(model)
    state, notes = read_state_dict(path)
    own = target.state_dict()
    state = _map_keys(state, own, getattr(target, "checkpoint_aliases", ()), notes)
    adapt = getattr(target, "adapt_checkpoint", None)  # e.g. a ViT's position-embedding resampling
    if adapt is not None:
        try:
            state = adapt(state, notes)
        except ModelError as e:
            raise ModelError(f"{os.fspath(path)}: {e}") from None
    arch = getattr(target, "arch", type(target).__name__)
    desc = (f"{arch} (stem={getattr(target, 'stem', '?')}, width={getattr(target, 'width', '?')}, "
            f"num_classes={getattr(target, 'num_classes', '?')})")
    hp = getattr(target, "head_name", "fc") + "."

    # ── head: load if it fits, else skip (other class count / architecture's head) ──
    ck_head = {k: v for k, v in state.items() if k.startswith(hp)}
    my_head = {k: v for k, v in own.items() if k.startswith(hp)}
    head_fits = bool(ck_head) and ck_head.keys() == my_head.keys() and all(
        ck_head[k].shape == my_head[k].shape for k in ck_head)
    skipped: List[str] = []
    if not ck_head:
        notes.append("the checkpoint has no head; the model keeps its freshly initialised head")
    elif not head_fits:
        diff = "; ".join(f"{k} {_fmt(v.shape)} vs model "
                         f"{_fmt(my_head[k].shape) if k in my_head else '(no such key)'}"
                         for k, v in list(ck_head.items())[:_SHOW])
        msg = f"checkpoint head does not fit the model's: {diff}"
        if not skip_head_on_mismatch:
            raise ModelError(f"{os.fspath(path)}: {msg}. Build the model with the checkpoint's "
                             f"class count, or pass skip_head_on_mismatch=True to keep a fresh head.")
        skipped = sorted(ck_head)
        notes.append(msg + " (other class count); head skipped, kept at random init")

    # ── body: must match exactly ──
    body = {k: v for k, v in state.items() if not k.startswith(hp)}
    unexpected = [k for k in body if k not in own]
    missing = [k for k in own if not k.startswith(hp) and k not in body
               and not k.endswith("num_batches_tracked")]
    shapes = [(k, body[k].shape, own[k].shape) for k in body
              if k in own and body[k].shape != own[k].shape]
    if unexpected or missing or shapes:
        parts, hints = [], []
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (checkpoint vs model): " + "; ".join(
                f"{k} {_fmt(a)} vs {_fmt(b)}" for k, a, b in shapes[:_SHOW]))
            stem = next(((k, a, b) for k, a, b in shapes
                         if k == getattr(target, "stem_conv_key", "conv1.weight")), None)
            if stem is not None:
                hints.append(_stem_hint(*stem).strip())
            if any(len(a) == len(b) and a[-2:] == b[-2:] for _, a, b in shapes):
                hints.append("Channel counts differ: build the model with the width (model.width) "
                             "and architecture the checkpoint was trained with.")
        if unexpected:
            parts.append(f"{len(unexpected)} checkpoint keys that the model does not have: "
                         + ", ".join(unexpected[:_SHOW]))
        if missing:
            parts.append(f"{len(missing)} model keys missing from the checkpoint: "
                         + ", ".join(missing[:_SHOW]))
        if unexpected or missing:
            hints.append(f"Is this a checkpoint of the same architecture? The model is {desc}.")
        raise ModelError(f"{os.fspath(path)} does not fit {desc}: " + " | ".join(parts) + ". "
                         + " ".join(h for h in hints if h))

    nonfinite = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if nonfinite:
        raise ModelError(f"{os.fspath(path)} has NaN/inf values in {', '.join(nonfinite[:_SHOW])}; "
                         f"the checkpoint comes from a diverged run — use an earlier one.")

    to_load = dict(body)
    if head_fits:
        to_load.update(ck_head)
    result = target.load_state_dict(to_load, strict=False)
    # Everything not in to_load is either the skipped head or num_batches_tracked (checked above).
    assert not result.unexpected_keys, result.unexpected_keys
    return {"path": os.fspath(path), "loaded": sorted(to_load), "skipped": skipped,
            "head_loaded": head_fits, "notes": notes}
