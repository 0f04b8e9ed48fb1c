"""The protection contract, checked for EVERY registered method (parametrised over the registry,
so a method is covered the moment its file registers it), on 200 real CIFAR-10 images:

- its Config has ``eps`` and ``norm`` and every field carries a comment with a source tag;
- the published set respects the budget after uint8 quantisation, keeps shapes, dtype, labels and
  the test split, and opens as a verified protected store;
- the same seed gives the same bytes;
- sample-wise δ is indexed by sample (same-class samples get different rows), class-wise δ by label;
- a partial ratio touches exactly the seeded subset, the rest is byte-identical to the clean set.

Methods are run with the small budgets of ``FAST`` (only the keys their Config really has are
applied) and every surrogate is a 1-epoch, 1/8-width ResNet-18 (``SURROGATE``). A method missing
from ``FAST`` runs with its defaults and shows up as ``<name>-DEFAULTS`` in the test ids: give
it fast overrides here when it is slow.
"""
import dataclasses
import inspect
import re

import numpy as np
import pytest
import torch

from ueperf.config import DataConfig
from ueperf.data import prepare_dataset
from ueperf.data.budget import measure, per_sample_size, size_limit
from ueperf.data.protected import open_protected, protected_indices
from ueperf.protections import PROTECTIONS
from ueperf.protections.base import select_indices
from ueperf.protections.runner import craft, finalize

# Small-budget overrides per method. Every key must be a field of the method's Config: an unknown
# one fails the case by name (fast_overrides), so a renamed knob is noticed, not silently dropped.
FAST = {
    "random": [],
    "em": ["max_rounds=1", "steps=2", "train_steps=1", "width=0.125", "batch_size=200", "train_batch_size=64",
           "eval_batch_size=200"],
    "rem": ["iterations=1", "steps=1", "adv_steps=1", "eot=1", "width=0.125", "batch_size=100",
            "regen_batch_size=200"],
    "sp": [],
    "ops": [],
    "ap": [],
    "aep": ["steps=2", "surrogate_epochs=1", "surrogate_width=0.125", "batch_size=256"],
    "hypo": ["steps=2", "surrogate_epochs=1", "surrogate_width=0.125", "batch_size=256"],
    # {cache}: the module's cache folder, where `env` saves a random-init 1/8-width ResNet-18 as
    # BAIT's prior (the contract checks the published set, not the binding: tests/test_protect_bait.py)
    "bait": ["prior={cache}/bait_prior.pt", "width=0.125", "passes=1", "inner_steps=1", "steps=2",
             "regen_steps=2", "batch_size=100", "eval_batch_size=200"],
    "ssc": ["prior={cache}/bait_prior.pt", "width=0.125", "max_rounds=1", "train_steps=1", "steps=2",
            "probe_epochs=1", "batch_size=200", "eval_batch_size=200"],
}
# Extra cases: (method, overrides added to FAST) — covers the class-wise paths of the checks.
VARIANTS = {"random-class": ("random", ["granularity=class"]), "ssc-rgb": ("ssc", ["variant=rgb"])}
# Applied to every surrogate a method trains through ctx.surrogate (after the method's request).
SURROGATE = ["model.width=0.125", "train.epochs=1", "train.batch_size=64"]
N_TRAIN, N_TEST = 200, 100
TAG = re.compile(r"\[(paper|code|ours)\b")


def _params(variants=True):
    out = [pytest.param(n, id=n if n in FAST else f"{n}-DEFAULTS") for n in PROTECTIONS.names()]
    return out + ([pytest.param(v, id=v) for v in VARIANTS] if variants else [])


def method_of(case):
    return VARIANTS[case][0] if case in VARIANTS else case


def fast_overrides(case):
    """FAST (+ the variant's keys) for ``case``; a key its Config does not have fails the test
    by name (a renamed knob must be renamed here too, not silently run at its slow default)."""
    name = method_of(case)
    fields = {f.name for f in dataclasses.fields(PROTECTIONS.get(name).Config)}
    over = FAST.get(name, []) + (VARIANTS[case][1] if case in VARIANTS else [])
    unknown = [o for o in over if o.split("=", 1)[0] not in fields]
    if unknown:
        pytest.fail(f"{case}: FAST/VARIANTS set {unknown}, which {name}'s Config does not have "
                    f"(fields: {', '.join(sorted(fields))}); rename or remove them")
    return over


