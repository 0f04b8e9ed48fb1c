"""Model zoo tests, parametrised over the registry (every registered model is checked).

Width-1 parameter counts are taken on the meta device (nothing is allocated); everything that
runs a forward pass uses width 0.25 and tiny batches so the file stays fast on 2 CPU cores.
"""
from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

from ueperf.errors import ConfigError, ModelError
from ueperf.models import MODELS, build_model, load_pretrained

NAMES = MODELS.names()
IMAGENET_STEM = [n for n in NAMES if "imagenet" in MODELS.get(n).stems]
W = 0.25  # width for every test that runs the network

# Published parameter counts at width 1 (the numbers the brief and the papers/zoos give).
PARAM_COUNTS = {
    ("resnet18", 10, 32): 11_173_962,      # kuangliu/pytorch-cifar ResNet18
    ("resnet18", 1000, 224): 11_689_512,   # torchvision resnet18
    ("resnet50", 1000, 224): 25_557_032,   # torchvision resnet50
    ("resnet50", 10, 32): 23_520_842,      # kuangliu/pytorch-cifar ResNet50
    ("vgg16", 10, 32): 14_728_266,         # kuangliu/pytorch-cifar VGG('VGG16')
    ("densenet121", 10, 32): 6_956_426,    # kuangliu DenseNet121 (6,956,298) + norm0 (2 × 64)
    ("densenet121", 1000, 224): 7_978_856,  # torchvision densenet121
    ("wrn28_10", 10, 32): 36_479_194,      # xternalz WideResNet(28, 10)
    ("wrn34_10", 10, 32): 46_160_474,      # xternalz WideResNet(34, 10)
}
# Layer-group counts from spec §4.3.
GROUP_COUNTS = {"vit_small": 14, "cait_small": 28,  # embed, 12 | 24 + 2 blocks, norm + head
                "fastnet": 5,  # whitening stem, 3 blocks, head
                "resnet18": 10, "resnet50": 18, "vgg16": 14, "densenet121": 9,
                "wrn28_10": 14, "wrn34_10": 17, "mobilenet_v2": 20, "senet18": 10, "senet18_preact": 10}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The test nets are tiny (width 0.25, batches of 2-4): intra-op threads only add
    # synchronisation, and on a shared 2-core machine OpenMP spinning made this file 3x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small(name: str, size: int = 32, num_classes: int = 7, **kw) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, num_classes, size, width=W, **kw)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_registry_has_every_architecture():
    assert set(NAMES) == set(GROUP_COUNTS)


@pytest.mark.parametrize("key", sorted(PARAM_COUNTS), ids=lambda k: f"{k[0]}-{k[1]}cls-{k[2]}px")
def test_published_param_counts_at_width_1(key):
    name, classes, size = key
    with torch.device("meta"):
        m = build_model(name, classes, size)
    assert n_params(m) == PARAM_COUNTS[key]


# ─────────────────────────────────────────────── forward / features ──
@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("name", NAMES)
def test_forward_and_features_shapes(name, size):
    m = small(name, size).eval()
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        logits, feats = m(x), m.features(x)
    assert logits.shape == (2, 7)
    assert feats.shape == (2, m.feature_dim) and m.feature_dim == m.head.in_features
    assert isinstance(m.head, nn.Linear) and m.head.out_features == 7
    torch.testing.assert_close(m.head(feats), logits)  # forward = head ∘ features
    # transformers have one stem, "patch"; CNNs take the CIFAR stem up to 32 px
    assert m.stem == ("imagenet" if size > 32 and name in IMAGENET_STEM else MODELS.get(name).stems[0])


