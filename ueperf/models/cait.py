"""CaiT ``cait_small`` — Class-Attention in Image Transformers (Touvron et al., "Going deeper with
image transformers", ICCV 2021, arXiv 2103.17239), CaiT-S24 dimensions, with timm's names.

Two stages. Self-attention over the patch tokens only (no class token yet), with LayerScale
(a learnt per-channel diagonal γ on every residual branch) and talking-heads attention::

    x₀ = [E·x¹; …; E·xᵀ] + E_pos                                (N, T, D)  E: P×P conv, stride P
    x′ℓ = xℓ₋₁ + γ₁ℓ ⊙ TH-MSA(LN(xℓ₋₁))
    xℓ  = x′ℓ + γ₂ℓ ⊙ MLP(LN(x′ℓ))                              ℓ = 1..24

    TH-MSA: A = q·kᵀ/√d_h per head (N, h, T, T); A ← L·A + b_L   mixed across heads (proj_l)
            A ← softmax(A);                     A ← W·A + b_W   mixed again (proj_w);  out = A·v

Then class attention: the class token is inserted here and only it is updated; it attends to
itself and to the (fixed) patch tokens::

    u = [c; x₂₄]                                                (N, 1 + T, D)
    c ← c + γ₁ ⊙ CA(LN(u)),   CA: q = W_q·LN(u)[0], k = W_k·LN(u), v = W_v·LN(u),
                                  out = proj(softmax(q·kᵀ/√d_h)·v)             (per head)
    c ← c + γ₂ ⊙ MLP(LN(c))                                     2 class-attention blocks
    features(x) = LN(c)  (N, D);   logits = head(features)

D = 384, 8 heads (d_h = 48), MLP 4·D, LayerNorm ε = 1e-6, biases on every linear layer (q/k/v
and the talking-heads maps included). LayerScale init ε = 1e-5, the paper's value for depth 24
(0.1 up to depth 18, 1e-6 beyond 24: Section 2 of the paper); every γ starts at it.

Patch size, stem, width and initialisation follow :mod:`ueperf.models.vit`: patch 4 px below
64 px (32 px → 8×8 = 64 tokens), 8 px below 96 px, 16 px from 96 px (224 px = the published
CaiT-S24/224); stem ``patch`` only; D = 8·max(1, round(48·width)) (0.25 → 96, 0.125 → 48), depth
fixed; linear weights and token parameters trunc-normal σ 0.02 (±2σ), biases 0, LayerNorm 1/0.
The position embedding has no class-token entry (1, T, D), as in CaiT.

Parameter count at width 1, 224 px, 1000 classes: 46,916,200 — timm's ``cait_s24_224``
(reported as 46.9 M in the paper): embedding 295,296 + 75,264 + class token 384, 24 SA blocks of
1,775,376, 2 CA blocks of 1,775,232, final norm 768, head 385,000. This is heavy for CPU tests;
they use width 0.125 (48 wide, 8 heads of 6).

Note: APBench's own ``nets/cait_small.py`` (from lucidrains/vit-pytorch) is a different, smaller
CIFAR model (D 512, 6 SA + 2 CA layers, 6 heads of 64, MLP 256, dropout and layer drop); this
file follows the paper's CaiT-S24 instead.

Names are timm's (``blocks.{i}.gamma_1/gamma_2``, ``blocks.{i}.attn.qkv/proj_l/proj_w/proj``,
``blocks_token_only.{j}.attn.q/k/v/proj``, ``blocks_token_only.{j}.gamma_1/gamma_2``, …), so timm /
DeiT-repository CaiT checkpoints load by name; position embeddings of another grid are resampled
as for ViT (:meth:`~ueperf.models.vit.PatchTransformer.adapt_checkpoint`).

Layer groups, 28: ``embed`` (patch embedding + position embedding + class token), ``blocks.0`` …
``blocks.23``, ``blocks_token_only.0``, ``blocks_token_only.1``, ``head`` (final norm + head);
stages 0, 1..26, 27 (PF-k freezes the embedding and the first k blocks). A class-attention
block's module maps the whole sequence [c; x] → [c′; x] (the patch tokens pass through), so a
hook on it sees everything the next group receives.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import register_model
from .vit import LN_EPS, STEM, Mlp, PatchTransformer, scale_embed


def layerscale_init(depth: int) -> float:
    """LayerScale's initial γ for a network of ``depth`` SA blocks (CaiT paper, Section 2)."""
    return 0.1 if depth <= 18 else 1e-5 if depth <= 24 else 1e-6