@pytest.fixture(scope="module")
def env(tmp_path_factory, cifar_root):
    cache = tmp_path_factory.mktemp("protect_contract")
    clean = prepare_dataset(DataConfig(dataset="cifar10", root=str(cifar_root), cache_dir=str(cache),
                                       train_limit=N_TRAIN, test_limit=N_TEST))
    from ueperf.models import build_model
    torch.save(build_model("resnet18", 10, 32, width=0.125).state_dict(), cache / "bait_prior.pt")
    return {"clean": clean, "cache": cache, "crafted": {}}


def _craft(env, case, seed=0):
    overrides = [o.replace("{cache}", str(env["cache"])) for o in fast_overrides(case)]
    return craft(method_of(case), env["clean"], overrides=overrides, seed=seed, device="cpu",
                 progress=False, cache_dir=env["cache"], surrogate_overrides=SURROGATE)


def crafted(env, name):
    """The method's perturbation on the 200 images, crafted once per module."""
    if name not in env["crafted"]:
        env["crafted"][name] = _craft(env, name)
    return env["crafted"][name]


# ───────────────────────────────────────────── registry-wide ──
def test_registry_holds_the_baseline():
    assert "random" in PROTECTIONS.names()


@pytest.mark.parametrize("name", _params(variants=False))
def test_config_fields_are_documented(name):
    Cfg = PROTECTIONS.get(name).Config
    fields = [f.name for f in dataclasses.fields(Cfg)]
    assert "eps" in fields and "norm" in fields, fields
    src = inspect.getsource(Cfg)
    undocumented = []
    for f in fields:
        # the field's definition line: `name: type = default  # unit ... [source]`
        line = next((l for l in src.splitlines() if re.match(rf"\s+{f}\s*:[^=]+=", l)), "")
        if "#" not in line or not TAG.search(line.split("#", 1)[1]):
            undocumented.append(f)
    assert not undocumented, f"{name}: Config fields without a '# unit ... [paper|code|ours]' comment: {undocumented}"


@pytest.mark.parametrize("name", _params())
def test_bound_shapes_and_store(env, name, tmp_path):
    c = crafted(env, name)
    clean = env["clean"]
    st = finalize(c, clean, out=tmp_path / "p", grid=False)
    assert st.kind == "protected"
    assert st.train.x.dtype == np.uint8 and st.train.x.shape == clean.train.x.shape
    np.testing.assert_array_equal(st.train.y, clean.train.y)
    np.testing.assert_array_equal(st.test.x, clean.test.x)
    np.testing.assert_array_equal(st.test.y, clean.test.y)
    # the budget, after uint8 quantisation: linf max|x'-x| <= ceil(255 ε); l2/l0 by their slack
    p = c.pert
    size = measure(clean.train.x, st.train.x, p.norm)
    assert size["size"] <= size_limit(p.norm, p.eps, 32 * 32 * 3), size
    if p.norm == "linf":
        assert size["max_abs"] <= int(np.ceil(255 * p.eps - 1e-9))
    assert size["max_abs"] > 0, f"{name} left every image unchanged"
    m = st.manifest["meta"]
    assert m["method"] == method_of(name) and m["norm"] == p.norm and m["eps"] == pytest.approx(p.eps)
    assert m["size"]["max_abs"] == size["max_abs"] and m["clean_source"]["path"] == str(clean.path)
    open_protected(st.path)  # the verification every consumer runs passes


@pytest.mark.parametrize("name", _params())
def test_same_seed_same_bytes(env, name, tmp_path):
    a = crafted(env, name)
    b = _craft(env, name, seed=0)
    sa = finalize(a, env["clean"], out=tmp_path / "a", grid=False)
    sb = finalize(b, env["clean"], out=tmp_path / "b", grid=False)
    assert sa.manifest["files"]["train_x.npy"]["sha256"] == sb.manifest["files"]["train_x.npy"]["sha256"]


