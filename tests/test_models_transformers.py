"""Contracts of the transformer backbones ``vit_small`` and ``cait_small`` (ueperf/models/vit.py,
cait.py): published parameter counts, the patch-size rule, shapes, layer groups and paradigm
freezing, initialisation, the attention variants against plain attention, and timm-format
checkpoints (key names, position-embedding resampling, mismatch reports).

Width-1 counts are taken on the meta device; everything that runs uses width 0.125 (D = 48) and
batches of 2-4 so the file stays fast on 2 CPU cores. The generic model tests in
tests/test_models.py run on these models too.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ueperf.engine.trainer import build_param_groups
from ueperf.errors import ConfigError, ModelError
from ueperf.models import MODELS, build_model, load_pretrained
from ueperf.models.cait import ClassAttn, TalkingHeadAttn, layerscale_init
from ueperf.models.vit import Attention, patch_size_for
from ueperf.paradigms import freeze

W = 0.125
NAMES = ("vit_small", "cait_small")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small(name: str, size: int = 32, num_classes: int = 7, width: float = W, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, num_classes, size, width=width)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ─────────────────────────────────────────────── parameter counts ──
def _timm_vit_count(D=384, depth=12, P=16, T=196, K=1000) -> int:
    """Sum over the layer shapes of timm's VisionTransformer (class token, qkv/MLP biases)."""
    block = 2 * D + (D * 3 * D + 3 * D) + (D * D + D) + 2 * D + (D * 4 * D + 4 * D) + (4 * D * D + D)
    return (3 * P * P * D + D) + D + (T + 1) * D + depth * block + 2 * D + (D * K + K)


def _timm_cait_count(D=384, depth=24, H=8, P=16, T=196, K=1000) -> int:
    """Sum over the layer shapes of timm's Cait: talking heads add two (H×H + H) maps, LayerScale
    two D-vectors per block; the position embedding has no class-token entry."""
    mlp = (D * 4 * D + 4 * D) + (4 * D * D + D)
    sa = 2 * D + (D * 3 * D + 3 * D) + 2 * (H * H + H) + (D * D + D) + 2 * D + mlp + 2 * D
    ca = 2 * D + 3 * (D * D + D) + (D * D + D) + 2 * D + mlp + 2 * D
    return (3 * P * P * D + D) + T * D + D + depth * sa + 2 * ca + 2 * D + (D * K + K)


def test_timm_parameter_counts_at_width_1_224px_1000_classes():
    assert _timm_vit_count() == 22_050_664          # timm vit_small_patch16_224 (DeiT-S: 22.1 M)
    assert _timm_cait_count() == 46_916_200         # timm cait_s24_224 (paper: 46.9 M)
    with torch.device("meta"):
        vit = build_model("vit_small", 1000, 224)
        cait = build_model("cait_small", 1000, 224)
    assert n_params(vit) == 22_050_664
    assert n_params(cait) == 46_916_200
    assert (vit.patch_size, vit.grid, vit.embed_dim) == (16, 14, 384)
    assert (cait.patch_size, cait.grid, cait.embed_dim) == (16, 14, 384)
    assert vit.pos_embed.shape == (1, 197, 384) and cait.pos_embed.shape == (1, 196, 384)
    assert len(vit.blocks) == 12 and vit.blocks[0].attn.heads == 6
    assert len(cait.blocks) == 24 and len(cait.blocks_token_only) == 2 and cait.blocks[0].attn.heads == 8


# ─────────────────────────────────────────────── patch rule, width, stem ──
@pytest.mark.parametrize("size,patch,grid", [(32, 4, 8), (16, 4, 4), (48, 4, 12), (64, 8, 8), (80, 8, 10),
                                             (96, 16, 6), (128, 16, 8), (224, 16, 14)])
def test_patch_size_follows_the_image_size(size, patch, grid):
    assert patch_size_for(size) == patch
    with torch.device("meta"):
        for name in NAMES:
            m = build_model(name, 10, size, width=W)
            assert (m.patch_size, m.grid) == (patch, grid)
            assert m.patch_embed.proj.weight.shape[-2:] == (patch, patch)
            assert m.pos_embed.shape[1] == grid * grid + (name == "vit_small")


@pytest.mark.parametrize("size,near", [(30, "data.image_size=28 or data.image_size=32"),
                                       (100, "data.image_size=96 or data.image_size=112"),
                                       (66, "data.image_size=64 or data.image_size=72")])