@pytest.mark.parametrize("name", NAMES)
def test_train_step_reaches_every_parameter(name):
    # Also checks that the in-place ReLUs never overwrite a tensor autograd still needs.
    m = small(name).train()
    loss = nn.functional.cross_entropy(m(torch.rand(4, 3, 32, 32)), torch.arange(4))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_and_bf16_autocast(name):
    m = small(name).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = m(x)
        m_cl = m.to(memory_format=torch.channels_last)
        out = m_cl(x.contiguous(memory_format=torch.channels_last))
        # Random-init nets in eval mode (BN with init stats) can reach logits of 1e4: compare
        # relative to the largest logit, as only the summation order differs.
        torch.testing.assert_close(out, ref, atol=1e-4 * float(ref.abs().max()), rtol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = m_cl(x.contiguous(memory_format=torch.channels_last))
    assert low.shape == (2, 7) and torch.isfinite(low.float()).all()


@pytest.mark.parametrize("name", IMAGENET_STEM)
def test_imagenet_stem_at_224(name):
    m = small(name, 224).eval()
    assert m.stem == "imagenet"
    conv = m.state_dict()[m.stem_conv_key]
    assert conv.shape[-2:] == ((3, 3) if name == "mobilenet_v2" else (7, 7))  # MobileNet-V2: 3×3 stride 2
    with torch.no_grad():
        assert m(torch.rand(1, 3, 224, 224)).shape == (1, 7)


def test_stem_auto_and_explicit():
    assert small("resnet18", 32).state_dict()["conv1.weight"].shape[-1] == 3
    assert small("resnet18", 64).state_dict()["conv1.weight"].shape[-1] == 7
    assert small("resnet18", 64, stem="cifar").state_dict()["conv1.weight"].shape[-1] == 3
    assert small("resnet18", 32, stem="imagenet").state_dict()["conv1.weight"].shape[-1] == 7
    assert small("wrn28_10", 64).stem == "cifar"  # WRN has only the CIFAR layout
    # torchvision's max-pool is part of the ImageNet stem only.
    assert isinstance(small("resnet18", 64).maxpool, nn.MaxPool2d)
    assert isinstance(small("resnet18", 32).maxpool, nn.Identity)


# ─────────────────────────────────────────────── layer groups ──
@pytest.mark.parametrize("name", NAMES)
def test_layer_groups_partition_params_and_buffers(name):
    m = small(name)
    groups = m.layer_groups()
    assert len(groups) == GROUP_COUNTS[name]
    names = [g for g, _ in groups]
    assert len(set(names)) == len(names) and names == m.group_names()
    for kind in ("parameters", "buffers"):
        seen = [id(t) for _, mod in groups for t in getattr(mod, kind)()]
        every = [id(t) for t in getattr(m, kind)()]
        assert len(seen) == len(set(seen)), f"a {kind[:-1]} is in two groups"
        assert set(seen) == set(every), f"a {kind[:-1]} is in no group"
    stem_conv = dict(m.named_parameters())[m.stem_conv_key]
    assert any(p is stem_conv for p in groups[0][1].parameters())
    assert any(p is m.head.weight for p in groups[-1][1].parameters())
    stages = m.group_stages()
    assert len(stages) == len(groups)
    assert stages == sorted(stages) and stages[-1] > stages[-2] and stages[0] <= 1
    gp = m.group_parameters()
    assert [g for g, _ in gp] == names and sum(len(p) for _, p in gp) == len(list(m.parameters()))


@pytest.mark.parametrize("name", NAMES)
def test_group_output_module_sees_what_the_group_hands_on(name):
    """A hook on group_output_module(i) fires once per forward, and its output is the group's
    output on the main path: zeroing it makes every image's logits the same (a hook on VGG's
    unregistered slice views would never fire)."""
    m = small(name).eval()
    x = torch.rand(3, 3, 32, 32)
    stages = m.group_stages()
    for i, stage in enumerate(stages):
        if stage == 0 or stage == stages[-1]:
            continue
        calls = []

        def zero(module, inputs, out):
            calls.append(out.dim())
            return torch.zeros_like(out)

        handle = m.group_output_module(i).register_forward_hook(zero)
        try:
            with torch.no_grad():
                logits = m(x)
        finally:
            handle.remove()
        # a CNN group hands on (N, C, H, W) maps, a transformer block (N, T, D) tokens
        assert calls == [3 if m.stem == "patch" else 4], f"group {m.group_names()[i]}: hook calls {calls}"
        assert torch.allclose(logits, logits[:1].expand_as(logits), atol=1e-5), m.group_names()[i]
    if name == "resnet18":   # the stem's ReLU is functional: no module carries its output
        with pytest.raises(ModelError, match="stem"):
            m.group_output_module("stem")


def test_resnet18_groups_follow_spec():
    assert small("resnet18").group_names() == [
        "stem", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1",
        "layer4.0", "layer4.1", "head"]
    assert small("densenet121").group_names() == [
        "stem", "denseblock1", "transition1", "denseblock2", "transition2", "denseblock3",
        "transition3", "denseblock4", "head"]


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "wrn28_10", "vgg16"])
def test_frozen_groups_stay_in_eval_and_keep_bn_stats(name):
    m = small(name)
    m.freeze_groups([0, m.group_names()[1]])  # by index and by name
    assert m.frozen_groups() == [0, 1]
    m.train()
    groups = m.layer_groups()
    registered = {id(sub) for sub in m.modules()}  # not the fresh ModuleList views of a group
    for i, (_, mod) in enumerate(groups):
        for sub in mod.modules():
            if id(sub) in registered:
                assert sub.training == (i >= 2), (i, sub)
        assert all(p.requires_grad == (i >= 2) for p in mod.parameters())
    bn_frozen = next(b for b in groups[1][1].modules() if isinstance(b, nn.BatchNorm2d))
    bn_live = next(b for b in groups[-1][1].modules() if isinstance(b, nn.BatchNorm2d)) \
        if name in ("densenet121", "wrn28_10") else \
        next(b for b in groups[2][1].modules() if isinstance(b, nn.BatchNorm2d))
    before_f, before_l = bn_frozen.running_mean.clone(), bn_live.running_mean.clone()
    m(torch.rand(4, 3, 32, 32)).sum().backward()
    assert torch.equal(bn_frozen.running_mean, before_f)
    assert not torch.equal(bn_live.running_mean, before_l)
    assert all(p.grad is None for p in groups[0][1].parameters())
    trainable = m.group_parameters(trainable_only=True)
    assert trainable[0][1] == [] and trainable[1][1] == [] and trainable[2][1]
    m.eval().train()  # a second train() call must still respect the frozen set
    assert not bn_frozen.training
    m.unfreeze_all()
    assert bn_frozen.training and all(p.requires_grad for p in m.parameters())
    with pytest.raises(ConfigError, match="no layer group"):
        m.set_group_trainable("nope", False)
    with pytest.raises(ConfigError, match="out of range"):
        m.set_group_trainable(99, False)


