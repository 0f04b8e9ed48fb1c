"""MobileNet-V2 and SENet-18: exact architecture contracts (tests/test_models.py checks what every
registered model shares: forward = head ∘ features, gradients, channels-last, checkpoints).

Width-1 counts are taken on the meta device; everything that runs uses width 0.25 (or the smoke
recipe's 0.125) and batches of 2-4 so the file stays fast on 2 CPU cores.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ueperf.errors import ConfigError
from ueperf.models import build_model, load_pretrained
from ueperf.models.resnet import BasicBlock
from ueperf.paradigms import freeze, frozen_groups

W = 0.25
NAMES = ("mobilenet_v2", "senet18", "senet18_preact")
GROUP_COUNTS = {"mobilenet_v2": 20, "senet18": 10, "senet18_preact": 10}

# Parameter counts at width 1, computed from the papers' layer tables and checked here exactly.
PARAM_COUNTS = {
    # MobileNet-V2, Table 2 of arXiv 1801.04381 (no biases in convs, BN after each): 2,236,682 for
    # 10 classes — the "~2.24 M" CIFAR MobileNet-V2 (strides change no shape) — and 3,504,872 for
    # 1000 classes, torchvision's mobilenet_v2 (the same body + a 1281 × 1000 classifier).
    ("mobilenet_v2", 10, 32): 2_236_682,
    ("mobilenet_v2", 1000, 224): 3_504_872,
    # SENet-18 = CIFAR ResNet-18 (11,173,962, kuangliu/pytorch-cifar) + one SE module (r = 16) per
    # basic block, C²/8 + C + C/16 parameters each: 2 × (580 + 2,184 + 8,464 + 33,312) = 89,080 →
    # 11,263,042 ("~11.26 M"; kuangliu/APBench's pre-activation SENet18 has 11,260,354, see
    # ueperf/models/senet.py). 1000 classes: torchvision resnet18 (11,689,512) + 89,080.
    ("senet18", 10, 32): 11_263_042,
    ("senet18", 1000, 224): 11_778_592,
    # APBench's pre-activation SENet18: senet18 − the 3 projection-shortcut BNs (2 × (128 + 256 + 512)
    # = 1,792) − the first BN of stages 2-4 on the block's input instead of its output
    # (2 × (64 + 128 + 256) = 896) = 11,260,354.
    ("senet18_preact", 10, 32): 11_260_354,
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small(name: str, size: int = 32, num_classes: int = 7, **kw) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, num_classes, size, width=W, **kw)


def meta(name: str, num_classes: int = 10, size: int = 32, **kw) -> nn.Module:
    with torch.device("meta"):
        return build_model(name, num_classes, size, **kw)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ─────────────────────────────────────────────── parameter counts / published layout ──
@pytest.mark.parametrize("key", sorted(PARAM_COUNTS), ids=lambda k: f"{k[0]}-{k[1]}cls-{k[2]}px")
def test_param_counts_at_width_1(key):
    name, classes, size = key
    assert n_params(meta(name, classes, size)) == PARAM_COUNTS[key]


def test_senet18_is_resnet18_plus_one_se_per_block():
    se = sum(2 * (c * c // 8 + c + c // 16) for c in (64, 128, 256, 512))
    assert se == 89_080
    assert n_params(meta("senet18")) - n_params(meta("resnet18")) == se
    m = meta("senet18")
    # resnet18's keys plus layerN.M.se.fc{1,2}.{weight,bias}; r = 16 → C/16 squeezed channels
    assert set(m.state_dict()) - set(meta("resnet18").state_dict()) == {
        f"layer{s}.{b}.se.fc{f}.{t}" for s in range(1, 5) for b in (0, 1) for f in (1, 2)
        for t in ("weight", "bias")}
    assert [blk.se.fc1.out_channels for s in range(1, 5) for blk in getattr(m, f"layer{s}")] == \
        [4, 4, 8, 8, 16, 16, 32, 32]


def _mobilenet_layout(m: nn.Module):
    """[(cin, hidden, cout, depthwise stride, residual)] of the 17 bottlenecks."""
    out = []
    for blk in list(m.body)[1:-1]:
        dw = next(c for c in blk.modules() if isinstance(c, nn.Conv2d) and c.groups > 1)
        convs = [c for c in blk.modules() if isinstance(c, nn.Conv2d)]
        out.append((convs[0].in_channels, dw.in_channels, convs[-1].out_channels, dw.stride[0],
                    blk.use_residual))
    return out


def test_mobilenet_v2_published_channels_and_strides():
    m = meta("mobilenet_v2", 1000, 224)
    assert m.stem == "imagenet" and len(m.body) == 19
    stem = m.body[0][0]
    assert (stem.in_channels, stem.out_channels, stem.kernel_size, stem.stride) == (3, 32, (3, 3), (2, 2))
    # Table 2 of the paper, one row per bottleneck: t·cin hidden channels, stride on the first repeat.
    want, cin = [], 32
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            stride = s if i == 0 else 1
            want.append((cin, t * cin, c, stride, stride == 1 and cin == c))
            cin = c
    assert _mobilenet_layout(m) == want
    assert sum(r for *_, r in want) == 10
    last = m.body[-1][0]
    assert (last.in_channels, last.out_channels, last.kernel_size) == (320, 1280, (1, 1))
    assert m.feature_dim == 1280 and m.classifier.in_features == 1280
    # Only the stem, the c = 24 sequence and the depthwise strides differ in the CIFAR stem.
    c = meta("mobilenet_v2", 10, 32)
    assert c.body[0][0].stride == (1, 1)
    strides = [s for _, _, _, s, _ in _mobilenet_layout(c)]
    assert strides == [1, 1, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1]
    assert [r[:3] for r in _mobilenet_layout(c)] == [r[:3] for r in want]
    # Linear bottleneck: no activation after the projection; ReLU6 everywhere else.
    blk = m.body[2].conv
    assert isinstance(blk[-1], nn.BatchNorm2d) and isinstance(blk[-2], nn.Conv2d)
    acts = {type(a) for a in m.modules() if isinstance(a, (nn.ReLU, nn.ReLU6))}
    assert acts == {nn.ReLU6}
    assert not any(c.bias is not None for c in m.modules() if isinstance(c, nn.Conv2d))


def test_width_scales_every_channel_count():
    m = meta("mobilenet_v2", 10, 32, width=0.25)
    assert m.body[0][0].out_channels == 8 and m.feature_dim == 320
    assert [r[2] for r in _mobilenet_layout(m)] == [4, 6, 6, 8, 8, 8, 16, 16, 16, 16, 24, 24, 24,
                                                    40, 40, 40, 80]
    tiny = meta("mobilenet_v2", 10, 32, width=0.01)  # every count ≥ 1, SE squeeze ≥ 1
    assert min(c.out_channels for c in tiny.modules() if isinstance(c, nn.Conv2d)) == 1
    s = meta("senet18", 10, 32, width=0.25)
    assert s.feature_dim == 128 and s.layer1[0].se.fc1.out_channels == 1
    assert meta("senet18", 10, 32, width=0.01).layer4[1].se.fc1.out_channels == 1


# ─────────────────────────────────────────────── shapes ──
@pytest.mark.parametrize("size,stem,final", [(32, "cifar", 4), (64, "imagenet", 2), (64, "cifar", 8)])
@pytest.mark.parametrize("name", NAMES)
def test_output_shapes(name, size, stem, final):
    m = small(name, size, stem="auto" if size == 32 or stem == "imagenet" else stem).eval()
    assert m.stem == stem
    last = m.body[-1] if name == "mobilenet_v2" else m.layer4
    seen = []
    h = last.register_forward_hook(lambda mod, i, o: seen.append(tuple(o.shape)))
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        logits, feats = m(x), m.features(x)
    h.remove()
    d = 320 if name == "mobilenet_v2" else 128  # 1280 / 512 at width 0.25
    assert logits.shape == (2, 7) and feats.shape == (2, d) and m.feature_dim == d
    assert seen[0] == (2, d, final, final)


@pytest.mark.parametrize("name", NAMES)
def test_min_sizes(name):
    with pytest.raises(ConfigError, match="at least 8 px"):
        build_model(name, 10, 4, width=W)
    with pytest.raises(ConfigError, match="at least 32 px"):
        build_model(name, 10, 16, width=W, stem="imagenet")
    m = small(name, 8).eval()  # the smallest CIFAR-stem input gives a 1×1 final map
    with torch.no_grad():
        assert m(torch.rand(1, 3, 8, 8)).shape == (1, 7)


# ─────────────────────────────────────────────── groups ──
@pytest.mark.parametrize("name", NAMES)
def test_layer_groups_cover_everything_once(name):
    m = small(name)
    groups = m.layer_groups()
    assert len(groups) == GROUP_COUNTS[name]
    for kind in ("parameters", "buffers"):
        seen = [id(t) for _, mod in groups for t in getattr(mod, kind)()]
        assert len(seen) == len(set(seen)), f"a {kind[:-1]} is in two groups"
        assert set(seen) == {id(t) for t in getattr(m, kind)()}, f"a {kind[:-1]} is in no group"
    stem = dict(m.named_parameters())[m.stem_conv_key]
    assert any(p is stem for p in groups[0][1].parameters())
    assert list(groups[-1][1].parameters()) == [m.head.weight, m.head.bias]


def test_group_names_and_stages():
    mb = small("mobilenet_v2")
    assert mb.group_names() == ["stem"] + [f"block{i}" for i in range(1, 18)] + ["conv_last", "head"]
    assert mb.group_stages() == [0, 1, 2, 2, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 6]
    # the same stages for the ImageNet stem, where each stage starts at a resolution halving
    assert small("mobilenet_v2", 64).group_stages() == mb.group_stages()
    se = small("senet18")
    assert se.group_names() == small("resnet18").group_names()
    assert se.group_stages() == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]


# ─────────────────────────────────────────────── PF-k through the paradigm code ──
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_pfk_freezes_stages_up_to_k(name, k):
    m = small(name).train()
    stages = m.group_stages()
    want = [i for i, s in enumerate(stages) if s <= k]
    assert freeze(m, f"pf{k}") == want == m.frozen_groups()
    assert frozen_groups(m, "lp") == list(range(len(stages) - 1))
    groups = m.layer_groups()
    before = [{n: t.clone() for n, t in mod.state_dict().items()} for _, mod in groups]
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    nn.functional.cross_entropy(m(torch.rand(4, 3, 32, 32)), torch.arange(4)).backward()
    opt.step()
    for i, (gname, mod) in enumerate(groups):
        frozen = i in want
        assert all(p.requires_grad != frozen for p in mod.parameters()), gname
        changed = any(not torch.equal(before[i][n], t) for n, t in mod.state_dict().items()
                      if "num_batches" not in n)
        assert changed != frozen, (gname, stages[i])  # weights and BN statistics of frozen groups kept


@pytest.mark.parametrize("name", NAMES)
def test_pf2_run_through_the_trainer(name, tmp_path):
    """The paradigm hook of a real (1-epoch) run: prior loaded, stage ≤ 2 groups frozen and
    unchanged, body lr 0.1 × head lr."""
    from ueperf.countermeasures import build_hooks
    from ueperf.engine.trainer import Trainer
    from ueperf.recipes import build

    torch.manual_seed(1)
    prior = tmp_path / "prior.pth"
    torch.save(build_model(name, 10, 32, width=0.125).state_dict(), prior)
    cfg = build("synthetic_smoke", ["train.progress=false", "train.threads=1", "train.epochs=1",
                                    "data.synthetic_train=64", "data.synthetic_test=32",
                                    f"data.cache_dir={tmp_path / 'cache'}", f"out_dir={tmp_path}",
                                    f"model.name={name}", f"model.pretrained={prior}"],
                paradigm="pf2")
    tr = Trainer(cfg, hooks=build_hooks(cfg)).setup()
    try:
        model = tr.model
        stages, groups = model.group_stages(), model.layer_groups()
        before = [{n: t.clone() for n, t in mod.state_dict().items()} for _, mod in groups]
        tr.fit()
        for i, (gname, mod) in enumerate(groups):
            changed = any(not torch.equal(before[i][n], t) for n, t in mod.state_dict().items()
                          if "num_batches" not in n)
            assert changed == (stages[i] > 2), (gname, stages[i])
        head = max(stages)
        assert [g["index"] for g in tr.param_groups] == [i for i, s in enumerate(stages) if s > 2]
        lr_head = [g["lr"] for g in tr.param_groups if stages[g["index"]] == head]
        assert all(g["lr"] == pytest.approx(0.1 * lr_head[0])
                   for g in tr.param_groups if stages[g["index"]] != head)
        assert tr.records[0]["frozen_groups"] == [i for i, s in enumerate(stages) if s <= 2]
    finally:
        tr.close()


# ─────────────────────────────────────────────── SE placement ──
def test_se_scales_the_residual_branch_before_the_sum():
    """With σ(·) forced to 1 the SE block is its plain basic block; with σ = 0.5 the residual
    branch (not the shortcut, not the sum) is halved."""
    m = small("senet18").eval()
    blk = m.layer2[0]  # projection shortcut
    plain = BasicBlock(blk.conv1.in_channels, blk.conv1.out_channels, 2, blk.downsample).eval()
    plain.load_state_dict({k: v for k, v in blk.state_dict().items() if not k.startswith("se.")})
    x = torch.rand(2, blk.conv1.in_channels, 8, 8)
    with torch.no_grad():
        nn.init.zeros_(blk.se.fc2.weight)
        nn.init.constant_(blk.se.fc2.bias, 40.0)   # σ(40) = 1 in float32
        torch.testing.assert_close(blk(x), plain(x))
        nn.init.zeros_(blk.se.fc2.bias)            # σ(0) = 0.5
        branch = blk.bn2(blk.conv2(blk.relu(blk.bn1(blk.conv1(x)))))
        torch.testing.assert_close(blk(x), torch.relu(0.5 * branch + blk.downsample(x)))


# ─────────────────────────────────────────────── foreign checkpoint names ──
def _equal_outputs(a: nn.Module, b: nn.Module) -> bool:
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("name,rename", [
    # torchvision mobilenet_v2: features.*, classifier = Sequential(Dropout, Linear)
    ("mobilenet_v2", lambda k: k.replace("body.", "features.").replace("classifier.", "classifier.1.")),
    # kuangliu's post-activation SENet(BasicBlock): linear, shortcut, SE convs on the block
    ("senet18", lambda k: k.replace("fc.", "linear.").replace("downsample", "shortcut").replace(".se.", ".")),
    # APBench's / kuangliu's SENet18 (pre-activation): the same names
    ("senet18_preact", lambda k: k.replace("fc.", "linear.").replace("downsample", "shortcut").replace(".se.", ".")),
])
def test_foreign_checkpoint_names_load(name, rename, tmp_path):
    src = small(name)
    sd = {rename(k): v for k, v in src.state_dict().items()}
    assert set(sd) != set(src.state_dict())
    torch.save(sd, tmp_path / "c.pth")
    torch.manual_seed(3)
    dst = build_model(name, 7, 32, width=W)
    report = load_pretrained(dst, tmp_path / "c.pth")
    assert report["head_loaded"] and report["skipped"] == [] and _equal_outputs(src, dst)


def _apbench_senet18(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """APBench's SENet18 forward (nets/senet.py: SENet(PreActBlock, [2, 2, 2, 2])) written with
    functional ops on a state dict under its own names, eval mode: the reference for senet18_preact."""
    F = torch.nn.functional

    def bn(t, p):
        return F.batch_norm(t, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                            training=False, eps=1e-5)

    out = F.relu(bn(F.conv2d(x, sd["conv1.weight"], padding=1), "bn1"))
    for s in range(1, 5):
        for i in range(2):
            b = f"layer{s}.{i}"
            stride = 2 if (s > 1 and i == 0) else 1
            a = F.relu(bn(out, b + ".bn1"))
            short = F.conv2d(a, sd[b + ".shortcut.0.weight"], stride=stride) if b + ".shortcut.0.weight" in sd else out
            u = F.conv2d(a, sd[b + ".conv1.weight"], stride=stride, padding=1)
            u = F.conv2d(F.relu(bn(u, b + ".bn2")), sd[b + ".conv2.weight"], padding=1)
            w = F.avg_pool2d(u, u.size(2))
            w = torch.sigmoid(F.conv2d(F.relu(F.conv2d(w, sd[b + ".fc1.weight"], sd[b + ".fc1.bias"])),
                                       sd[b + ".fc2.weight"], sd[b + ".fc2.bias"]))
            out = u * w + short
    out = F.avg_pool2d(out, 4).flatten(1)
    return F.linear(out, sd["linear.weight"], sd["linear.bias"])


def test_senet18_preact_is_apbenchs_senet18():
    """Same outputs as APBench's forward, computed from the state dict under APBench's names."""
    m = small("senet18_preact")
    with torch.no_grad():                      # non-trivial BN statistics
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    rename = lambda k: k.replace("fc.", "linear.").replace("downsample", "shortcut").replace(".se.", ".")  # noqa: E731
    sd = {rename(k): v for k, v in m.state_dict().items()}
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(x), _apbench_senet18(sd, x), rtol=1e-4, atol=1e-5)