def test_image_size_not_a_multiple_of_the_patch_is_refused(size, near):
    for name in NAMES:
        with pytest.raises(ConfigError) as e:
            build_model(name, 10, size, width=W)
        msg = str(e.value)
        assert name in msg and f"image_size={size}" in msg and "not a multiple of" in msg and near in msg


def test_too_small_images_are_refused():
    with pytest.raises(ConfigError, match="at least 4 px"):
        build_model("vit_small", 10, 2, width=W)


@pytest.mark.parametrize("width,vit_dim,cait_dim", [(1.0, 384, 384), (0.25, 96, 96), (0.125, 48, 48),
                                                    (0.1, 36, 40), (0.01, 6, 8), (2.0, 768, 768)])
def test_width_scales_the_per_head_width(width, vit_dim, cait_dim):
    with torch.device("meta"):
        vit = build_model("vit_small", 10, 32, width=width)
        cait = build_model("cait_small", 10, 32, width=width)
    assert vit.embed_dim == vit_dim and vit_dim % 6 == 0 and vit.feature_dim == vit_dim
    assert cait.embed_dim == cait_dim and cait_dim % 8 == 0 and cait.feature_dim == cait_dim
    assert vit.blocks[0].mlp.fc1.out_features == 4 * vit_dim
    assert len(vit.blocks) == 12 and len(cait.blocks) == 24  # depth never changes


def test_stem_auto_is_patch_and_cnn_stems_are_refused():
    for name in NAMES:
        assert MODELS.get(name).stems == ("patch",)
        for size in (32, 64, 224):
            with torch.device("meta"):
                assert build_model(name, 10, size, width=W, stem="auto").stem == "patch"
        for stem in ("cifar", "imagenet"):
            with pytest.raises(ConfigError) as e:
                build_model(name, 10, 32, width=W, stem=stem)
            msg = str(e.value)
            assert f"no {stem!r} stem" in msg and "model.stem=auto" in msg and "model.stem=patch" not in msg
    # the CNN message still offers the CNN's own stem
    with pytest.raises(ConfigError, match="model.stem=auto or model.stem=cifar"):
        build_model("wrn28_10", 10, 64, stem="imagenet")
    # the registry entry builds without an image size (32 px), as the CNN entries do
    assert MODELS.get("vit_small")(10, W).image_size == 32


# ─────────────────────────────────────────────── forward / features ──
@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_features_are_the_final_norm_class_token(name, size):
    m = small(name, size).eval()
    x = torch.rand(2, 3, size, size)
    seen = {}
    last = m.blocks_token_only[-1] if name == "cait_small" else m.blocks[-1]
    h = last.register_forward_hook(lambda mod, i, out: seen.setdefault("tokens", out))
    with torch.no_grad():
        logits, feats = m(x), m.features(x)
    h.remove()
    tokens = seen["tokens"]
    assert tokens.shape == (2, 1 + m.grid ** 2, 48)                  # [class token; 64 patch tokens]
    assert logits.shape == (2, 7) and feats.shape == (2, 48) and m.feature_dim == 48
    assert isinstance(m.head, nn.Linear) and m.head is m.get_submodule("head")
    torch.testing.assert_close(feats, m.norm(tokens[:, 0]))           # LN of the class token
    torch.testing.assert_close(m.head(feats), logits)


@pytest.mark.parametrize("name", NAMES)
def test_other_image_sizes_are_refused_at_forward(name):
    m = small(name, 32)
    with pytest.raises(ModelError, match="built for 32x32 px images"):
        m(torch.rand(1, 3, 64, 64))


def test_cait_class_attention_leaves_patch_tokens_alone():
    m = small("cait_small").eval()
    u = torch.randn(2, 65, 48)
    with torch.no_grad():
        out = m.blocks_token_only[0](u)
    assert out.shape == u.shape and torch.equal(out[:, 1:], u[:, 1:]) and not torch.equal(out[:, 0], u[:, 0])


# ─────────────────────────────────────────────── attention variants ──
def test_talking_heads_with_identity_mixing_is_plain_attention():
    torch.manual_seed(0)
    th, plain = TalkingHeadAttn(48, 8), Attention(48, 8)
    with torch.no_grad():
        for lin in (th.proj_l, th.proj_w):
            lin.weight.copy_(torch.eye(8))
            lin.bias.zero_()
        plain.load_state_dict({k: v for k, v in th.state_dict().items() if k.split(".")[0] in ("qkv", "proj")})
        x = torch.randn(3, 10, 48)
        torch.testing.assert_close(th(x), plain(x))
        # real mixing changes the result: heads talk
        th.proj_l.weight.copy_(torch.randn(8, 8))
        assert not torch.allclose(th(x), plain(x))