# ─────────────────────────────────────────────── argument errors ──
def test_build_model_argument_errors():
    with pytest.raises(ConfigError, match="resnet18"):  # lists the known names
        build_model("resnet19", 10, 32)
    for bad in (0, -1, float("nan"), float("inf"), True, "1", 100):
        with pytest.raises(ConfigError, match="width"):
            build_model("resnet18", 10, 32, width=bad)
    with pytest.raises(ConfigError, match="auto, cifar, imagenet"):
        build_model("resnet18", 10, 32, stem="tiny")
    with pytest.raises(ConfigError, match="stem=cifar"):
        build_model("wrn28_10", 10, 64, stem="imagenet")
    with pytest.raises(ConfigError, match="at least 32 px"):
        build_model("vgg16", 10, 16)
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("resnet18", 0, 32)
    # The architecture functions check the stem too (no silent CIFAR layout labelled imagenet).
    with pytest.raises(ConfigError, match="no 'imagenet' stem"):
        MODELS.get("wrn28_10")(10, W, "imagenet")
    assert MODELS.get("resnet18")(10, W, "imagenet").stem == "imagenet"


# ─────────────────────────────────────────────── torchvision naming ──
def test_torchvision_state_dict_names():
    with torch.device("meta"):
        r18 = build_model("resnet18", 1000, 224)
        r50 = build_model("resnet50", 1000, 224)
        vgg = build_model("vgg16", 10, 32)
    # torchvision resnet18 / resnet50 have 62 / 161 parameter tensors.
    assert len(list(r18.parameters())) == 62 and len(list(r50.parameters())) == 161
    keys18, keys50 = set(r18.state_dict()), set(r50.state_dict())
    assert {"conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer1.1.bn2.bias",
            "layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_mean",
            "layer4.1.conv2.weight", "fc.weight", "fc.bias"} <= keys18
    assert {"layer1.0.conv3.weight", "layer1.0.downsample.0.weight", "layer4.2.bn3.weight"} <= keys50
    assert "layer1.0.downsample.0.weight" not in keys18
    # vgg16_bn().features: convs at these indices, max-pools after the 2nd/4th/7th/10th/13th conv.
    conv_idx = [i for i, l in enumerate(vgg.body) if isinstance(l, nn.Conv2d)]
    assert conv_idx == [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]
    assert [i for i, l in enumerate(vgg.body) if isinstance(l, nn.MaxPool2d)] == [6, 13, 23, 33, 43]


