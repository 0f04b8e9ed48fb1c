"""Vision Transformer ``vit_small`` — ViT-S/16 (Dosovitskiy et al., ICLR 2021, with the DeiT-S
dimensions of Touvron et al., ICML 2021) — and the parts every patch transformer here shares.

The network (pre-norm, class-token pooling), for an image cut into T = (H/P)² patches of P×P px::

    z₀ = [x_cls; E·x¹; …; E·xᵀ] + E_pos               (N, 1 + T, D)   E: P×P conv, stride P
    z′ℓ = zℓ₋₁ + MSA(LN(zℓ₋₁))
    zℓ  = z′ℓ + MLP(LN(z′ℓ))                          ℓ = 1..12
    features(x) = LN(z₁₂[:, 0])                       (N, D)  the final-norm class token
    logits = head(features(x))                        (N, K)

MSA: 6 heads, softmax(q·kᵀ/√d_h)·v per head (``F.scaled_dot_product_attention``), d_h = D/6;
MLP: D → 4D → D with the exact (erf) GELU; every LayerNorm has ε = 1e-6; every linear layer has
a bias. D = 384 at width 1 (DeiT-S; ViT-B would be 768 / 12 heads).

Patch size — a fixed rule of the image size (not a setting), so that small images still give
a useful token grid:

    image side     patch    grid at the usual size
    < 64 px        4 px     32 px → 8×8 = 64 tokens (CIFAR)
    64 … 95 px     8 px     64 px → 8×8 (Tiny-ImageNet)
    ≥ 96 px        16 px    224 px → 14×14 = 196 tokens: the published ViT-S/16

The side must be a multiple of its patch size (a :class:`ConfigError` names the nearest sides
that work). There is no CIFAR/ImageNet stem: the stem is always ``patch`` (``model.stem=auto``
picks it; ``cifar``/``imagenet`` are refused). The position embedding is sized for the image side
the model is built for, and ``forward`` refuses other sides.

Width: the head count stays fixed (6) and ``width`` scales the per-head width, so the embedding
stays divisible by the heads: D = 6·k, k = max(1, round(64·width)) (width 1 → 384, 0.25 → 96,
0.125 → 48); the MLP is 4·D wide. Depth never changes.

Parameter count at width 1, 224 px, 1000 classes: 22,050,664 — timm's ``vit_small_patch16_224``
(patch embedding 295,296 + class token 384 + position embedding 197·384 = 75,648 + 12 blocks of
1,774,464 + final norm 768 + head 385,000; timm is not a dependency: the count is checked in
``tests/test_models_transformers.py`` against this sum over timm's layer shapes).

Names are timm's (``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.{i}.norm1``,
``.attn.qkv``, ``.attn.proj``, ``.norm2``, ``.mlp.fc1``, ``.mlp.fc2``, ``norm``, ``head``; the
fused ``qkv`` rows are [q; k; v], each head-major, as timm's), so timm and DeiT checkpoints load
by name (:func:`ueperf.models.load_pretrained`). A checkpoint made for another patch grid (e.g.
224 px, 14×14, into a 96 px model, 6×6) has its position embedding resampled as timm does —
bicubic interpolation of the patch grid (antialiased when shrinking), the class-token position
kept — and the report's notes say so; a checkpoint with another patch size is refused, naming
``patch_embed.proj.weight`` and both shapes. DeiT's distilled models (``dist_token``,
``head_dist``: a second token and head trained against a teacher) load as the plain ViT they
contain: the distillation token, its position (the second of ``pos_embed``) and its head are
dropped, the class token and ``head`` kept, and the notes say so. (DeiT averages both heads at
test time; a backbone for fine-tuning or linear probing is the class token's.)

Initialisation (DeiT's): linear weights, the position embedding and the class token from a
normal with σ = 0.02 truncated at ±2σ (so their std is 0.88σ; timm's ``trunc_normal_`` cuts at ±2
absolute, i.e. hardly at all, and timm's ViT starts the class token at σ 1e-6), biases 0,
LayerNorm weight 1 / bias 0; the patch projection keeps PyTorch's default conv init, as in
timm/DeiT (whose init only visits Linear and LayerNorm). The CNNs' Kaiming init is not used.

Layer groups (spec §4.3), shallow → deep, 14 at depth 12: ``embed`` (patch embedding + position
embedding + class token), ``blocks.0`` … ``blocks.11``, ``head`` (final norm + head). Stages are
0, 1..12, 13, so paradigm PF-k freezes the embedding and the first k blocks, LP trains the final
norm and the head (as WRN's last group holds its final BN), and ST damps block by block.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Dict, Iterable, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, ModelError
from .base import UEModel, register_model

# ───────────────────────────────────────────── shared rules ──
STEM = "patch"                                # the only stem of a patch transformer
PATCH_RULE = ((96, 16), (64, 8), (0, 4))      # (smallest image side, patch size), first match wins
LN_EPS = 1e-6                                 # timm / DeiT / CaiT LayerNorm ε
INIT_STD = 0.02                               # trunc-normal σ of linear weights and token params


def patch_size_for(image_size: int) -> int:
    """The patch size (px) for square images of side ``image_size`` (see :data:`PATCH_RULE`)."""
    return next(p for side, p in PATCH_RULE if image_size >= side)


def _fits(side: int) -> bool:
    return side % patch_size_for(side) == 0


def check_image_size(arch: str, image_size: int) -> Tuple[int, int]:
    """(patch size, grid side) for ``image_size``; :class:`ConfigError` if the side is not a
    multiple of its patch size, naming the nearest sides that are."""
    p = patch_size_for(image_size)
    if image_size % p:
        below = next((s for s in range(image_size - 1, 3, -1) if _fits(s)), None)
        above = next(s for s in range(image_size + 1, image_size + 17) if _fits(s))
        near = " or ".join(f"data.image_size={s}" for s in (below, above) if s)
        raise ConfigError(f"{arch} cuts images into {p}x{p} px patches at image_size={image_size} "
                          f"(patch 4 px below 64 px, 8 px from 64 px, 16 px from 96 px), and "
                          f"{image_size} is not a multiple of {p}. Resize the data to a side that is "
                          f"({near}), or choose a CNN.")
    return p, image_size // p


def scale_embed(heads: int, head_dim: int, width: float) -> int:
    """D = heads · max(1, round(head_dim · width)): width scales the per-head width, the head
    count stays, so D stays divisible by it (width 1 → heads · head_dim)."""
    return heads * max(1, int(round(head_dim * width)))


def trunc_normal(t: torch.Tensor, std: float = INIT_STD) -> torch.Tensor:
    """N(0, σ²) truncated at ±2σ, in place."""
    return nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std)


def _fmt(shape: Iterable[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


# ───────────────────────────────────────────── modules ──
class PatchEmbed(nn.Module):
    """(N, 3, H, W) → (N, T, D): a P×P conv with stride P (= one linear map per patch), flattened
    row-major over the (H/P)×(W/P) grid."""

    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    """(…, D) → (…, D): fc1 (D → hidden), exact GELU, fc2 (hidden → D)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention, (N, T, D) → (N, T, D): softmax(q·kᵀ/√d_h)·v for each of
    ``heads`` heads, concatenated, then ``proj``. ``qkv`` is one fused D → 3D map whose output
    splits as (3, heads, d_h), timm's layout."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)          # (N, heads, T, d_h), scale 1/√d_h
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + MSA(LN(x)), then + MLP(LN(·)). (N, T, D) → (N, T, D)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GroupView(nn.Module):
    """A layer group that is not one submodule: an unregistered module over some submodules and
    loose parameters of the model (the same objects, so freezing the view freezes them). Not a
    ``Sequential``: no single module carries the group's output (``group_output_module`` says so)."""

    def __init__(self, modules: Dict[str, nn.Module], params: Dict[str, nn.Parameter]) -> None:
        super().__init__()
        for name, m in modules.items():
            self.add_module(name, m)
        for name, p in params.items():
            self.register_parameter(name, p)