def test_class_attention_is_the_class_row_of_full_attention():
    torch.manual_seed(0)
    ca, full = ClassAttn(48, 8), Attention(48, 8)
    with torch.no_grad():
        full.qkv.weight.copy_(torch.cat([ca.q.weight, ca.k.weight, ca.v.weight]))
        full.qkv.bias.copy_(torch.cat([ca.q.bias, ca.k.bias, ca.v.bias]))
        full.proj.load_state_dict(ca.proj.state_dict())
        u = torch.randn(3, 11, 48)
        torch.testing.assert_close(ca(u), full(u)[:, :1])


# ─────────────────────────────────────────────── initialisation ──
@pytest.mark.parametrize("name", NAMES)
def test_initialisation(name):
    m = small(name, width=0.25)
    linears = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
    for lin in linears:
        assert lin.weight.abs().max() <= 0.04 + 1e-7                   # trunc normal at ±2σ, σ = 0.02
        assert torch.count_nonzero(lin.bias) == 0
    big = torch.cat([lin.weight.flatten() for lin in linears if lin.weight.numel() > 1000])
    assert 0.015 < big.std() < 0.02                                   # ±2σ truncation: 0.88 σ
    for t in (m.pos_embed, m.cls_token):
        assert t.abs().max() <= 0.04 + 1e-7 and t.std() > 0.01
    for ln in (mod for mod in m.modules() if isinstance(mod, nn.LayerNorm)):
        assert torch.equal(ln.weight, torch.ones_like(ln.weight)) and torch.count_nonzero(ln.bias) == 0
        assert ln.eps == 1e-6
    conv = m.patch_embed.proj.weight                                   # PyTorch default: U(±1/√fan_in)
    assert conv.abs().max() <= 1 / math.sqrt(conv[0].numel())
    if name == "cait_small":
        gammas = [p for n, p in m.named_parameters() if "gamma_" in n]
        assert len(gammas) == 2 * 26 and all(torch.all(g == 1e-5) for g in gammas)
    assert (layerscale_init(12), layerscale_init(18), layerscale_init(24), layerscale_init(36)) == \
        (0.1, 0.1, 1e-5, 1e-6)


