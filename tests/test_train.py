"""The trainer end to end: it learns, it resumes bit-for-bit, it stops on NaN with a message
naming epoch and step, and it writes the run folder the issue promises."""
import json

import pytest
import torch

from ueperf.config import apply_overrides
from ueperf.engine.hooks import TrainHook
from ueperf.engine.trainer import Trainer, train
from ueperf.errors import ConfigError, TrainingDiverged, UeperfError
from ueperf.recipes import build

from margins import GATE_SEED


def _cfg(tmp_path, name, recipe="demo", **sets):
    cfg = build(recipe)
    base = {"out_dir": str(tmp_path), "name": name, "train.device": "cpu", "train.progress": "false",
            "data.cache_dir": str(tmp_path / "cache")}
    base.update(sets)
    apply_overrides(cfg, [f"{k}={v}" for k, v in base.items()])
    return cfg


@pytest.mark.margin
def test_training_learns_a_learnable_task(tmp_path, margin):
    """The one training loop learns: an eighth-width ResNet-18, 3 epochs on 1,024 synthetic 16-px
    images of 4 classes (chance 25 %), ends far above chance on their test images and with a
    lower training loss than after its first epoch. (Accuracy on real images, over seeds, is the
    clean arm of bench/effects.py.) Measured over seeds 0-2 × threads 1-2: test accuracy 1.0 every time
    (spread 0), loss ratio 0.006-0.028 (spread 0.022 against a margin of 0.77)."""
    cfg = _cfg(tmp_path, "learn", recipe="synthetic_smoke", **{
        "data.synthetic_size": 16, "data.synthetic_classes": 4, "data.synthetic_train": 1024, "train.epochs": 3,
        "train.seed": GATE_SEED})
    s = train(cfg)
    margin.above("test accuracy", s["final_test_acc"], 0.6)
    recs = [json.loads(line) for line in (tmp_path / "learn" / "records.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2, 3]
    margin.below("last / first epoch train loss", recs[-1]["train_loss"] / recs[0]["train_loss"], 0.8)


def test_run_folder_contents(tmp_path):
    cfg = _cfg(tmp_path, "smoke", recipe="synthetic_smoke")
    s = train(cfg)
    d = tmp_path / "smoke"
    for f in ("config.json", "records.jsonl", "checkpoint.pt", "summary.json", "curves.png"):
        assert (d / f).exists(), f
    rec = json.loads((d / "records.jsonl").read_text().splitlines()[-1])
    for k in ("epoch", "train_loss", "train_acc", "test_acc", "lr", "images_per_s", "elapsed_s"):
        assert k in rec, k
    assert len(rec["lr"]) == 10  # one learning rate per ResNet-18 layer group
    saved = json.loads((d / "config.json").read_text())
    assert saved["config"]["train"]["epochs"] == 2 and saved["environment"]["torch"] == torch.__version__
    assert json.loads((d / "summary.json").read_text())["final_test_acc"] == s["final_test_acc"]
    # a second fresh run into the same folder is refused instead of overwriting it
    with pytest.raises(UeperfError, match="--resume"):
        train(_cfg(tmp_path, "smoke", recipe="synthetic_smoke"))


class Crash(TrainHook):
    """Simulates a crash in the middle of epoch `at` (0-based)."""

    def __init__(self, at):
        self.at = at

    def on_batch(self, trainer, x, y, idx):
        if trainer.epoch == self.at:
            raise KeyboardInterrupt
        return x, y


def _weights(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["trainer"]["model"]


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_resume_equals_uninterrupted_bitwise(tmp_path, optimizer):
    sets = {"train.epochs": 3, "train.deterministic": "true", "train.threads": 1, "augment.cg": "true",
            "optim.optimizer": optimizer}
    if optimizer == "adamw":
        sets.update({"optim.lr": 1e-3, "optim.weight_decay": 0.05, "optim.wd_exclude": "timm"})
    full = train(_cfg(tmp_path, "full", recipe="synthetic_smoke", **sets))
    cfg = _cfg(tmp_path, "cut", recipe="synthetic_smoke", **sets)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, hooks=[Crash(at=2)])
    assert len((tmp_path / "cut" / "records.jsonl").read_text().splitlines()) == 2
    resumed = train(_cfg(tmp_path, "cut", recipe="synthetic_smoke", **sets), resume=True)
    assert resumed["final_test_acc"] == full["final_test_acc"]
    wa, wb = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ra = [json.loads(l) for l in (tmp_path / "full" / "records.jsonl").read_text().splitlines()]
    rb = [json.loads(l) for l in (tmp_path / "cut" / "records.jsonl").read_text().splitlines()]
    strip = lambda r: {k: v for k, v in r.items() if k not in ("images_per_s", "train_time_s", "elapsed_s")}
    assert [strip(r) for r in ra] == [strip(r) for r in rb]


def test_adamw_is_torchs_with_decoupled_decay_per_group(tmp_path):
    """optim.optimizer=adamw: torch AdamW with β₁ = optim.momentum, β₂ = optim.beta2, ε = optim.eps;
    a group's own weight decay (wd_exclude=timm: 0 on biases and norms) is kept; SGD-only and
    out-of-range values are refused by name."""
    cfg = _cfg(tmp_path, "adamw", recipe="synthetic_smoke", **{
        "optim.optimizer": "adamw", "optim.lr": 1e-3, "optim.momentum": 0.8, "optim.beta2": 0.99, "optim.eps": 1e-6,
        "optim.weight_decay": 0.05, "optim.wd_exclude": "timm"})
    tr = Trainer(cfg).setup()
    try:
        opt = tr.wrapped.optimizer
        assert isinstance(opt, torch.optim.AdamW)
        assert opt.defaults["betas"] == (0.8, 0.99) and opt.defaults["eps"] == 1e-6
        decays = {g["name"]: g["weight_decay"] for g in opt.param_groups}
        assert decays["head"] == 0.05 and decays["head.no_decay"] == 0.0
    finally:
        tr.close()
    for sets, match in [({"optim.optimizer": "adam"}, "optim.optimizer"),
                        ({"optim.optimizer": "adamw", "optim.nesterov": "true"}, "optim.nesterov"),
                        ({"optim.beta2": 1.0}, "optim.beta2"), ({"optim.eps": 0}, "optim.eps")]:
        with pytest.raises(ConfigError, match=match):
            Trainer(_cfg(tmp_path, "bad", recipe="synthetic_smoke", **sets)).setup()


def test_resume_refuses_a_different_config(tmp_path):
    train(_cfg(tmp_path, "r", recipe="synthetic_smoke", **{"train.epochs": 1}))
    with pytest.raises(ConfigError, match="optim.lr"):
        train(_cfg(tmp_path, "r", recipe="synthetic_smoke", **{"train.epochs": 1, "optim.lr": 0.5}), resume=True)


def test_nan_loss_stops_naming_epoch_and_step(tmp_path):
    class Poison(TrainHook):
        def on_batch(self, trainer, x, y, idx):
            if trainer.epoch == 1:
                x = x * float("nan")
            return x, y

    cfg = _cfg(tmp_path, "nan", recipe="synthetic_smoke", **{"train.epochs": 2, "train.log_every": 3})
    with pytest.raises(TrainingDiverged, match=r"epoch 2, step 1 "):
        train(cfg, hooks=[Poison()])


def test_group_lr_multipliers_and_validation(tmp_path):
    mult = ",".join(["0"] + ["1"] * 9)
    cfg = _cfg(tmp_path, "glr", recipe="synthetic_smoke", **{"optim.group_lr": mult, "train.epochs": 1})
    tr = Trainer(cfg).setup()
    stem_before = {k: v.clone() for k, v in tr.model.layer_groups()[0][1].state_dict().items() if "weight" in k}
    head_before = tr.model.head.weight.detach().clone()
    tr.fit()
    stem_after = tr.model.layer_groups()[0][1].state_dict()
    for k, v in stem_before.items():
        if "num_batches" not in k:
            assert torch.equal(v, stem_after[k]), k   # lr multiplier 0 → stem weights unchanged
    assert not torch.equal(head_before, tr.model.head.weight)
    tr.close()
    bad = _cfg(tmp_path, "glr2", recipe="synthetic_smoke", **{"optim.group_lr": "1,1"})
    with pytest.raises(ConfigError, match="10 layer groups"):
        Trainer(bad).setup()


def test_grad_clip_limits_the_update(tmp_path):
    """optim.grad_clip bounds the global gradient norm: a tiny clip makes a tiny first step."""
    def first_step_change(clip, name):
        cfg = _cfg(tmp_path, name, recipe="synthetic_smoke", **{"optim.grad_clip": clip, "optim.momentum": 0,
                                                                "optim.weight_decay": 0, "train.epochs": 1})
        tr = Trainer(cfg).setup()
        before = [p.detach().clone() for p in tr.model.parameters()]
        xb, yb, ib = next(iter(tr.train_loader))
        tr.set_lr(0.0)
        loss = torch.nn.functional.cross_entropy(tr.runner(tr.augmenter(xb)), yb)
        tr.wrapped.backward_step(loss, cfg.optim.grad_clip)
        moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(tr.model.parameters(), before)]).norm().item()
        tr.close()
        return moved

    lr = build("synthetic_smoke").optim.lr
    clipped = first_step_change(1e-3, "clip")
    assert clipped == pytest.approx(lr * 1e-3, rel=1e-3)   # step = lr · clip · g/‖g‖
    assert first_step_change(0.0, "noclip") > 10 * clipped
