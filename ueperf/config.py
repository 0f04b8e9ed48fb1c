"""Typed, nested run configuration with dotted ``--set a.b=c`` overrides.

Each component owns its dataclass; :class:`RunConfig` nests them. Recipes (``ueperf.recipes``)
are functions returning a complete ``RunConfig``; the CLI applies ``--set`` overrides, which are
type-checked against the dataclass field types (an unknown key or a value of the wrong type is a
:class:`~ueperf.errors.ConfigError` that names the key and the expected type).
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .errors import ConfigError
from .files import default_cache_dir


# ───────────────────────────────────────────── components ──
@dataclass
class DataConfig:
    dataset: str = "embedded"       # registered source name (cifar10, cifar100, svhn, imagefolder, synthetic, embedded) or a store folder
    root: str = ""                  # where the source lives: folder or archive (.tar.gz); "" = default for the source
    cache_dir: str = field(default_factory=default_cache_dir)  # where uint8 stores are written ($UEPERF_CACHE_DIR or ~/.cache/ueperf)
    download: bool = False          # download the source if missing (needs network)
    image_size: int = 0             # resize to this many pixels per side at store build (0 = native)
    train_limit: int = 0            # keep only the first N training images (0 = all)
    test_limit: int = 0             # keep only the first N test images (0 = all)
    classes: str = ""               # keep only these classes ("" = all): "A:B" = labels A..B-1 (e.g. 0:50 and
                                    # 50:100, the two halves of tiny-imagenet-100) or comma-separated class
                                    # names; labels are renumbered 0..k-1 in that order (before the limits)
    test_holdout: int = 0           # clean test images held out for hyperparameter selection and
                                    # excluded from the reported test set (spec §4.7: 20)
    loader: str = "auto"            # auto | gpu | cpu | ffcv  (auto = device-resident when it fits)
    synthetic_classes: int = 10     # synthetic source: number of classes
    synthetic_train: int = 1000     # synthetic source: training images
    synthetic_test: int = 200       # synthetic source: test images
    synthetic_size: int = 32        # synthetic source: pixels per side


@dataclass
class ModelConfig:
    name: str = "resnet18"          # registered model name
    width: float = 1.0              # channel-width multiplier (1.0 = the published model)
    stem: str = "auto"              # auto | cifar | imagenet  (auto: cifar for <= 32 px)
    pretrained: str = ""            # local torchvision-format state_dict file ("" = random init)
    dropout: float = 0.0            # dropout probability before the head (spec §3.4 baseline: 0.5)


@dataclass
class AugmentConfig:
    crop_padding: int = 4           # random crop with zero padding, pixels (0 = off) [spec §3.0]
    flip: bool = True               # random horizontal flip, p = 0.5 [spec §3.0]
    cg: bool = False                # CG augmentation: colour jitter + random grayscale [spec §3.4]
    jitter_p: float = 0.8           # CG: probability of colour jitter [paper (a)]
    jitter: Tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue [ours]
    gray_p: float = 0.2             # CG: probability of grayscale [paper (a)]
    normalize: bool = False         # subtract mean / divide std (EM/REM feed [0,1] un-normalised [code])
    mean: Tuple[float, float, float] = (0.4914, 0.4822, 0.4465)  # normalize: per-channel RGB mean subtracted (CIFAR-10 train set)
    std: Tuple[float, float, float] = (0.2470, 0.2435, 0.2616)   # normalize: per-channel RGB std divided by (CIFAR-10 train set)


@dataclass
class OptimConfig:
    optimizer: str = "sgd"          # sgd (torch SGD, coupled L2 weight decay) | adamw (torch AdamW, decoupled weight
                                    # decay; momentum → β₁, beta2 → β₂: DeiT / timm's choice for transformers)
    lr: float = 0.1                 # base learning rate [spec §3.0]
    momentum: float = 0.9           # SGD momentum coefficient (adamw: β₁)
    weight_decay: float = 5e-4      # SGD weight decay (L2 penalty coefficient)
    nesterov: bool = False          # use Nesterov momentum
    schedule: str = "cosine"        # learning-rate schedule over the run: cosine (to 0) | constant | multistep | linear
                                    # (1 at the end of the warm-up, straight down to 0 at the end of the run)
    milestones: Tuple[float, ...] = (0.5, 0.75)  # multistep: fractions of the run
    gamma: float = 0.1              # multistep: decay factor
    warmup_epochs: float = 0.0      # linear warm-up length, epochs
    warmup_start: float = 0.0       # the warm-up starts at this fraction of the lr (0 = from 0; airbench: 0.2)
    group_lr: Tuple[float, ...] = ()  # per-layer-group multipliers, shallow → deep (() = all 1)
    grad_clip: float = 0.0          # clip global grad norm to this (0 = off; EM config uses 5.0)
    beta2: float = 0.999            # adamw: β₂ (the second-moment decay)
    eps: float = 1e-8               # adamw: ε added to the denominator
    wd_exclude: str = "none"        # none (weight decay on every parameter) | timm (none on biases, norms and
                                    # a transformer's pos_embed / cls_token, as timm's optimiser factory does)


@dataclass
class TrainConfig:
    epochs: int = 60                # training epochs (passes over the training set) [spec §3.0]
    batch_size: int = 128           # global batch size (split across ranks) [spec §3.0]
    eval_batch_size: int = 1024     # global batch size of clean test evaluation
    precision: str = "auto"         # auto | bf16 | fp32  (auto: bf16 autocast on CUDA, fp32 on CPU)
    channels_last: bool = True      # keep weights and inputs channels-last (NHWC): faster convolutions on GPUs
    compile: bool = False           # torch.compile the model
    seed: int = 0                   # seed of the initial weights, data order and augmentation draws
    deterministic: bool = False     # deterministic algorithms (bit-exact resume on CPU)
    eval_every: int = 1             # evaluate on the clean test set every N epochs (last epoch always)
    checkpoint_every: int = 1       # save a resumable checkpoint every N epochs
    progress: bool = True           # show a progress bar
    log_every: int = 50             # steps between loss checks (NaN/inf) and progress-bar updates
    device: str = "auto"            # device to train on: auto | cpu | cuda | cuda:N (auto: CUDA when available)
    threads: int = 0                # torch CPU threads (0 = leave torch's default)


@dataclass
class ParallelConfig:
    backend: str = "auto"           # auto | none | ddp | deepspeed  (auto: ddp under torchrun, else none)
    zero_stage: int = 1             # DeepSpeed ZeRO stage (1 or 2)
    dist_backend: str = "auto"      # torch.distributed backend: auto | nccl | gloo (auto: nccl on CUDA, else gloo)


# ───────────────────────────────────────────── countermeasures ──
@dataclass
class ACMConfig:
    """Activation Cluster Measurement (spec §4.2) on a fixed subset D_v of the training set."""
    backend: str = "torch"          # tsne (the reference) | torch (on the device) | faiss
    reduce: str = "pca2"            # torch/faiss backends: pca2 (PCA to 2-D) | raw (all D dims)
    variant: str = "db_inverse"     # ACM formula: db_inverse | radius_margin (spec §4.2)
    subset: int = 1000              # |D_v|, images, split evenly over the ACM classes [paper: 1000 CIFAR-10]
    classes: int = 10               # K': the first K' classes are measured (0 = all) [paper]
    perplexity: float = 30.0        # tsne backend [spec §4.2]
    batch_size: int = 1024          # feature-extraction batch, images


@dataclass
class STConfig:
    """Progressive Staged Training (spec §4.3-4.5, ueperf.countermeasures.st)."""
    trigger: str = "jump"           # jump: ACM > jump · median of the last `window` epochs of accepted ACMs | rise: ACM >
                                    # jump · lowest accepted ACM | absolute: ACM > tau (spec) | never: record only [ours §4.9]
    tau: float = 2.0                # absolute threshold (provisional; calibrate, spec §4.7) [ours]
    jump: float = 1.5               # relative triggers: ratio that counts as shortcut learning [ours, measured]
    window: float = 1.0             # jump trigger: epochs of accepted checks whose median ACM is the reference [ours]
    alpha: float = 0.5              # adjustment hyperparameter α (spec §4.3) [ours]
    multiplier: str = "geometric"   # geometric: v_l = α^max(0, c-l+1) | linear: clip(1 - α·c·(L-l+1)/L, 0, 1)
                                    # | exponential: α^(c·(L-l+1)/L), deep groups damped too [ours]
    v_min: float = 1e-3             # multipliers below this are 0 (group frozen) [ours]
    warmup_epochs: float = 1.0      # checks before this (fractional) epoch ... [ours §4.9]
    warmup_steps: int = 50          # ... and before this many optimiser steps are accepted untested [ours, measured]
    check_every: int = 0            # optimiser steps between ACM checks (+ every epoch's end); 0 = auto:
                                    # >= 4 per epoch, <= 50 steps apart [ours §4.9]
    rollback: int = 0               # a trigger restores: 0 = the latest accepted check with ACM <= √jump · reference
                                    # (before the rise), k >= 1 = the accepted check k checks back [ours]
    base_lr: str = "recipe"         # recipe: the lr NT trains with (optim.lr) | paper: 0.1 (st), 0.2 (st_cg,
                                    # st_full) — tuned for 200 epochs, hurts short runs (measured) [ours]
    lr_scale: str = "none"          # none: the base lr as it is | batch: × batch/128 [ours]
    finetune_epochs: int = 30       # st_full step 2: fine-tune all layers with CG, epochs [ours §4.6]
    budget: str = "extra"           # st_full: extra = train.epochs of ST-CG, then the fine-tune epochs (the
                                    # paper's 200 + 30) | matched = train.epochs counts both [ours]
    finetune_lr: float = 0.01       # st_full step 2 base lr (cosine) [ours §4.6]


@dataclass
class ATConfig:
    """PGD adversarial training (spec §3.1; seed (a) setting)."""
    eps: float = 4 / 255            # ρ_a, [0,1] pixel units [ours, inferred §3.1]
    alpha: float = 0.8 / 255        # PGD step [spec §3.1]
    steps: int = 10                 # PGD iterations [spec §3.1]
    norm: str = "linf"              # norm of the adversarial-training ball: linf | l2


@dataclass
class UEraserConfig:
    """UEraser (spec §3.2): plasma brightness/contrast, channel shuffle, TrivialAugment, max-loss."""
    repeats: int = 5                # R: augmented copies per image, loss = max over copies [code]
    repeat_epochs: int = 60         # epochs with R > 1 (standard); ueraser_max: all; lite: R = 1 [code]
    plasma_p: float = 0.5           # probability of each plasma op [code]
    shuffle_p: float = 0.5          # probability of channel shuffle [code]
    jpeg: str = "none"              # JPEG variant: none | append (after U, quality jpeg_quality: UEraser repo)
                                    # | prepend (before U, quality U{10..100}: APBench) [code]
    jpeg_quality: int = 10          # quality of the appended JPEG [code: lafeat/ueraser]


@dataclass
class ISSConfig:
    """Image shortcut squeezing (spec §3.3), applied once to the training images."""
    jpeg_quality: int = 10          # iss_jpeg quality [code]
    bits: int = 2                   # iss_bdr bits per channel [code: APBench]


@dataclass
class RegularizeConfig:
    """Counter-overfitting augmentations (spec §3.4)."""
    cutout_size: int = 16           # cutout square side, pixels (CIFAR) [ours: DeVries & Taylor]
    mixup_alpha: float = 1.0        # mixup Beta(α, α) [ours: Zhang et al.]
    cutmix_alpha: float = 1.0       # cutmix Beta(α, α) [ours: Yun et al.]
    cutmix_p: float = 0.5           # probability a batch is cut-mixed [code: clovaai/CutMix-PyTorch, CIFAR command]
    randaugment_n: int = 2          # RandAugment ops per image [ours]
    randaugment_m: int = 9          # RandAugment magnitude (0-30) [ours]
    blur_sigma: float = 1.0         # Gaussian blur σ, pixels, train images [ours]
    blur_kernel: int = 3            # Gaussian blur kernel side, pixels (odd) [ours]


@dataclass
class FastConfig:
    """The fast-training techniques of airbench (Jordan 2024, arXiv 2404.00498; ``ueperf.engine.fast``).
    Every switch is off by default, so no other recipe changes; the fast_victim recipe sets the
    paper's choice of each. The sub-settings hold the paper's values and act only with their switch."""
    whiten: bool = False            # fit the model's patch-whitening stem (fastnet) to the training images' 2x2 patch
                                    # covariance at train start and freeze its weights [paper]
    whiten_images: int = 5000       # whiten: training images (a seeded sample) the covariance is measured on (0 = all) [ours]
    whiten_eps: float = 5e-4        # whiten: added to every eigenvalue before 1/sqrt, so flat directions are not blown up [ours]
    whiten_bias_epochs: float = 3.0  # whiten: the whitening bias trains for this many epochs, then stays [paper]
    identity_init: bool = False     # partial identity (Dirac) init: the first C_in filters of every later conv pass
                                    # their input through [paper]
    bn_momentum: float = 0.0        # BatchNorm running-statistics momentum in PyTorch's convention (running = (1-m) *
                                    # running + m * batch); 0 = each model's own (0.1); paper: 0.6 in its convention = 0.4
    bn_bias_lr: float = 1.0         # lr multiplier of BatchNorm biases, their weight decay divided by it (1 = off) [paper: 64]
    label_smoothing: float = 0.0    # label smoothing of the training cross-entropy (0 = off) [paper: 0.2]
    lookahead: bool = False         # Lookahead on weights and BN statistics: every lookahead_every steps
                                    # slow = d * slow + (1 - d) * fast, fast = slow; the end of training keeps slow [paper]
    lookahead_every: int = 5        # lookahead: optimiser steps between syncs [paper]
    lookahead_decay: float = 0.95   # lookahead: d = decay^every * (step / total steps)^3 [paper]
    tta: str = "none"               # test-time augmentation of every evaluation: none | flip (logits of x and of its
                                    # mirror averaged) | multicrop (the paper's 6 views: flips x 1-px shifts)


@dataclass
class RunConfig:
    name: str = ""                  # run name ("" = recipe name)
    out_dir: str = "runs"           # runs are written to out_dir/name
    recipe: str = ""                # recipe this config came from (informational)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    countermeasure: str = "nt"      # registered countermeasure(s), '+'-joined (e.g. st_cg+cutout); nt = plain training
    paradigm: str = "fs"            # training paradigm (spec §5): fs | lp | pf1 | pf2 | pf3 | ft (all but fs need model.pretrained)
    acm: ACMConfig = field(default_factory=ACMConfig)
    st: STConfig = field(default_factory=STConfig)
    at: ATConfig = field(default_factory=ATConfig)
    ueraser: UEraserConfig = field(default_factory=UEraserConfig)
    iss: ISSConfig = field(default_factory=ISSConfig)
    reg: RegularizeConfig = field(default_factory=RegularizeConfig)
    fast: FastConfig = field(default_factory=FastConfig)


# ───────────────────────────────────────────── overrides ──
def _coerce(value: str, tp: Any, key: str) -> Any:
    """Parse the string ``value`` as type ``tp`` (bool/int/float/str/tuple/Optional)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        non_none = [a for a in args if a is not type(None)]
        if value.lower() in ("none", "null", ""):
            return None
        return _coerce(value, non_none[0], key)
    if tp is bool:
        low = value.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--set {key}={value!r}: expected a boolean (true/false)")
    if tp is int:
        try:
            f = float(value)
        except ValueError:
            raise ConfigError(f"--set {key}={value!r}: expected an integer") from None
        if not f.is_integer():
            raise ConfigError(f"--set {key}={value!r}: expected an integer")
        return int(f)
    if tp is float:
        try:
            if "/" in value:  # allow 8/255 for budgets and steps
                num, den = value.split("/", 1)
                return float(num) / float(den)
            return float(value)
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"--set {key}={value!r}: expected a number (e.g. 0.1 or 8/255)") from None
    if tp is str:
        return value
    if origin in (tuple, list, Tuple, List):
        v = value.strip()
        if v.startswith(("(", "[")) and v.endswith((")", "]")):
            v = v[1:-1]
        items = [s.strip() for s in v.split(",") if s.strip()] if v.strip() else []
        if origin in (tuple, Tuple) and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(items) != len(args):
                raise ConfigError(f"--set {key}={value!r}: expected {len(args)} comma-separated values")
            return tuple(_coerce(s, a, key) for s, a in zip(items, args))
        elem = args[0] if args else str
        out = [_coerce(s, elem, key) for s in items]
        return tuple(out) if origin in (tuple, Tuple) else out
    raise ConfigError(f"--set {key}: fields of type {tp} cannot be set from the command line")