# ─────────────────────────────────────────────── layer groups and paradigms ──
@pytest.mark.parametrize("name,depth,depth_ca", [("vit_small", 12, 0), ("cait_small", 24, 2)])
def test_groups_cover_every_parameter_and_buffer_once(name, depth, depth_ca):
    m = small(name)
    groups = m.layer_groups()
    names = [g for g, _ in groups]
    assert names == (["embed"] + [f"blocks.{i}" for i in range(depth)]
                     + [f"blocks_token_only.{j}" for j in range(depth_ca)] + ["head"])
    counts = {}
    for kind in ("parameters", "buffers"):
        seen = [id(t) for _, mod in groups for t in getattr(mod, kind)()]
        assert len(seen) == len(set(seen)) and set(seen) == {id(t) for t in getattr(m, kind)()}
        counts[kind] = len(seen)
    assert counts["parameters"] == len(list(m.parameters()))
    embed = dict(groups[0][1].named_parameters())
    assert set(embed) == {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"}
    assert embed["pos_embed"] is m.pos_embed and embed["cls_token"] is m.cls_token
    assert set(dict(groups[-1][1].named_parameters())) == {"norm.weight", "norm.bias", "head.weight", "head.bias"}
    assert m.group_stages() == list(range(depth + depth_ca + 2))
    # the view modules are not registered: the state_dict is timm's, unchanged
    assert not any(k.startswith(("embed.", "0.")) for k in m.state_dict())
    # a hook on the head group's output module sees the logits
    assert m.group_output_module("head") is m.head
    with pytest.raises(ModelError, match="embed"):
        m.group_output_module("embed")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("k", [1, 3])
def test_pf_k_freezes_patch_embedding_and_first_k_blocks(name, k):
    m = small(name).train()
    frozen = freeze(m, f"pf{k}")
    assert frozen == list(range(k + 1))
    frozen_ids = {id(p) for i in frozen for p in m.layer_groups()[i][1].parameters()}
    for pname, p in m.named_parameters():
        in_front = pname.startswith(("cls_token", "pos_embed", "patch_embed.")) or any(
            pname.startswith(f"blocks.{j}.") for j in range(k))
        assert p.requires_grad == (not in_front), pname
        assert (id(p) in frozen_ids) == in_front
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    F.cross_entropy(m(torch.rand(4, 3, 32, 32)), torch.arange(4)).backward()
    opt.step()
    for n, p in m.named_parameters():   # (CaiT's 1e-5 LayerScale makes some trainable steps invisibly small)
        assert (p.grad is None) == (not p.requires_grad), n
        if not p.requires_grad:
            assert torch.equal(p, before[n]), n
    assert not torch.equal(m.head.weight, before["head.weight"])
    # the optimiser gets one param group per trainable layer group, first the block after the frozen ones
    pg = build_param_groups(m, [])
    assert [g["index"] for g in pg] == list(range(k + 1, len(m.layer_groups())))
    assert pg[0]["name"] == f"blocks.{k}" and pg[-1]["name"] == "head"


@pytest.mark.parametrize("name", NAMES)
def test_lp_trains_final_norm_and_head_and_ft_everything(name):
    m = small(name)
    last = len(m.layer_groups()) - 1
    assert freeze(m, "lp") == list(range(last))
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {"norm.weight", "norm.bias",
                                                                     "head.weight", "head.bias"}
    m2 = small(name)
    assert freeze(m2, "ft") == [] and all(p.requires_grad for p in m2.parameters())
    with pytest.raises(ConfigError, match="would freeze the head"):
        freeze(small(name), f"pf{last}")
    assert freeze(small(name), f"pf{last - 1}") == list(range(last))  # every block frozen, head trains


# ─────────────────────────────────────────────── timm checkpoints ──
def timm_keys(name: str, depth: int, depth_token_only: int = 0) -> set:
    """The state_dict keys of timm's vit_small_patch16_224 / cait_s24_224, written out."""
    keys = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
            "norm.weight", "norm.bias", "head.weight", "head.bias"}
    for i in range(depth):
        for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2") + (
                ("attn.proj_l", "attn.proj_w") if name == "cait_small" else ()):
            keys |= {f"blocks.{i}.{part}.weight", f"blocks.{i}.{part}.bias"}
        if name == "cait_small":
            keys |= {f"blocks.{i}.gamma_1", f"blocks.{i}.gamma_2"}
    for j in range(depth_token_only):
        for part in ("norm1", "attn.q", "attn.k", "attn.v", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"blocks_token_only.{j}.{part}.weight", f"blocks_token_only.{j}.{part}.bias"}
        keys |= {f"blocks_token_only.{j}.gamma_1", f"blocks_token_only.{j}.gamma_2"}
    return keys


def to_timm(state: dict, name: str) -> dict:
    """Our state_dict under timm's names: the names are timm's, so the renaming is the identity —
    checked against the written-out timm key set, not assumed."""
    expected = timm_keys(name, 12) if name == "vit_small" else timm_keys(name, 24, 2)
    assert set(state) == expected
    return {k: v.clone() for k, v in state.items()}


def test_state_dict_names_are_timms():
    with torch.device("meta"):
        vit = build_model("vit_small", 1000, 224)
        cait = build_model("cait_small", 1000, 224)
    assert set(vit.state_dict()) == timm_keys("vit_small", 12)
    assert set(cait.state_dict()) == timm_keys("cait_small", 24, 2)
    assert len(vit.state_dict()) == 152 and len(cait.state_dict()) == 8 + 24 * 18 + 2 * 18


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("src_size,dst_size", [(48, 32), (32, 48), (224, 96)])
def test_timm_checkpoint_with_another_grid_loads_with_the_resize_reported(name, src_size, dst_size, tmp_path):
    src = small(name, src_size, num_classes=1000, seed=1)
    sd = to_timm(src.state_dict(), name)
    torch.save({"model": sd, "epoch": 299}, tmp_path / "timm.pth")             # DeiT-repository layout
    dst = small(name, dst_size, num_classes=10, seed=2)
    report = load_pretrained(dst, tmp_path / "timm.pth")
    g0, g1 = src.grid, dst.grid
    prefix = 1 if name == "vit_small" else 0
    note = next(n for n in report["notes"] if n.startswith("resized pos_embed"))
    assert f"({1}, {prefix + g0 * g0}, 48) → ({1}, {prefix + g1 * g1}, 48)" in note
    assert f"{g0}x{g0}" in note and f"{g1}x{g1}" in note and "bicubic" in note
    assert not report["head_loaded"] and report["skipped"] == ["head.bias", "head.weight"]  # 1000 vs 10 classes
    # every other tensor is the checkpoint's, the final norm included
    got = dst.state_dict()
    for k, v in sd.items():
        if k not in ("pos_embed", "head.weight", "head.bias"):
            assert torch.equal(got[k], v), k
    # the class-token position is kept, the grid resampled bicubically
    pe = sd["pos_embed"]
    assert torch.equal(got["pos_embed"][:, :prefix], pe[:, :prefix])
    grid = pe[:, prefix:].reshape(1, g0, g0, 48).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(g1, g1), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(got["pos_embed"][:, prefix:], want.permute(0, 2, 3, 1).reshape(1, g1 * g1, 48))
    # a position embedding constant over the grid stays constant
    sd["pos_embed"] = torch.full_like(pe, 0.5)
    torch.save(sd, tmp_path / "const.pth")
    load_pretrained(dst, tmp_path / "const.pth")
    torch.testing.assert_close(dst.pos_embed, torch.full_like(dst.pos_embed, 0.5))
    with torch.no_grad():
        assert torch.isfinite(dst(torch.rand(2, 3, dst_size, dst_size))).all()