@pytest.mark.parametrize("name", _params())
def test_granularity_indexing(env, name):
    c = crafted(env, name)
    clean = env["clean"]
    d, y = c.pert.delta.cpu(), torch.from_numpy(np.asarray(clean.train.y))
    if c.pert.granularity == "sample":
        assert d.shape[0] == N_TRAIN
        # indexed by sample: within a class the rows differ (a label-indexed δ would repeat one row)
        for k in torch.unique(y).tolist():
            rows = d[y == k]
            if rows.shape[0] >= 2:
                assert not all(torch.equal(rows[0], r) for r in rows[1:]), f"{name}: class {k} rows all equal"
    else:
        assert d.shape[0] == clean.num_classes
        # indexed by label: wherever no clipping happened, x'-x is the same for every sample of a class
        xp = finalize_apply(c, clean)
        diff = xp.astype(np.int16) - np.asarray(clean.train.x, dtype=np.int16)
        e = int(np.ceil(255 * c.pert.eps)) if c.pert.norm == "linf" else 255
        for k in np.unique(clean.train.y)[:3]:
            i, j = np.nonzero(np.asarray(clean.train.y) == k)[0][:2]
            xi, xj = np.asarray(clean.train.x[i], dtype=np.int16), np.asarray(clean.train.x[j], dtype=np.int16)
            safe = (xi >= e) & (xi <= 255 - e) & (xj >= e) & (xj <= 255 - e)
            np.testing.assert_array_equal(diff[i][safe], diff[j][safe])


def finalize_apply(c, clean):
    from ueperf.protections.base import apply
    return apply(np.asarray(clean.train.x), np.asarray(clean.train.y), c.pert)


@pytest.mark.parametrize("name", _params())
def test_partial_ratio_touches_exactly_the_subset(env, name, tmp_path):
    c = crafted(env, name)
    clean = env["clean"]
    st = finalize(c, clean, ratio=0.4, out=tmp_path / "p40", grid=False)
    idx = select_indices(N_TRAIN, 0.4, c.seed)
    np.testing.assert_array_equal(protected_indices(st), idx)
    assert st.manifest["meta"]["protected_count"] == len(idx) == 80
    changed = np.nonzero(per_sample_size(clean.train.x, st.train.x, "linf") > 0)[0]
    assert set(changed.tolist()) <= set(idx.tolist())            # nothing outside the subset
    assert len(changed) >= 0.9 * len(idx)                         # and the subset is protected
    outside = np.setdiff1d(np.arange(N_TRAIN), idx)
    np.testing.assert_array_equal(st.train.x[outside], clean.train.x[outside])  # byte-identical


# ───────────────────────────────────────────── random (the baseline) ──
def test_random_noise_distribution(env):
    c = crafted(env, "random")
    d = c.pert.delta
    eps = 8 / 255
    assert d.dtype == torch.float32 and d.abs().max() <= eps + 1e-7
    # U(-ε, ε): mean |δ| = ε/2, and it fills the ball (max close to ε)
    assert abs(d.abs().mean().item() - eps / 2) < 0.02 * eps and d.abs().max() > 0.99 * eps
    other = _craft(env, "random", seed=1).pert.delta
    assert not torch.equal(d, other)  # a different seed, different noise


def test_random_l2_and_classwise(env):
    clean = env["clean"]
    c = craft("random", clean, overrides=["norm=l2", "eps=0.5"], device="cpu", progress=False)
    norms = c.pert.delta.flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.full_like(norms, 0.5), rtol=1e-5)
    c = craft("random", clean, overrides=["granularity=class"], device="cpu", progress=False)
    assert c.pert.granularity == "class" and c.pert.delta.shape[0] == clean.num_classes


def test_random_bytes_do_not_depend_on_sharding(env):
    """Two 'ranks' crafting their shards (arange(N)[r::2]) give exactly the rows of one process."""
    from ueperf.protections.random_noise import RandomNoise
    clean = env["clean"]
    full = crafted(env, "random").pert.delta
    cfg = RandomNoise.Config(batch_size=64)  # several blocks, each spanning both shards
    one = RandomNoise().generate(_ctx(clean, cfg, 0, 1)).delta
    for r in range(2):
        rows = RandomNoise().generate(_ctx(clean, cfg, r, 2)).delta
        assert torch.equal(rows, one[r::2])
    assert not torch.equal(one, full)  # the block size is part of the byte stream (documented)