# ─────────────────────────────────────────────── load_pretrained ──
def _outputs_equal(a: nn.Module, b: nn.Module, size: int = 32) -> bool:
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("name", NAMES)
def test_load_pretrained_round_trip_with_ddp_prefix(name, tmp_path):
    src = small(name)
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}},
               path)
    torch.manual_seed(1)
    dst = build_model(name, 7, 32, width=W)
    assert not _outputs_equal(src, dst)
    report = load_pretrained(dst, path)
    assert report["head_loaded"] and report["skipped"] == []
    assert set(report["loaded"]) == set(src.state_dict())
    assert any("module." in n for n in report["notes"])
    assert _outputs_equal(src, dst)


def test_load_pretrained_foreign_layouts(tmp_path):
    # torchvision DenseNet keys ("features.*", incl. the old "norm.1" style) and kuangliu /
    # EM-repo ResNet keys ("linear", "shortcut"), saved kuangliu-style under "net".
    for name, rename in [
        ("densenet121", lambda k: k.replace("body.", "features.").replace(
            "denselayer1.norm1.", "denselayer1.norm.1.")),
        ("resnet18", lambda k: k.replace("fc.", "linear.").replace("downsample", "shortcut")),
        ("vgg16", lambda k: k.replace("body.", "features.")),
    ]:
        src = small(name)
        sd = {rename(k): v for k, v in src.state_dict().items()}
        assert set(sd) != set(src.state_dict())
        torch.save({"net": sd, "acc": 93.1, "epoch": 199}, tmp_path / f"{name}.pth")
        dst = build_model(name, 7, 32, width=W)
        report = load_pretrained(dst, tmp_path / f"{name}.pth")
        assert report["head_loaded"] and _outputs_equal(src, dst)


def test_load_pretrained_into_wrapped_and_compiled_names(tmp_path):
    src = small("resnet18")
    torch.save({f"_orig_mod.{k}": v for k, v in src.state_dict().items()}, tmp_path / "c.pth")

    class Wrapper(nn.Module):  # stands in for DDP: the model sits under .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    dst = build_model("resnet18", 7, 32, width=W)
    load_pretrained(Wrapper(dst), tmp_path / "c.pth")
    assert _outputs_equal(src, dst)


def test_head_skipped_when_class_count_differs(tmp_path):
    src = build_model("resnet18", 100, 32, width=W)
    torch.save(src.state_dict(), tmp_path / "c100.pth")
    dst = build_model("resnet18", 10, 32, width=W)
    head_before = dst.fc.weight.clone()
    report = load_pretrained(dst, tmp_path / "c100.pth")
    assert not report["head_loaded"] and report["skipped"] == ["fc.bias", "fc.weight"]
    assert any("(100, 128)" in n and "(10, 128)" in n for n in report["notes"])
    assert torch.equal(dst.fc.weight, head_before)
    torch.testing.assert_close(dst.features(torch.ones(1, 3, 32, 32)),
                               src.features(torch.ones(1, 3, 32, 32)))
    with pytest.raises(ModelError, match=r"fc.weight \(100, 128\) vs model \(10, 128\)"):
        load_pretrained(dst, tmp_path / "c100.pth", skip_head_on_mismatch=False)