# ───────────────────────────────────────────── the shared model ──
class PatchTransformer(UEModel):
    """What ViT and CaiT share: the patch embedding, the class token, the position embedding (over
    the patch grid plus ``num_prefix_tokens`` leading positions), the final norm and the head,
    their initialisation, the layer groups and the position-embedding resampling of checkpoints.

    Subclasses build ``block_lists()`` (the transformer blocks, shallow → deep) and ``self.norm``,
    then call :meth:`_finish`.
    """

    head_name = "head"
    stem_conv_key = "patch_embed.proj.weight"
    stems = (STEM,)
    num_prefix_tokens = 1       # position-embedding entries before the patch grid (ViT: the class token)

    def __init__(self, num_classes: int, width: float, stem: str, image_size: int, dim: int,
                 arch: str) -> None:
        super().__init__(num_classes, width, stem)
        self.arch = arch  # build_model sets it too; the size check below names it
        self.patch_size, self.grid = check_image_size(arch, image_size)
        self.image_size, self.embed_dim = image_size, dim
        self.patch_embed = PatchEmbed(self.patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + self.grid ** 2, dim))

    def _finish(self, num_classes: int) -> None:
        self.head = nn.Linear(self.embed_dim, num_classes)  # registered as the submodule "head"
        self._init_weights()

    def no_weight_decay(self) -> Tuple[str, ...]:
        """Parameter names kept out of weight decay under ``optim.wd_exclude=timm`` besides the
        biases and norms (timm's ``no_weight_decay``)."""
        return ("pos_embed", "cls_token")

    @property
    def head(self) -> nn.Linear:
        """The final linear layer, (N, D) → (N, K). The submodule is named ``head`` like timm's,
        which is also the name of ``UEModel.head``: read it from the registered modules."""
        return self._modules["head"]

    def _init_weights(self) -> None:
        """Trunc-normal(σ 0.02, ±2σ) linear weights and token params, zero biases, LayerNorm 1/0;
        LayerScale gammas keep their constructor value; the patch conv keeps PyTorch's default."""
        if any(p.is_meta for p in self.parameters()):  # meta models only count parameters
            return
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        trunc_normal(self.pos_embed)
        trunc_normal(self.cls_token)

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) → (N, T, D) patch embeddings (no position embedding yet)."""
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ModelError(f"{self.arch} was built for {self.image_size}x{self.image_size} px images "
                             f"({self.patch_size} px patches, a {self.grid}x{self.grid} position grid) but "
                             f"got {tuple(x.shape[-2:])}; build it with the data's image size.")
        return self.patch_embed(x)

    # ── layer groups ──
    def block_lists(self) -> List[Tuple[str, nn.Module]]:  # pragma: no cover - abstract
        """(prefix, ModuleList/Sequential of blocks) in forward order."""
        raise NotImplementedError

    def layer_groups(self) -> List[Tuple[str, nn.Module]]:
        """``embed`` (patch embedding + position embedding + class token), one group per block
        (named by its state_dict prefix), ``head`` (final norm + head)."""
        groups: List[Tuple[str, nn.Module]] = [("embed", GroupView(
            {"patch_embed": self.patch_embed}, {"cls_token": self.cls_token, "pos_embed": self.pos_embed}))]
        for prefix, blocks in self.block_lists():
            groups += [(f"{prefix}.{i}", blk) for i, blk in enumerate(blocks)]
        groups.append(("head", nn.Sequential(OrderedDict(norm=self.norm, head=self.head))))
        return groups

    def group_stages(self) -> List[int]:
        """0 = embedding, i = block i (1-based, every block is its own stage), last + 1 = head."""
        return list(range(len(self.layer_groups())))

    # ── checkpoints ──
    def adapt_checkpoint(self, state: Dict[str, torch.Tensor], notes: List[str]) -> Dict[str, torch.Tensor]:
        """Refuse another patch size; resample a position embedding made for another patch grid.

        The grid part of ``pos_embed`` (1, prefix + g², D) is reshaped to (1, D, g, g), resized
        to this model's grid by bicubic interpolation (``align_corners=False``, antialiased when
        shrinking — timm's ``resample_abs_pos_embed``) and flattened back; the ``prefix``
        leading positions (ViT's class token) are kept as they are. Anything else that differs
        (embedding width, a non-square grid, other prefix tokens) is left to the key/shape check.
        """
        key, mine = self.stem_conv_key, self.patch_embed.proj.weight
        w = state.get(key)
        if w is not None and w.dim() == 4 and tuple(w.shape[-2:]) != tuple(mine.shape[-2:]):
            raise ModelError(
                f"{key} {_fmt(w.shape)} vs model {_fmt(mine.shape)}: the checkpoint cuts images into "
                f"{w.shape[-2]}x{w.shape[-1]} px patches, this {self.arch} (built for {self.image_size} px "
                f"images) into {self.patch_size}x{self.patch_size} px ones (patch 4 px below 64 px, 8 px "
                f"from 64 px, 16 px from 96 px). Train at an image size with {w.shape[-1]} px patches "
                f"(data.image_size) or use a checkpoint made for this patch size; patch kernels are "
                f"not resampled.")
        if "dist_token" in state and "dist_token" not in dict(self.named_parameters()):
            state = self._drop_distillation(state, notes)
        pe, want = state.get("pos_embed"), self.pos_embed.shape
        if pe is None or pe.shape == want or pe.dim() != 3 or pe.shape[0] != 1 or pe.shape[2] != want[2]:
            return state
        k = self.num_prefix_tokens
        g = math.isqrt(max(0, pe.shape[1] - k))
        if g == 0 or k + g * g != pe.shape[1]:
            return state
        d = pe.shape[2]
        grid = pe[:, k:].float().reshape(1, g, g, d).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(self.grid, self.grid), mode="bicubic", align_corners=False,
                             antialias=True)
        new = torch.cat([pe[:, :k].float(), grid.permute(0, 2, 3, 1).reshape(1, self.grid ** 2, d)], 1)
        notes.append(f"resized pos_embed {_fmt(pe.shape)} → {_fmt(new.shape)}: the checkpoint's "
                     f"{g}x{g} patch grid resampled to this model's {self.grid}x{self.grid} by bicubic "
                     f"interpolation (timm's resample_abs_pos_embed)")
        return {**state, "pos_embed": new.to(pe.dtype)}

    def _drop_distillation(self, state: Dict[str, torch.Tensor], notes: List[str]) -> Dict[str, torch.Tensor]:
        """A DeiT distilled checkpoint as the plain ViT in it: pos_embed's positions are [class,
        distillation, grid...]; the distillation token, its position and ``head_dist`` go."""
        out = {k: v for k, v in state.items() if k != "dist_token" and not k.startswith("head_dist.")}
        pe, k = state.get("pos_embed"), self.num_prefix_tokens
        dropped = ["dist_token"] + sorted(k2 for k2 in state if k2.startswith("head_dist."))
        if pe is not None and pe.dim() == 3 and pe.shape[1] > k + 1 and \
                math.isqrt(pe.shape[1] - k - 1) ** 2 == pe.shape[1] - k - 1:
            out["pos_embed"] = torch.cat([pe[:, :k], pe[:, k + 1:]], dim=1)
            dropped.append(f"pos_embed position {k} (the distillation token's)")
        notes.append(f"DeiT distilled checkpoint: dropped {', '.join(dropped)}; the class token and its head "
                     f"are the model's (DeiT averages both heads at test time)")
        return out

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", image_size={self.image_size}, patch={self.patch_size}, "
                f"grid={self.grid}x{self.grid}, dim={self.embed_dim}")


# ───────────────────────────────────────────── ViT ──
class VisionTransformer(PatchTransformer):
    """ViT with a class token; ``features`` → (N, D), the final-norm class token."""

    def __init__(self, num_classes: int, width: float = 1.0, stem: str = STEM, image_size: int = 32,
                 depth: int = 12, heads: int = 6, head_dim: int = 64, mlp_ratio: float = 4.0,
                 arch: str = "vit_small") -> None:
        dim = scale_embed(heads, head_dim, width)
        super().__init__(num_classes, width, stem, image_size, dim, arch)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self._finish(num_classes)

    def block_lists(self) -> List[Tuple[str, nn.Module]]:
        return [("blocks", self.blocks)]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) → (N, D): LN of the class token after the last block."""
        t = self.patch_tokens(x)
        t = torch.cat((self.cls_token.expand(t.shape[0], -1, -1), t), dim=1) + self.pos_embed
        t = self.blocks(t)
        return self.norm(t[:, 0])  # LayerNorm is per token: norm the class token only


@register_model("vit_small", stems=(STEM,), min_size={STEM: 4}, sized=True,
                description="ViT-S (DeiT-S dims: D 384, 12 blocks, 6 heads; timm names); patch 4/8/16 "
                            "px for <64/<96/>=96 px images")
def vit_small(num_classes: int, width: float = 1.0, stem: str = STEM, image_size: int = 32) -> VisionTransformer:
    return VisionTransformer(num_classes, width, stem, image_size)