@pytest.mark.parametrize("name", NAMES)
def test_same_grid_checkpoint_loads_exactly_without_resize(name, tmp_path):
    src = small(name, 32, seed=1)
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, tmp_path / "same.pth")
    dst = small(name, 32, seed=2)
    report = load_pretrained(dst, tmp_path / "same.pth")
    assert report["head_loaded"] and not any("resized" in n for n in report["notes"])
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(src.eval()(x), dst.eval()(x))


@pytest.mark.parametrize("name", NAMES)
def test_another_patch_size_is_a_clear_error(name, tmp_path):
    torch.save(small(name, 64).state_dict(), tmp_path / "p8.pth")      # 64 px: 8 px patches
    with pytest.raises(ModelError) as e:
        load_pretrained(small(name, 32), tmp_path / "p8.pth")           # 32 px: 4 px patches
    msg = str(e.value)
    assert "p8.pth" in msg and "patch_embed.proj.weight (48, 3, 8, 8) vs model (48, 3, 4, 4)" in msg
    assert "8x8 px patches" in msg and "4x4 px ones" in msg and "data.image_size" in msg


def test_mismatching_shapes_and_keys_are_reported_by_key_and_shape(tmp_path):
    # another width: every tensor differs; the report names keys with both shapes
    torch.save(small("vit_small", width=0.25).state_dict(), tmp_path / "w.pth")
    with pytest.raises(ModelError, match=r"shape mismatches \(checkpoint vs model\): .*"
                                         r"cls_token \(1, 1, 96\) vs \(1, 1, 48\)"):
        load_pretrained(small("vit_small"), tmp_path / "w.pth")
    # a pos_embed of another width is not resampled but reported
    sd = small("vit_small").state_dict()
    sd["pos_embed"] = torch.zeros(1, 145, 96)
    torch.save(sd, tmp_path / "pe.pth")
    with pytest.raises(ModelError, match=r"pos_embed \(1, 145, 96\) vs \(1, 65, 48\)"):
        load_pretrained(small("vit_small"), tmp_path / "pe.pth")
    # a missing CaiT tensor is named
    sd = small("cait_small").state_dict()
    del sd["blocks.3.attn.proj_l.weight"]
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(ModelError, match=r"missing from the checkpoint: blocks\.3\.attn\.proj_l\.weight"):
        load_pretrained(small("cait_small"), tmp_path / "missing.pth")
    # a ViT checkpoint into CaiT: unknown and missing keys, named
    torch.save(small("vit_small").state_dict(), tmp_path / "vit.pth")
    with pytest.raises(ModelError, match=r"model keys missing from the checkpoint: .*gamma_1"):
        load_pretrained(small("cait_small"), tmp_path / "vit.pth")