class TalkingHeadAttn(nn.Module):
    """Self-attention with talking heads (Shazeer et al. 2020), (N, T, D) → (N, T, D): the
    attention logits are mixed across heads by ``proj_l`` (h → h) before the softmax and the
    weights by ``proj_w`` after it."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj_l = nn.Linear(heads, heads)
        self.proj_w = nn.Linear(heads, heads)
        self.proj = nn.Linear(dim, dim)

    @staticmethod
    def _mix(a: torch.Tensor, lin: nn.Linear) -> torch.Tensor:
        """(N, h, T, T) → (N, h, T, T): ``lin`` applied over the head axis, out[n, g] = Σ_h W[g, h]·a[n, h]
        + b[g], as one batched (h × h)·(h × T²) product on the contiguous maps (2.5× faster on CPU
        than permuting the heads last for ``nn.Linear``, measured fwd + bwd at 64×8×65×65)."""
        n = a.shape[0]
        return torch.baddbmm(lin.bias[None, :, None].expand(n, -1, 1), lin.weight.expand(n, -1, -1),
                             a.flatten(2)).view_as(a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        a = self._mix((q * self.scale) @ k.transpose(-2, -1), self.proj_l)
        a = self._mix(a.softmax(dim=-1), self.proj_w)
        return self.proj((a @ v).transpose(1, 2).reshape(n, t, d))


class ClassAttn(nn.Module):
    """Class attention, (N, 1 + T, D) → (N, 1, D): only the class token (position 0) queries;
    keys and values come from every token."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        n, t, d = u.shape
        h, dh = self.heads, d // self.heads
        q = self.q(u[:, :1]).reshape(n, 1, h, dh).transpose(1, 2)
        k = self.k(u).reshape(n, t, h, dh).transpose(1, 2)
        v = self.v(u).reshape(n, t, h, dh).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)        # (N, h, 1, d_h), scale 1/√d_h
        return self.proj(out.transpose(1, 2).reshape(n, 1, d))


class LayerScaleBlock(nn.Module):
    """x + γ₁ ⊙ TH-MSA(LN(x)), then + γ₂ ⊙ MLP(LN(·)). (N, T, D) → (N, T, D)."""

    def __init__(self, dim: int, heads: int, init: float, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = TalkingHeadAttn(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.gamma_1 = nn.Parameter(torch.full((dim,), init))
        self.gamma_2 = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.gamma_1 * self.attn(self.norm1(x))
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class LayerScaleBlockClassAttn(nn.Module):
    """Class-attention block on the whole sequence, (N, 1 + T, D) → (N, 1 + T, D): the class token
    (position 0) is updated, the patch tokens pass through unchanged."""

    def __init__(self, dim: int, heads: int, init: float, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = ClassAttn(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.gamma_1 = nn.Parameter(torch.full((dim,), init))
        self.gamma_2 = nn.Parameter(torch.full((dim,), init))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        c = u[:, :1] + self.gamma_1 * self.attn(self.norm1(u))
        c = c + self.gamma_2 * self.mlp(self.norm2(c))
        return torch.cat((c, u[:, 1:]), dim=1)


class CaiT(PatchTransformer):
    """CaiT; ``features`` → (N, D), the final-norm class token after class attention."""

    num_prefix_tokens = 0  # the position embedding covers the patch grid only

    def __init__(self, num_classes: int, width: float = 1.0, stem: str = STEM, image_size: int = 32,
                 depth: int = 24, depth_token_only: int = 2, heads: int = 8, head_dim: int = 48,
                 mlp_ratio: float = 4.0, arch: str = "cait_small") -> None:
        dim = scale_embed(heads, head_dim, width)
        super().__init__(num_classes, width, stem, image_size, dim, arch)
        init = layerscale_init(depth)
        self.blocks = nn.Sequential(*[LayerScaleBlock(dim, heads, init, mlp_ratio) for _ in range(depth)])
        self.blocks_token_only = nn.ModuleList(
            [LayerScaleBlockClassAttn(dim, heads, init, mlp_ratio) for _ in range(depth_token_only)])
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self._finish(num_classes)

    def block_lists(self) -> List[Tuple[str, nn.Module]]:
        return [("blocks", self.blocks), ("blocks_token_only", self.blocks_token_only)]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) → (N, D): LN of the class token after the class-attention blocks."""
        t = self.blocks(self.patch_tokens(x) + self.pos_embed)
        u = torch.cat((self.cls_token.expand(t.shape[0], -1, -1), t), dim=1)
        for blk in self.blocks_token_only:
            u = blk(u)
        return self.norm(u[:, 0])


@register_model("cait_small", stems=(STEM,), min_size={STEM: 4}, sized=True,
                description="CaiT-S24 (D 384, 24 LayerScale talking-heads blocks + 2 class-attention "
                            "blocks, 8 heads; timm names); patch 4/8/16 px for <64/<96/>=96 px images")
def cait_small(num_classes: int, width: float = 1.0, stem: str = STEM, image_size: int = 32) -> CaiT:
    return CaiT(num_classes, width, stem, image_size)
