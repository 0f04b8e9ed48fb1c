"""The standard (natural) training recipe of spec §3.0, per dataset, and the embedded demo."""
from __future__ import annotations

from ..config import RunConfig
from . import RECIPES


@RECIPES.register("demo")
def demo() -> RunConfig:
    """The embedded default: a quarter-width ResNet-18 on the CIFAR-10 sample shipped in the
    package (2,000 train / 500 test real images). Runs on 2 CPU cores in about 1.5 minutes; needs
    no download and no GPU."""
    cfg = RunConfig()
    cfg.data.dataset = "embedded"
    cfg.model.name = "resnet18"
    cfg.model.width = 0.25            # [ours] 1/16 of the FLOPs, so the demo fits a CPU budget
    cfg.train.epochs = 12
    cfg.train.batch_size = 128        # [spec §3.0]
    cfg.optim.lr = 0.1                # [spec §3.0]
    return cfg


def _nt(dataset: str, epochs: int = 60) -> RunConfig:
    """spec §3.0: SGD 0.1, momentum 0.9, wd 5e-4, cosine to 0, batch 128, crop(4)+flip, no
    normalisation, ResNet-18 (CIFAR stem at 32 px)."""
    cfg = RunConfig()
    cfg.data.dataset = dataset
    cfg.model.name = "resnet18"
    cfg.train.epochs = epochs
    return cfg


@RECIPES.register("cifar10_resnet18")
def cifar10_resnet18() -> RunConfig:
    """The standard natural-training recipe on CIFAR-10 (SGD lr 0.1, cosine schedule, crop + flip)."""
    return _nt("cifar10")


@RECIPES.register("cifar100_resnet18")
def cifar100_resnet18() -> RunConfig:
    """The standard natural-training recipe on CIFAR-100 (SGD lr 0.1, cosine schedule, crop + flip)."""
    return _nt("cifar100")


@RECIPES.register("svhn_resnet18")
def svhn_resnet18() -> RunConfig:
    """The standard natural-training recipe on SVHN (SGD lr 0.1, cosine schedule, crop + flip).

    The values of spec §3.0 unchanged, as for CIFAR [ours]: the spec gives no SVHN-specific
    training, and one recipe across data sets keeps results comparable. Some benchmarks train
    SVHN's ResNet-18 with lr 0.01 (``--set optim.lr=0.01``), and a horizontal flip mirrors digits
    (``--set augment.flip=false``); neither is the default here. Data: the official
    train_32x32.mat / test_32x32.mat in data.root (73,257 / 26,032 images)."""
    return _nt("svhn")


@RECIPES.register("tinyimagenet100_resnet18")
def tinyimagenet100_resnet18() -> RunConfig:
    """Tiny-ImageNet-100 (64 px ImageFolder at data.root) with ResNet-18.

    ImageNet stem, crop padding 8 (= 4 px at 32 px
    scaled with the image) [ours]; 100 epochs and wd 5e-5 as EM's ImageNet-mini config [code]."""
    cfg = _nt("imagefolder", epochs=100)
    cfg.data.root = "~/.cache/ueperf/sources/tiny-imagenet-100"
    cfg.augment.crop_padding = 8
    cfg.optim.weight_decay = 5e-5
    return cfg


@RECIPES.register("synthetic_smoke")
def synthetic_smoke() -> RunConfig:
    """A seconds-long smoke run on procedurally generated images."""
    cfg = RunConfig()
    cfg.data.dataset = "synthetic"
    cfg.data.synthetic_train = 512
    cfg.data.synthetic_test = 128
    cfg.model.width = 0.125
    cfg.train.epochs = 2
    cfg.train.batch_size = 64
    return cfg