@pytest.mark.parametrize("src_size", [32, 48])
def test_deit_distilled_checkpoint_loads_as_the_plain_vit_in_it(src_size, tmp_path):
    """DeiT layout: pos_embed positions [class, distillation, grid]; dist_token and head_dist are
    dropped (and said), the class position and the grid kept (resampled when the grid differs)."""
    src = small("vit_small", src_size, seed=1)
    sd = to_timm(src.state_dict(), "vit_small")
    pe = sd["pos_embed"]
    dist_pos = torch.randn(1, 1, 48)
    sd["pos_embed"] = torch.cat([pe[:, :1], dist_pos, pe[:, 1:]], dim=1)
    sd["dist_token"] = torch.randn(1, 1, 48)
    sd["head_dist.weight"], sd["head_dist.bias"] = torch.randn(10, 48), torch.randn(10)
    torch.save({"model": sd}, tmp_path / "deit_distilled.pth")
    dst = small("vit_small", 32, seed=2)
    report = load_pretrained(dst, tmp_path / "deit_distilled.pth")
    note = next(n for n in report["notes"] if n.startswith("DeiT distilled"))
    assert "dist_token" in note and "head_dist.bias" in note and "head_dist.weight" in note and "position 1" in note
    assert report["head_loaded"]
    x = torch.rand(2, 3, 32, 32)
    if src_size == 32:   # same grid: exactly the ViT without the distillation parts
        with torch.no_grad():
            assert torch.equal(src.eval()(x), dst.eval()(x))
    else:
        assert any(n.startswith("resized pos_embed") for n in report["notes"])
        assert torch.equal(dst.pos_embed[:, :1], pe[:, :1])


# ─────────────────────────────────────────────── weight decay as timm ──
@pytest.mark.parametrize("name", ["vit_small", "cait_small", "resnet18"])
def test_wd_exclude_timm_spares_biases_norms_and_tokens_and_keeps_the_lr_rules(name, tmp_path):
    """optim.wd_exclude=timm: every parameter of <= 1 dimension and pos_embed / cls_token in groups
    with weight decay 0, the rest at optim.weight_decay; each moved group keeps its layer group's lr;
    the default (none) leaves the optimiser exactly as before."""
    from ueperf.engine.trainer import Trainer
    from ueperf.recipes import build
    sets = [f"model.name={name}", "model.width=0.125", "data.dataset=synthetic", "data.synthetic_train=64",
            "data.synthetic_test=32", "train.epochs=1", "train.progress=false", "optim.weight_decay=0.01",
            f"out_dir={tmp_path}"]
    with Trainer(build("synthetic_smoke", sets + ["optim.wd_exclude=timm", "name=timm"])) as tr:
        groups = tr.wrapped.param_groups
        names = {id(p): n for n, p in tr.model.named_parameters()}
        for g in groups:
            for p in g["params"]:
                n = names[id(p)]
                spared = p.ndim <= 1 or n in ("pos_embed", "cls_token")
                assert g["weight_decay"] == (0.0 if spared else 0.01), (n, g["name"])
                assert g["name"].endswith(".no_decay") == spared, (n, g["name"])
        assert sum(p.numel() for g in groups for p in g["params"]) == \
            sum(p.numel() for p in tr.model.parameters() if p.requires_grad)
        tr.lr_mult = [0.5 + i for i in range(len(tr.lr_mult))]   # distinct per layer group
        tr.set_lr(0.3)
        owners = {g["name"]: g["lr"] for g in groups}
        moved = [g for g in groups if g["name"].endswith(".no_decay")]
        assert moved
        for g in moved:
            assert g["lr"] == owners[g["name"][:-len(".no_decay")]] > 0
    with Trainer(build("synthetic_smoke", sets + ["name=none"])) as tr:
        assert not any(g["name"].endswith("no_decay") for g in tr.wrapped.param_groups)
        assert len(tr.wrapped.param_groups) == len(tr.param_groups)
        assert all(g["weight_decay"] == 0.01 for g in tr.wrapped.param_groups)


def test_pf_k_beyond_3_is_a_paradigm_for_deep_models():
    """pf<k> for any k: the transformers' 12+ blocks can be half frozen (pf6); a k that would
    freeze a ResNet's head is refused on the model, naming the pf values that fit."""
    from ueperf.paradigms import freeze, get
    from ueperf.recipes import build
    cfg = build("cifar10_resnet18", ["model.name=vit_small", "model.width=0.125", "model.pretrained=x.pt"],
                paradigm="pf6")
    assert cfg.paradigm == "pf6" and cfg.train.epochs == 30 and get("pf6").pretrained
    m = small("vit_small")
    assert freeze(m, "pf6") == list(range(7))                    # embedding + blocks 1..6
    with pytest.raises(ConfigError, match=r"use pf1\.\.pf4"):
        freeze(build_model("resnet18", num_classes=10, image_size=32, width=0.125), "pf6")
    with pytest.raises(ConfigError, match="unknown paradigm 'pf0'"):
        get("pf0")