def _field_types(obj: Any) -> Dict[str, Any]:
    return typing.get_type_hints(type(obj))


def set_value(cfg: Any, key: str, value: str) -> None:
    """Set dotted ``key`` (e.g. ``optim.lr``) on a nested dataclass config from a string."""
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(node):
            raise ConfigError(f"--set {key}: {'.'.join(parts[:i])} is not a section")
        names = [f.name for f in dataclasses.fields(node)]
        if part not in names:
            import difflib
            prefix = ".".join(parts[:i])
            full = [f"{prefix}.{n}" if prefix else n for n in names]
            close = difflib.get_close_matches(key, all_keys(cfg), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"--set {key}: no such config key.{hint} Keys here: {', '.join(full)}")
        if i == len(parts) - 1:
            tp = _field_types(node)[part]
            if dataclasses.is_dataclass(getattr(node, part)):
                raise ConfigError(f"--set {key}: is a section; set one of its keys instead")
            setattr(node, part, _coerce(value, tp, key))
        else:
            node = getattr(node, part)


def all_keys(cfg: Any, prefix: str = "") -> List[str]:
    """Every settable dotted key of a nested dataclass config."""
    out = []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        k = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(v):
            out.extend(all_keys(v, k + "."))
        else:
            out.append(k)
    return out


