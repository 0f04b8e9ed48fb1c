"""The countermeasure contract, checked for EVERY registered countermeasure (parametrised over the
registry, so a new one is covered the moment its file registers it), like the protection contract:

- it has a summary, and every option it declares is a real config key;
- it trains one short epoch on synthetic images (and so do ``+`` combinations), and every trained
  epoch's record holds the keys it promises (``records``) next to the trainer's own;
- every option it declares refuses a nonsense value with a ConfigError that names the key.

No accuracy is asserted here: whether a countermeasure helps is measured in bench/effects.py.
"""
import dataclasses
import json

import pytest

from ueperf.config import RunConfig, all_keys
from ueperf.countermeasures import COUNTERMEASURES, build_hooks, parse
from ueperf.engine.trainer import train
from ueperf.errors import ConfigError
from ueperf.recipes import build

# One short epoch on 256 synthetic 16-px images in 4 classes: every hook point is exercised.
SHORT = ["data.synthetic_size=16", "data.synthetic_classes=4", "data.synthetic_train=256", "data.synthetic_test=64",
         "train.epochs=1", "train.batch_size=64", "train.threads=1", "train.progress=false", "acm.subset=64"]
# What a countermeasure needs on top to run that short (cheaper settings of its own knobs).
EXTRA = {"st_full": ["st.finetune_epochs=1"], "at": ["at.steps=2"],
         "ueraser": ["ueraser.repeats=2"], "ueraser_max": ["ueraser.repeats=2"]}
COMBOS = ["st_cg+cutout", "iss_jpeg+mixup", "nt_cg+at"]
TRAINER_RECORDS = {"epoch", "train_loss", "images_per_s", "train_time_s", "lr", "test_acc", "elapsed_s"}


def _settings(name):
    return [s for part in name.split("+") for s in EXTRA.get(part, [])]


def _field(key):
    """(dataclass field, current default) of a dotted RunConfig key."""
    node, *path, last = [RunConfig()] + key.split(".")
    for part in path:
        node = getattr(node, part)
    f = {f.name: f for f in dataclasses.fields(node)}[last]
    return f, getattr(node, last)


def nonsense(key):
    """A value no countermeasure can run with: -1 for numbers (negative counts, sizes, strengths,
    probabilities), -1 entries for tuples, an unknown word for choices."""
    _, value = _field(key)
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return "-1"
    if isinstance(value, tuple):
        return ",".join("-1" for _ in value)
    if isinstance(value, str):
        return "no-such-choice"
    return None


def test_every_countermeasure_declares_itself():
    keys = set(all_keys(RunConfig()))
    for name in COUNTERMEASURES.names():
        cm = COUNTERMEASURES.get(name)
        assert cm.name == name and cm.summary, name
        assert set(cm.options) <= keys, f"{name} declares options that are not config keys: {set(cm.options) - keys}"
        assert all(isinstance(r, str) and r for r in cm.records), name


@pytest.mark.parametrize("name", COUNTERMEASURES.names() + COMBOS)
def test_one_short_epoch_writes_the_promised_records(name, tmp_path):
    cfg = build("synthetic_smoke", [*SHORT, *_settings(name), f"data.cache_dir={tmp_path / 'cache'}",
                                    f"out_dir={tmp_path}", "name=run"], countermeasure=name)
    summary = train(cfg, hooks=build_hooks(cfg))
    recs = [json.loads(line) for line in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    assert len(recs) == cfg.train.epochs and summary["epochs"] == cfg.train.epochs
    promised = set().union(*(c.records for c in parse(name)))
    for r in recs:
        missing = (TRAINER_RECORDS | promised) - set(r)
        assert not missing, f"{name}: epoch {r['epoch']} record lacks {missing}"
        assert 0.0 <= r["test_acc"] <= 1.0


def _option_cases():
    out = []
    for name in COUNTERMEASURES.names():
        for key in COUNTERMEASURES.get(name).options:
            if nonsense(key) is not None:
                out.append(pytest.param(name, key, id=f"{name}-{key}"))
    return out


@pytest.mark.parametrize("name,key", _option_cases())
def test_nonsense_options_are_refused_by_name(name, key):
    cfg = build("synthetic_smoke", [*_settings(name), f"{key}={nonsense(key)}"], countermeasure=name)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_hooks(cfg)


def test_combinations_are_checked_as_a_whole():
    with pytest.raises(ConfigError, match="twice"):
        parse("cutout+cutout")
    with pytest.raises(ConfigError, match="replace the training loss"):
        build_hooks(build("synthetic_smoke", countermeasure="mixup+cutmix"))
    with pytest.raises(ConfigError, match="unknown countermeasure 'cutot'. Did you mean 'cutout'"):
        parse("st+cutot")
