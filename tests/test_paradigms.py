"""Training paradigms (spec §5) and pretrained priors: freezing is exact (frozen parameters and
BN statistics do not change, trainable ones do), the body/head learning rates follow the spec,
priors are cached by config (a matching prior is reused, a different config builds a new one),
and a prior that does not fit the model is refused with a clear message."""
from __future__ import annotations

import json

import pytest
import torch

from ueperf.countermeasures import build_hooks
from ueperf.engine.trainer import Trainer
from ueperf.errors import ConfigError, ModelError
from ueperf.prior import build_prior
from ueperf.recipes import build

SMOKE = ["train.progress=false", "train.threads=1", "data.synthetic_train=256", "data.synthetic_test=64"]


@pytest.fixture(scope="module")
def prior(tmp_path_factory):
    d = tmp_path_factory.mktemp("priors")
    cfg = build("synthetic_smoke", SMOKE + [f"data.cache_dir={d}", "train.epochs=1", "data.synthetic_classes=6"])
    return build_prior(cfg, progress=False), d


def _trainer(tmp_path, paradigm, prior_path, *sets, cm="nt"):
    cfg = build("synthetic_smoke", SMOKE + [f"out_dir={tmp_path}", f"name={paradigm}", "train.epochs=1",
                                            f"model.pretrained={prior_path}", *sets],
                countermeasure=cm, paradigm=paradigm)
    return Trainer(cfg, hooks=build_hooks(cfg)).setup()


def test_prior_is_cached_by_config(prior, monkeypatch):
    path, cache = prior
    meta = json.loads((path.parent / "prior.json").read_text())
    assert path.is_file() and meta["key"] in str(path.parent) and meta["epochs"] == 1
    monkeypatch.setattr(Trainer, "fit", lambda self: pytest.fail("a matching prior must be reused, not retrained"))
    again = build_prior(build("synthetic_smoke", SMOKE + [f"data.cache_dir={cache}", "train.epochs=1",
                                                         "data.synthetic_classes=6", "train.progress=true"]),
                        progress=False)
    assert again == path                                   # progress/threads do not change the key
    monkeypatch.undo()
    other = build_prior(build("synthetic_smoke", SMOKE + [f"data.cache_dir={cache}", "train.epochs=1",
                                                         "data.synthetic_classes=6", "optim.lr=0.05"]), progress=False)
    assert other != path and other.is_file()               # a different config is a different prior


@pytest.mark.parametrize("paradigm,frozen_stages", [("lp", {0, 1, 2, 3, 4}), ("pf1", {0, 1}), ("pf2", {0, 1, 2}),
                                                    ("pf3", {0, 1, 2, 3}), ("ft", set())])
def test_freezing_is_exact_and_lrs_follow_the_spec(prior, tmp_path, paradigm, frozen_stages):
    tr = _trainer(tmp_path, paradigm, prior[0])
    model = tr.model
    stages = model.group_stages()
    groups = model.layer_groups()
    before = [{k: v.clone() for k, v in m.state_dict().items()} for _, m in groups]
    loaded = torch.load(prior[0], weights_only=True)
    stem_key = next(k for k in loaded if k.endswith("weight") and loaded[k].dim() == 4)
    assert torch.equal(model.state_dict()[stem_key].float(), loaded[stem_key].float())   # the prior is loaded
    summary = tr.fit()
    pre = summary["pretrained"]          # the summary says what was loaded (the console said it too)
    assert pre["path"] == str(prior[0]) and pre["loaded"] == len(loaded) - 2 * (not pre["head_loaded"])
    for i, (_, m) in enumerate(groups):
        after = m.state_dict()
        changed = any(not torch.equal(before[i][k], after[k]) for k in after if "num_batches" not in k)
        assert changed == (stages[i] not in frozen_stages), (paradigm, i, stages[i])
    head_stage = max(stages)
    lr_head = [g["lr"] for g in tr.param_groups if stages[g["index"]] == head_stage]
    lr_body = [g["lr"] for g in tr.param_groups if stages[g["index"]] != head_stage]
    assert len(tr.param_groups) == len(groups) - len([s for s in stages if s in frozen_stages])
    if lr_body:  # body 0.01 vs head 0.1 at the same point of the schedule
        assert all(b == pytest.approx(0.1 * lr_head[0]) for b in lr_body)
    assert tr.cfg.train.epochs == 1 and tr.records[0]["paradigm"] == paradigm
    tr.close()


def test_paradigm_defaults_and_errors(prior):
    cfg = build("demo", [f"model.pretrained={prior[0]}"], paradigm="pf2")
    assert cfg.train.epochs == 30 and cfg.optim.lr == 0.1
    assert build("demo", [f"model.pretrained={prior[0]}", "train.epochs=4"], paradigm="ft").train.epochs == 4
    with pytest.raises(ConfigError, match="model.pretrained"):
        build_hooks(build("demo", [], paradigm="lp"))
    with pytest.raises(ConfigError, match="from scratch"):
        build_hooks(build("demo", [f"model.pretrained={prior[0]}"], paradigm="fs"))
    for bad in ("pf0", "pfx", "pf-1"):
        with pytest.raises(ConfigError, match="unknown paradigm"):
            build("demo", [], paradigm=bad)


def test_pf_k_that_would_freeze_the_head_is_refused_on_the_model(prior, tmp_path):
    """pf<k> is any k >= 1 (transformers have 12+ blocks); on a ResNet-18 (stages 1-4) pf9 is
    refused when the model is built, naming the values that fit."""
    with pytest.raises(ConfigError, match=r"pf9 would freeze the head .*use pf1\.\.pf4"):
        _trainer(tmp_path, "pf9", prior[0])


def test_a_prior_of_another_architecture_is_refused(prior, tmp_path):
    with pytest.raises(ModelError):
        _trainer(tmp_path, "ft", prior[0], "model.name=vgg16")
    with pytest.raises(ModelError):
        _trainer(tmp_path, "lp", prior[0], "model.width=0.25")


def test_st_under_partial_freeze_acts_on_trainable_groups_only(prior, tmp_path):
    tr = _trainer(tmp_path, "pf2", prior[0], "st.trigger=absolute", "st.tau=1e-9", "st.warmup_epochs=0", "st.warmup_steps=0",
                  "st.check_every=1000000", "acm.subset=60", cm="st")
    tr.fit()
    n_train = len(tr.param_groups)
    assert n_train < len(tr.model.layer_groups())
    assert len(tr.records[0]["st_v"]) == n_train and tr.records[0]["rejected"]
    assert tr.records[0]["st_v"][0] == 0.5                 # the shallowest TRAINABLE group is damped first
    tr.close()