def _ctx(clean, cfg, rank, world):
    from ueperf.protections.base import ProtectContext
    x = torch.from_numpy(np.array(clean.train.x))
    shard = torch.arange(x.shape[0])[rank::world]
    return ProtectContext(x=x, y=torch.from_numpy(np.asarray(clean.train.y)), num_classes=10, classes=clean.classes,
                          cfg=cfg, seed=0, device=torch.device("cpu"), rank=rank, world_size=world,
                          shard=shard, progress=False, gather=lambda r: r)


# ───────────────────────────────────────────── measurement agree ──
def test_measure_is_exact_and_agrees_with_the_per_image_sizes(env):
    """The set-wide measure (torch, integer arithmetic) equals a plain numpy computation and the
    largest per-image size; the ℓ∞ bound is ceil(255 ε) grey levels."""
    assert size_limit("linf", 8 / 255, 3072) == 8 and size_limit("linf", 0.03, 3072) == 8
    assert size_limit("l2", 0.5, 3072) == pytest.approx(127.5 + 0.5 * 3072 ** 0.5) and size_limit("l0", 1, 3072) == 1
    clean = env["clean"]
    xp = finalize_apply(crafted(env, "random"), clean)
    d = np.abs(xp.astype(np.int64) - np.asarray(clean.train.x, dtype=np.int64))
    ref = {"max_abs": int(d.max()), "mean_abs": float(d.mean()), "max_l2": float(np.sqrt((d.reshape(len(d), -1) ** 2).sum(1)).max()),
           "max_l0": int((d.max(axis=3) > 0).reshape(len(d), -1).sum(1).max())}
    for norm in ("linf", "l2", "l0"):
        got = measure(clean.train.x, xp, norm)
        assert {k: got[k] for k in ref} == pytest.approx(ref, rel=1e-12)
        assert per_sample_size(clean.train.x, xp, norm).max() == pytest.approx(got["size"])


# ───────────────────────────────────────────── surrogate cache ──
def test_surrogate_is_cached(env, monkeypatch):
    from ueperf.protections import surrogate as S
    kw = dict(model="resnet18", width=0.125, epochs=1, seed=3, device="cpu", cache_dir=env["cache"],
              overrides=["train.batch_size=64"])
    m1, info1 = S.train_surrogate(env["clean"], **kw)
    assert info1["cached"] is False and (env["cache"] / "surrogates" / info1["key"][:16] / "model.pt").is_file()
    assert info1["clean_test_acc"] is not None and not m1.training
    assert not any(p.requires_grad for p in m1.parameters())

    def no_training(*a, **k):
        raise AssertionError("the second call must not retrain")
    monkeypatch.setattr("ueperf.engine.trainer.train", no_training)
    m2, info2 = S.train_surrogate(env["clean"], **kw)
    assert info2["cached"] is True and info2["key"] == info1["key"]
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    # the same request (device and progress aside) has the same key; anything that changes the weights does not
    same = S.surrogate_config(env["clean"], width=0.125, epochs=1, seed=3, overrides=["train.batch_size=64"], progress=True)
    other = S.surrogate_config(env["clean"], width=0.125, epochs=2, seed=3, overrides=["train.batch_size=64"])
    assert S.surrogate_key(same, env["clean"])[0] == info1["key"]
    assert S.surrogate_key(other, env["clean"])[0] != info1["key"]


def test_unknown_fast_keys_fail_by_name(monkeypatch):
    monkeypatch.setitem(FAST, "random", ["no_such_knob=1"])
    with pytest.raises(pytest.fail.Exception, match="no_such_knob"):
        fast_overrides("random")


@pytest.mark.parametrize("name", _params(variants=False))
def test_unknown_override_keys_are_refused(name):
    """The runner refuses a key the method's Config does not have, naming it (never drops it)."""
    from ueperf.errors import ConfigError
    from ueperf.protections.runner import resolve_config
    with pytest.raises(ConfigError, match="no_such_knob"):
        resolve_config(name, ["no_such_knob=1"])