def test_stem_mismatch_names_the_fix(tmp_path):
    torch.save(small("resnet18", 224).state_dict(), tmp_path / "in.pth")
    with pytest.raises(ModelError) as e:
        load_pretrained(small("resnet18", 32), tmp_path / "in.pth")
    msg = str(e.value)
    assert "ImageNet stem" in msg and "stem=imagenet" in msg and "conv1.weight (16, 3, 7, 7)" in msg
    torch.save(small("densenet121", 32).state_dict(), tmp_path / "cifar.pth")
    with pytest.raises(ModelError, match="stem=cifar"):
        load_pretrained(small("densenet121", 224), tmp_path / "cifar.pth")


def test_width_and_architecture_mismatch_errors(tmp_path):
    torch.save(build_model("resnet18", 7, 32, width=0.5).state_dict(), tmp_path / "w.pth")
    with pytest.raises(ModelError, match=r"shape mismatches.*conv1.weight \(32, 3, 3, 3\) "
                                         r"vs \(16, 3, 3, 3\).*width"):
        load_pretrained(small("resnet18"), tmp_path / "w.pth")
    torch.save(small("resnet50").state_dict(), tmp_path / "r50.pth")
    with pytest.raises(ModelError, match="checkpoint keys that the model does not have: .*conv3"):
        load_pretrained(small("resnet18"), tmp_path / "r50.pth")
    sd = small("resnet18").state_dict()
    del sd["layer3.1.bn2.running_var"]
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(ModelError, match="missing from the checkpoint: layer3.1.bn2.running_var"):
        load_pretrained(small("resnet18"), tmp_path / "missing.pth")


def test_num_batches_tracked_may_be_absent(tmp_path):
    # Old torchvision checkpoints predate BatchNorm's num_batches_tracked buffer.
    src = small("resnet18")
    torch.save({k: v for k, v in src.state_dict().items() if "num_batches_tracked" not in k},
               tmp_path / "old.pth")
    dst = small("resnet18")
    load_pretrained(dst, tmp_path / "old.pth")
    assert _outputs_equal(src, dst)


def test_unreadable_checkpoints_are_model_errors(tmp_path):
    dst = small("resnet18")
    with pytest.raises(ModelError, match="does not exist"):
        load_pretrained(dst, tmp_path / "nope.pth")
    torch.save(torch.zeros(10, 32, 32, 3), tmp_path / "tensor.pth")
    with pytest.raises(ModelError, match="single tensor"):
        load_pretrained(dst, tmp_path / "tensor.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ModelError, match="holds a list"):
        load_pretrained(dst, tmp_path / "list.pth")
    torch.save({"epoch": 3, "acc": 0.5}, tmp_path / "meta.pth")
    with pytest.raises(ModelError, match="not a state dict.*'epoch'"):
        load_pretrained(dst, tmp_path / "meta.pth")
    # A checkpoint holding a Python object: weights_only loading refuses it, nothing runs.
    torch.save({"args": argparse.Namespace(lr=0.1), "state_dict": dst.state_dict()},
               tmp_path / "obj.pth")
    with pytest.raises(ModelError, match="argparse.Namespace.*weights_only"):
        load_pretrained(dst, tmp_path / "obj.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot load the pretrained checkpoint .*junk.pth.*not a"):
        load_pretrained(dst, tmp_path / "junk.pth")
    sd = dst.state_dict()
    sd["layer1.0.conv1.weight"] = torch.full_like(sd["layer1.0.conv1.weight"], float("nan"))
    torch.save(sd, tmp_path / "nan.pth")
    with pytest.raises(ModelError, match="NaN/inf.*layer1.0.conv1.weight"):
        load_pretrained(dst, tmp_path / "nan.pth")