def apply_overrides(cfg: Any, overrides: List[str]) -> Any:
    """Apply ``["a.b=c", ...]`` to ``cfg`` in place and return it."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value (e.g. --set optim.lr=0.05)")
        k, v = item.split("=", 1)
        set_value(cfg, k.strip(), v.strip())
    return cfg


# Dotted keys that say how a run is executed or where it writes, not what it computes: a resume may
# change them (``engine.trainer.config_diff``), and the cache keys of surrogates and priors leave
# them out. Threads, device, compile, deterministic kernels and the parallel backend move float
# results in their last bits at most; the rest is bookkeeping.
RESULT_FREE_KEYS = frozenset({
    "name", "out_dir", "recipe",
    "data.cache_dir", "data.loader",
    "train.progress", "train.log_every", "train.threads", "train.compile", "train.device", "train.deterministic",
    "train.eval_every", "train.checkpoint_every", "train.eval_batch_size",
    "parallel.backend", "parallel.dist_backend", "parallel.zero_stage",
})


# Keys added to RunConfig after runs were written (run folders, finished sweep cells, cached
# surrogates and priors), each with the value that computes what the code before it computed (its
# default: a new key must default to the old behaviour). A saved config without such a key is the
# same run as one holding that value (``engine.trainer.config_diff``), and :func:`result_keys`
# leaves such a key out while it holds that value, so cache keys made before the key existed still
# find their entries.
LATER_KEYS: Dict[str, Any] = {
    "optim.warmup_start": OptimConfig.warmup_start,
    "optim.wd_exclude": OptimConfig.wd_exclude,
    "optim.optimizer": OptimConfig.optimizer,
    "optim.beta2": OptimConfig.beta2,
    "optim.eps": OptimConfig.eps,
    **{f"fast.{f.name}": f.default for f in dataclasses.fields(FastConfig)},
}


def is_later_default(key: str, value: Any) -> bool:
    """True when dotted ``key`` is one of :data:`LATER_KEYS` and ``value`` is its old-behaviour value."""
    if key not in LATER_KEYS:
        return False
    norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731  (JSON gives lists)
    return norm(value) == norm(LATER_KEYS[key])


def flat_dict(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """A nested dict as ``{"a.b.c": value}``."""
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flat_dict(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def result_keys(cfg: Any) -> Dict[str, Any]:
    """The flat config minus :data:`RESULT_FREE_KEYS` and minus the :data:`LATER_KEYS` at their
    old-behaviour values: what a cache key of a trained model hashes."""
    return {k: v for k, v in flat_dict(to_dict(cfg)).items()
            if k not in RESULT_FREE_KEYS and not is_later_default(k, v)}


def set_default(cfg: Any, user, key: str, value: Any) -> None:
    """Set dotted ``key`` of ``cfg`` to ``value`` unless it is in ``user`` (the keys the user set
    with --set): how recipes, paradigms and countermeasures fill in their defaults."""
    if key in user:
        return
    *path, last = key.split(".")
    node = cfg
    for part in path:
        node = getattr(node, part)
    setattr(node, last, value)


def to_dict(cfg: Any) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: Any, d: Dict[str, Any]) -> Any:
    """Rebuild a nested dataclass config from :func:`to_dict` output (unknown keys rejected)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for k, v in d.items():
        if k not in names:
            raise ConfigError(f"config has unknown key {k!r} for {cls.__name__}")
        tp = hints[k]
        if dataclasses.is_dataclass(tp) and isinstance(v, dict):
            kwargs[k] = from_dict(tp, v)
        elif typing.get_origin(tp) in (tuple, Tuple) and isinstance(v, list):
            kwargs[k] = tuple(v)
        else:
            kwargs[k] = v
    return cls(**kwargs)


def dumps(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=False)
