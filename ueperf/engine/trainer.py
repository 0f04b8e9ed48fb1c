"""The one training loop.

    store (uint8) ─▶ loader (x_u8, y, idx) ─▶ fused augment kernel ─▶ model (bf16, channels-last)
                 ─▶ CE loss (or a hook's) ─▶ backward, clip, SGD step ─▶ per-epoch eval ─▶ records

Everything that varies between methods enters through config fields and :class:`TrainHook`s;
everything distributed goes through :mod:`ueperf.parallel`. Hot-path rules: data stays on the
device, the only host syncs are every ``train.log_every`` steps (NaN/inf check + progress bar)
and at epoch end.

Determinism: the data order and augmentation of epoch e depend only on (seed, e, rank), so a
resumed run sees exactly the batches an uninterrupted run would (bit-for-bit on CPU with
``train.deterministic=true``).
"""
from __future__ import annotations

import json
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import __version__
from .. import parallel
from ..config import RESULT_FREE_KEYS, RunConfig, from_dict, is_later_default, to_dict
from ..errors import ConfigError, DataError, TrainingDiverged, UeperfError
from ..files import clean_leftovers_in, hold, write_json_atomic
from ..reports.records import RecordWriter
from . import fast
from .checkpoint import load_checkpoint, save_checkpoint
from .hooks import TrainerView, TrainHook, epoch_generator
from ..precision import autocast, resolve_precision
from .schedule import lr_factor



# ───────────────────────────────────────────── helpers ──
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def config_diff(a: Dict[str, Any], b: Dict[str, Any], prefix: str = "") -> List[str]:
    """``key: saved vs now`` for every dotted key whose value differs, except the keys that say how
    a run executes rather than what it computes (:data:`ueperf.config.RESULT_FREE_KEYS`). A key (or
    section) the saved config ``a`` lacks because it was added to the code later counts as equal
    while ``b`` holds its old-behaviour value (:data:`ueperf.config.LATER_KEYS`)."""
    out = []
    for k in sorted(set(a) | set(b)):
        key = f"{prefix}{k}"
        va, vb = a.get(k), b.get(k)
        if k not in a and isinstance(vb, dict):  # a section added after the run was saved
            va = {}
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, key + ".")
        elif k not in a and is_later_default(key, vb):
            continue
        elif (list(va) if isinstance(va, (list, tuple)) else va) != (list(vb) if isinstance(vb, (list, tuple)) else vb):
            if key not in RESULT_FREE_KEYS:
                out.append(f"{key}: {va!r} (saved) vs {vb!r} (now)")
    return out


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC 7R13 Processor"): /proc/cpuinfo on Linux, sysctl on macOS,
    else what the platform module knows (possibly only the architecture)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        import subprocess
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                 timeout=5).stdout.strip()
            if out:
                return out
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def environment_info() -> Dict[str, Any]:
    """Library versions and the hardware a run used (config.json's ``environment``)."""
    info = {"ueperf": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "platform": platform.platform(),
            "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "cuda": torch.version.cuda if torch.cuda.is_available() else None,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0}
    try:
        import triton  # noqa: F401
        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    return info


def build_optimizer(groups: List[Dict[str, Any]], o: Any) -> torch.optim.Optimizer:
    """``optim.optimizer``: torch SGD (momentum, Nesterov, coupled weight decay) or torch AdamW
    (β₁ = ``optim.momentum``, β₂ = ``optim.beta2``, ε = ``optim.eps``, decoupled weight decay:
    ``p ← p − lr · weight_decay · p`` each step). A group's own ``weight_decay`` (``optim.wd_exclude``,
    ``fast.bn_bias_lr``) wins over the default in both."""
    if o.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=(o.momentum, o.beta2), eps=o.eps,
                                 weight_decay=o.weight_decay)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov)


def build_param_groups(model: nn.Module, group_lr: Sequence[float], frozen: Sequence[int] = ()) -> List[Dict[str, Any]]:
    """One optimiser param group per model layer group, each with its lr multiplier ``mult``."""
    groups = model.layer_groups()
    if group_lr and len(group_lr) != len(groups):
        raise ConfigError(f"optim.group_lr has {len(group_lr)} values but the model has "
                          f"{len(groups)} layer groups ({', '.join(n for n, _ in groups)}); give one "
                          f"multiplier per group, shallow → deep, or leave it empty")
    out = []
    for i, (name, mod) in enumerate(groups):
        params = [p for p in mod.parameters() if p.requires_grad]
        if not params:
            continue
        out.append({"params": params, "name": name, "index": i,
                    "mult": float(group_lr[i]) if group_lr else 1.0})
    if not out:
        raise ConfigError("every parameter of the model is frozen: nothing to train")
    return out


# ───────────────────────────────────────────── run folders ──
# A run without ``name`` gets a fresh folder: ``out_dir/<recipe>`` the first time, then
# ``<recipe>-2``, ``<recipe>-3``, ... (one more than the highest number there), so rerunning a
# command starts a new run beside the old ones and never touches them; ``--resume`` alone continues
# the highest-numbered one. With ``--set name=NAME`` the folder is exactly ``out_dir/NAME``.
def _run_number(base: str, folder: str) -> Optional[int]:
    """1 for ``base``, k for ``base-k`` (k >= 2, no leading zeros), else None."""
    if folder == base:
        return 1
    head, sep, tail = folder.rpartition("-")
    if sep and head == base and tail.isdigit() and not tail.startswith("0") and int(tail) >= 2:
        return int(tail)
    return None


def run_dirs(out_dir: os.PathLike, base: str) -> List[Path]:
    """The folders of the auto-named runs of ``base`` under ``out_dir``, oldest (lowest number) first."""
    root = Path(out_dir).expanduser()
    if not root.is_dir():
        return []
    found = [(n, p) for p in root.iterdir() if p.is_dir() and (n := _run_number(base, p.name)) is not None]
    return [p for _, p in sorted(found)]


def latest_run_dir(out_dir: os.PathLike, base: str) -> Optional[Path]:
    """The highest-numbered run folder of ``base`` that holds a run (a config.json), or None."""
    runs = [p for p in run_dirs(out_dir, base) if (p / "config.json").exists()]
    return runs[-1] if runs else None


def fresh_run_dir(out_dir: os.PathLike, base: str):
    """``(folder, lock)``: a new run folder of ``base`` (see above), locked for this process. Two
    runs started at once never share one: a folder another process holds, or that filled while we
    waited for its lock, is passed over for the next number."""
    from ..files import Busy
    root = Path(out_dir).expanduser()
    existing = run_dirs(root, base)
    n = (_run_number(base, existing[-1].name) + 1) if existing else 1
    for _ in range(1000):
        d = root / (base if n == 1 else f"{base}-{n}")
        try:
            lock = hold(d, what="run folder")
        except Busy:
            n += 1
            continue
        if d.exists() and any(not p.name.startswith(".") for p in d.iterdir()):
            lock.release()  # another run took it between our listing and our lock
            n += 1
            continue
        return d, lock
    raise UeperfError(f"could not find a free run folder for {base!r} under {root}/; set one with --set name=NEW")


_COST_STEPS = 5  # steps timed for the cost estimate (after the first)


def _mean(xs) -> Optional[float]:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


# ───────────────────────────────────────────── trainer ──
class Trainer:
    """Builds data, model and optimiser from a :class:`RunConfig` and runs the epochs.

    Hooks are given ``self.view``, a :class:`~ueperf.engine.hooks.TrainerView`: the attributes and
    actions they may use (config, epoch, model, learning-rate multipliers, snapshots, evaluation).

    ``announce``: rank 0 prints ``run folder: DIR/`` when it has chosen the folder. ``python -m
    ueperf.train`` always does; the default (None) follows ``train.progress``, so the runs inside
    other jobs (a protection's surrogate, calibration, a ``--quiet`` sweep's cells) stay quiet
    when those are.
    """

    def __init__(self, cfg: RunConfig, *, hooks: Sequence[TrainHook] = (), resume: bool = False,
                 run_dir: Optional[os.PathLike] = None, store: Any = None, model: Optional[nn.Module] = None,
                 announce: Optional[bool] = None):
        self.cfg = cfg
        self.announce = cfg.train.progress if announce is None else bool(announce)
        self.hooks: List[TrainHook] = list(hooks)
        # the hooks that act after every step (a plain loop over the others would cost nothing, but
        # the list states which hooks can change the model within an epoch)
        self.step_hooks: List[TrainHook] = [h for h in self.hooks
                                            if type(h).on_step_end is not TrainHook.on_step_end]
        self.resume = resume
        self._run_dir_arg = run_dir
        self._store_arg = store
        self._model_arg = model
        self.records: List[Dict[str, Any]] = []
        self.warnings: List[str] = []
        self.expected_time_s: Optional[float] = None  # the cost estimate from the first steps (_estimate_cost)
        self._cost_t0: Optional[float] = None
        self.epoch = 0
        self.view = TrainerView(self)  # what hooks are given

    # -- set-up ----------------------------------------------------------------------------
    def setup(self) -> "Trainer":
        cfg = self.cfg
        self._validate(cfg)
        self.ctx = parallel.init(cfg.parallel.backend, cfg.train.device, cfg.parallel.dist_backend)
        ctx = self.ctx
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        elif ctx.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.dtype = resolve_precision(cfg.train.precision, ctx.device)

        # ── run folder: rank 0 chooses it (a fresh name unless one is given), the others follow ──
        self.run_dir = None
        if ctx.is_main:
            self._prepare_run_dir()
        self.run_dir = Path(parallel.broadcast_object(str(self.run_dir) if ctx.is_main else None, ctx))
        parallel.barrier(ctx)
        if ctx.is_main and self.announce:  # before data and model: the user knows where to look
            print(f"run folder: {self.run_dir}/", file=sys.stderr, flush=True)

        # ── data ──
        from ..data import make_loader, prepare_dataset
        self.store = self._store_arg if self._store_arg is not None else prepare_dataset(cfg.data, rank=ctx.rank)
        H, W, C = self.store.image_shape
        if cfg.train.batch_size % ctx.world_size:
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} is not divisible by the "
                              f"{ctx.world_size} processes; use a multiple of {ctx.world_size}")
        self.micro_batch = cfg.train.batch_size // ctx.world_size
        if len(self.store.train) < cfg.train.batch_size:
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} is larger than the training "
                              f"set ({len(self.store.train)} images); lower it")
        common = dict(device=ctx.device, seed=cfg.train.seed, rank=ctx.rank, world_size=ctx.world_size,
                      backend=cfg.data.loader)
        self.train_split = self._train_split()
        self.train_loader = make_loader(self.train_split, self.micro_batch, shuffle=True, drop_last=True, **common)
        self.test_split = self.store.test
        if cfg.data.test_holdout:
            from ..data.holdout import split_holdout
            from ..data.store import Split
            tx, ty, _, _ = split_holdout(self.store.test.x, self.store.test.y, cfg.data.test_holdout)
            self.test_split = Split(x=tx, y=ty, name="test", store_path=None)
        self.test_loader = make_loader(self.test_split, max(1, cfg.train.eval_batch_size // ctx.world_size),
                                       shuffle=False, drop_last=False, **common)
        self._check_classes()

        # ── model ──
        from ..models import build_model, load_pretrained
        seed_everything(cfg.train.seed)  # same initial weights on every rank
        if self._model_arg is not None:
            model = self._model_arg
        else:
            model = build_model(cfg.model.name, num_classes=self.store.num_classes, image_size=H,
                                width=cfg.model.width, stem=cfg.model.stem)
            if cfg.model.pretrained:
                self.pretrained_report = load_pretrained(model, cfg.model.pretrained)
                if ctx.is_main:  # what the loading adapted (renamed keys, a resampled position embedding, the head)
                    rep = self.pretrained_report
                    print(f"pretrained weights {rep['path']}: {len(rep['loaded'])} tensors loaded"
                          + "".join(f"; {n}" for n in rep["notes"]), file=sys.stderr)
        if not 0 <= cfg.model.dropout < 1:
            raise ConfigError(f"model.dropout={cfg.model.dropout}: must be in [0, 1)")
        if cfg.model.dropout:
            model.dropout = float(cfg.model.dropout)
        model = model.to(ctx.device)
        # DeepSpeed ZeRO flattens parameters into contiguous buffers (and its broadcast views them as
        # bytes), so its weights stay NCHW; inputs are still channels-last and convs adapt.
        if cfg.train.channels_last and cfg.parallel.backend != "deepspeed":
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self._setup_fast_model()

        self.group_lr = list(cfg.optim.group_lr)
        for h in self.hooks:  # paradigms: freeze groups, set per-group multipliers
            h.on_model(self.view, model)

        # ── optimiser: one param group per layer group, lr = base · schedule · multiplier ──
        self.param_groups = build_param_groups(model, self.group_lr)
        # fast.bn_bias_lr / fast.whiten move some parameters to groups of their own, appended after
        # these; each optimiser group's lr follows its rule (owner group, scale, end epoch)
        opt_groups, self._lr_rules = fast.optimizer_groups(model, self.param_groups, cfg.fast, cfg.optim.weight_decay,
                                                               cfg.optim.wd_exclude)
        opt = build_optimizer(opt_groups, cfg.optim)
        self.lr_mult = [g["mult"] for g in self.param_groups]
        use_ds_bf16 = cfg.parallel.backend == "deepspeed" and self.dtype == torch.bfloat16
        self.wrapped = parallel.wrap(model, opt, ctx, micro_batch=self.micro_batch,
                                     zero_stage=cfg.parallel.zero_stage, bf16=use_ds_bf16,
                                     grad_clip=cfg.optim.grad_clip)
        # DeepSpeed bf16 holds bf16 weights itself; everywhere else bf16 means autocast.
        self.input_dtype = torch.bfloat16 if self.wrapped.compute_dtype_is_bf16_weights else torch.float32
        self.autocast = (self.dtype == torch.bfloat16) and not self.wrapped.compute_dtype_is_bf16_weights
        self.runner = self.wrapped
        self.eval_model = model
        if cfg.train.compile:
            if ctx.is_main:
                print("note: train.compile=true: the first training step (and the first evaluation) compiles the "
                      "model, which takes from half a minute to several minutes (longer on a CPU) before the "
                      "progress bar moves", file=sys.stderr, flush=True)
            self._compile()

        # ── augmentation (fused kernel on CUDA, torch reference elsewhere) ──
        from ..augment.pipeline import Augmenter
        self.augmenter = Augmenter.from_config(cfg.augment)

        self.start_epoch = 0
        self._fast_state: Optional[Dict[str, Any]] = None
        if self.resume:
            self._load_resume_state()
        self.lookahead: Optional[fast.Lookahead] = None
        if cfg.fast.lookahead:  # after the whitening and any resume: the slow copy starts from the model
            self.lookahead = fast.Lookahead(self.model, cfg.fast.lookahead_every, cfg.fast.lookahead_decay,
                                            cfg.train.epochs * len(self.train_loader))
            if self._fast_state is not None and self._fast_state.get("lookahead") is not None:
                self.lookahead.load_state_dict(self._fast_state["lookahead"])
        from ..reports.runinfo import describe_run, register_run  # the title of every figure of this run
        register_run(self.run_dir, describe_run(to_dict(cfg), self.store.manifest, run_dir=self.run_dir,
                                                group_names=[g["name"] for g in self.param_groups]))
        for h in self.hooks:
            h.on_train_start(self.view)
        return self

    def warn(self, message: str) -> None:
        """A warning for the user: printed once (main rank) and kept in summary.json's ``warnings``."""
        if message in self.warnings:
            return
        self.warnings.append(message)
        if self.ctx.is_main:
            print(f"warning: {message}", file=sys.stderr, flush=True)

    def _check_classes(self) -> None:
        """Degenerate data, before any training: fewer than two classes to learn is refused; classes
        without test images (their accuracy is never measured) or without training images are warned of."""
        names = self.store.classes
        train_k = np.unique(np.asarray(self.train_split.y))
        if train_k.size < 2:
            raise DataError(f"the training set of {self.store.path} holds {train_k.size} class(es) "
                            f"({', '.join(names[int(k)] for k in train_k) or 'none'}): a classifier needs at least 2 "
                            f"(check data.classes and data.train_limit)")
        test_k = set(np.unique(np.asarray(self.test_split.y)).tolist())
        no_test = [names[k] for k in range(len(names)) if k not in test_k]
        if no_test:
            self.warn(f"{len(no_test)} class(es) have no test images, so their accuracy is never measured: "
                      f"{', '.join(no_test[:8])}{' ...' if len(no_test) > 8 else ''}")
        no_train = [names[k] for k in range(len(names)) if k not in set(train_k.tolist())]
        if no_train:
            self.warn(f"{len(no_train)} class(es) have no training images (the model can never predict them "
                      f"correctly): {', '.join(no_train[:8])}{' ...' if len(no_train) > 8 else ''}")

    def _train_split(self) -> Any:
        """The training split, after any hook's one-time image transform (test split untouched)."""
        split = self.store.train
        for h in self.hooks:
            new = h.transform_train_images(self.view, np.asarray(split.x))
            if new is None:
                continue
            if new.shape != split.x.shape or new.dtype != np.uint8:
                raise UeperfError(f"{type(h).__name__}.transform_train_images returned {new.dtype} "
                                  f"{tuple(new.shape)}; expected uint8 {tuple(split.x.shape)}")
            if self.cfg.data.loader == "ffcv":
                raise ConfigError(f"{type(h).__name__} transforms the training images in memory, which "
                                  f"the FFCV loader (data.loader=ffcv) cannot read; use data.loader=auto")
            from ..data.store import Split
            split = Split(x=new, y=split.y, name=split.name, store_path=None)
        return split

    def _setup_fast_model(self) -> None:
        """The model side of ``cfg.fast`` (:mod:`ueperf.engine.fast`), before the paradigm's hooks and
        the optimiser: BatchNorm momentum, identity init, the whitening layer frozen, and — for a
        fresh run that starts from random weights — fitted to the training images (training split
        only, after any hook's image transform, through the evaluation transform). A resumed run
        takes these weights from its checkpoint instead. Done before the model is wrapped, so DDP
        hands rank 0's result to every rank."""
        f = self.cfg.fast
        self.whitening: Optional[Dict[str, Any]] = None  # what fit_whitening measured (fresh runs)
        pretrained = bool(self.cfg.model.pretrained)
        fast.prepare_model(self.model, f, pretrained=pretrained)
        fresh = not (self.resume and self._checkpoint_path().exists())
        if f.whiten and fresh and not pretrained:
            from ..augment.pipeline import Augmenter
            transform = Augmenter.from_config(self.cfg.augment).eval_transform
            self.whitening = fast.fit_whitening(fast.whitening_layer(self.model), self.train_split.x, transform,
                                                eps=f.whiten_eps, n_images=f.whiten_images, seed=self.cfg.train.seed)

    @staticmethod
    def _validate(cfg: RunConfig) -> None:
        from .validate import check_run_config
        check_run_config(cfg)

    def _prepare_run_dir(self) -> None:
        """Choose and lock the run folder (sets ``self.run_dir``): ``run_dir`` when given, else
        ``out_dir/name`` when ``name`` is set, else a fresh :func:`fresh_run_dir` of the recipe (a
        resume without a folder or name continues :func:`latest_run_dir`)."""
        cfg = self.cfg
        root = Path(cfg.out_dir).expanduser()
        if self._run_dir_arg:
            d = Path(self._run_dir_arg)
        elif cfg.name:
            d = root / cfg.name
        elif self.resume:
            base = cfg.recipe or "run"
            d = latest_run_dir(root, base)
            if d is None:
                raise UeperfError(f"--resume: there is no run of {base!r} under {root}/ (looked for {base}, "
                                  f"{base}-2, ...); start it without --resume, or name the folder: --resume RUN_DIR")
            if cfg.train.progress:
                print(f"resuming the latest run of {base!r}: {d}", file=sys.stderr, flush=True)
        else:
            d, self._lock = fresh_run_dir(root, cfg.recipe or "run")
        self.run_dir = d
        if getattr(self, "_lock", None) is None:
            # One writer per run folder, for the whole run (released in close(), or by the OS if killed).
            self._lock = hold(d, what="run folder", hint="A run is writing it: wait for it to end (and --resume it "
                              "if it was interrupted), or start another run with --set name=NEW")
        clean_leftovers_in(d)  # temp files of a killed run: nobody else writes here now
        cfg_path = d / "config.json"
        if self.resume:
            if not cfg_path.exists():
                raise UeperfError(f"--resume: {d} holds no run (no config.json); start it without --resume")
            saved = json.loads(cfg_path.read_text())["config"]
            diff = config_diff(saved, to_dict(self.cfg))
            if diff:
                raise ConfigError("--resume: this config differs from the run's saved config in "
                                  + "; ".join(diff[:6]) + ". Resume with the same recipe and --set values "
                                  "(or `--resume " + str(d) + "` alone to use the saved config)")
        else:
            if (d / "checkpoint.pt").exists() or (d / "records.jsonl").exists():
                raise UeperfError(f"run folder {d} already holds a run. Continue it with --resume, or "
                                  f"choose another folder with --set name=NEW (or out_dir=...)")
            d.mkdir(parents=True, exist_ok=True)
            saved = to_dict(self.cfg)
            saved["name"] = saved["name"] or d.name  # the folder a fresh name gave the run (cfg is not changed)
            write_json_atomic(cfg_path, {"config": saved, "environment": environment_info(),
                                         "argv": sys.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def _compile(self) -> None:
        try:
            if self.wrapped.engine is None:
                self.runner = torch.compile(self.wrapped.runner)
                self.eval_model = torch.compile(self.model)
            else:  # DeepSpeed's engine compiles itself
                self.wrapped.engine.compile()
        except Exception as e:
            raise UeperfError(f"train.compile=true failed ({type(e).__name__}: {e}); torch.compile needs a "
                              f"C++ compiler (g++) — install one or set train.compile=false") from None

    # -- resume ----------------------------------------------------------------------------
    def _checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def _load_resume_state(self) -> None:
        path = self._checkpoint_path()
        if not path.exists():
            # interrupted before the first checkpoint: nothing to load, start at epoch 0
            self.records = []
            return
        state = load_checkpoint(path)
        if state.get("deepspeed_tag"):
            self.wrapped.load_sharded(str(self.run_dir / "deepspeed"), state["deepspeed_tag"])
        else:
            self.wrapped.load_state_dict(state["trainer"])
        self.start_epoch = int(state["epoch"]) + 1
        self.records = list(state["records"])
        self.lr_mult = list(state.get("lr_mult", self.lr_mult))
        self._fast_state = state.get("fast")
        for h, hs in zip(self.hooks, state.get("hooks", [])):
            h.load_state_dict(hs)

    def _save_checkpoint(self, epoch: int) -> None:
        tag = None
        if self.wrapped.engine is not None:  # DeepSpeed: sharded, written by every rank
            tag = f"epoch{epoch + 1}"
            self.wrapped.save_sharded(str(self.run_dir / "deepspeed"), tag)
            parallel.barrier(self.ctx)
        if not self.ctx.is_main:
            return
        state = {
            "epoch": epoch, "trainer": None if tag else self.wrapped.state_dict(), "deepspeed_tag": tag,
            "records": self.records,
            "lr_mult": self.lr_mult, "hooks": [h.state_dict() for h in self.hooks],
            "config": json.dumps(to_dict(self.cfg))}
        if self.lookahead is not None:  # the engine's own state (hooks' states are aligned with the hooks)
            state["fast"] = {"lookahead": self.lookahead.state_dict()}
        save_checkpoint(self._checkpoint_path(), state)
        if tag:  # checkpoint.pt now points at `tag`: older DeepSpeed tags are garbage
            import shutil
            for old in (self.run_dir / "deepspeed").glob("epoch*"):
                if old.name != tag and old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)

    # -- one epoch -------------------------------------------------------------------------
    def _autocast(self):
        return autocast(self.ctx.device, torch.bfloat16 if self.autocast else None)

    def scheduled_lr(self, t: float) -> float:
        """Base lr × the config's schedule at fractional epoch t (a multiplier-1 group's lr)."""
        o = self.cfg.optim
        return o.lr * lr_factor(o.schedule, t, self.cfg.train.epochs, warmup=o.warmup_epochs,
                                milestones=o.milestones, gamma=o.gamma, warmup_start=o.warmup_start)

    def set_lr(self, t: float) -> None:
        lr = None
        for h in self.hooks:
            lr = h.lr_at(self.view, t)
            if lr is not None:
                break
        if lr is None:
            lr = self.scheduled_lr(t)
        # rule of optimiser group i: (owner layer group j, scale, end epoch); (i, 1, None) unless
        # cfg.fast split groups off (engine.fast.optimizer_groups)
        for g, (j, scale, until) in zip(self.wrapped.param_groups, self._lr_rules):
            g["lr"] = 0.0 if until is not None and t >= until else lr * self.lr_mult[j] * scale

    def train_epoch(self, epoch: int) -> Dict[str, Any]:
        cfg, ctx = self.cfg, self.ctx
        self.model.train()
        self.train_loader.set_epoch(epoch)
        gen = epoch_generator(ctx.device, cfg.train.seed, epoch, ctx.rank, 0xA06)
        n_steps = len(self.train_loader)
        losses = torch.zeros(n_steps, device=ctx.device)          # per-step loss, kept on device
        correct = torch.zeros((), device=ctx.device, dtype=torch.long)
        seen = hard = 0
        bar = None
        if cfg.train.progress and ctx.is_main:
            from tqdm.auto import tqdm
            bar = tqdm(total=n_steps, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", leave=False,
                       dynamic_ncols=True, file=sys.stderr)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        t0 = self._epoch_t0 = time.perf_counter()
        checked = 0
        self._end_epoch = False
        smoothing = float(cfg.fast.label_smoothing)
        for step, (xb, yb, ib) in enumerate(self.train_loader):
            self.set_lr(epoch + step / n_steps)
            x = self.augmenter(xb, generator=gen, out_dtype=self.input_dtype)
            y = yb
            for h in self.hooks:
                x, y = h.on_batch(self.view, x, y, ib)
            with self._autocast():
                logits = self.runner(x)
                loss = None
                for h in self.hooks:
                    loss = h.loss(self.view, logits, y)
                    if loss is not None:
                        break
                if loss is None:
                    loss = (F.cross_entropy(logits.float(), y, label_smoothing=smoothing) if smoothing
                            else F.cross_entropy(logits.float(), y))
            self.wrapped.backward_step(loss, cfg.optim.grad_clip)
            if self.lookahead is not None:
                self.lookahead.after_step(epoch * n_steps + step + 1)
            losses[step] = loss.detach()
            if y.dim() == 1:  # hard labels (mixup-style hooks give soft ones: no accuracy for those)
                correct += (logits.detach().argmax(1) == y).sum()
                hard += y.shape[0]
            seen += y.shape[0]
            for h in self.step_hooks:
                h.on_step_end(self.view, step, n_steps)
            if self.expected_time_s is None and n_steps > 1 and step in (0, min(_COST_STEPS, n_steps - 1)):
                self._estimate_cost(epoch, step, n_steps)
            if self._end_epoch:  # a step hook ended the epoch (same decision on every rank)
                self._check_finite(losses, checked, step + 1, epoch)
                checked = step + 1
                if bar is not None:
                    bar.update(1)
                break
            if (step + 1) % cfg.train.log_every == 0 or step + 1 == n_steps:
                self._check_finite(losses, checked, step + 1, epoch)
                checked = step + 1
                if bar is not None:
                    bar.set_postfix(loss=f"{losses[max(0, step + 1 - cfg.train.log_every):step + 1].mean().item():.3f}")
            if bar is not None:
                bar.update(1)
        self.wrapped.sync_buffers()
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        dt = time.perf_counter() - t0
        if self.expected_time_s is None and n_steps == 1:  # no second step to time: the whole epoch
            self._cost_t0 = t0
            self._estimate_cost(epoch, 1, 1, window="the first epoch's step")
        if bar is not None:
            bar.close()
        ran = checked  # steps run (all of them unless a hook ended the epoch early)
        tot = torch.tensor([0.0, 0.0, float(seen), float(ran), float(hard)], device=ctx.device, dtype=torch.float64)
        tot[0] += losses[:ran].sum().double()
        tot[1] += correct.double()
        parallel.all_reduce_sum(tot, ctx)
        dts = torch.tensor([dt], dtype=torch.float64, device=ctx.device)
        parallel.all_reduce_max(dts, ctx)
        loss_sum, corr, n_seen, n_steps_all, n_hard = tot.tolist()
        return {"train_loss": loss_sum / max(n_steps_all, 1), "train_acc": corr / n_hard if n_hard else None,
                "images_per_s": n_seen / max(dts.item(), 1e-9), "train_time_s": dts.item(), "train_images": int(n_seen),
                "lr": [g["lr"] for g in self.wrapped.param_groups]}

    def _estimate_cost(self, epoch: int, step: int, n_steps: int, window: str = "") -> None:
        """The first steps of a run time its cost: the clock starts after the first step (which pays
        for warm-up and compilation) and stops after step ``_COST_STEPS + 1``; the rest of the run is
        that speed × the steps left. Printed once (stderr), kept in summary.json; a GPU-sized run on
        the CPU is warned of. One host sync at each end (the run's only extra ones)."""
        if self.ctx.device.type == "cuda":
            torch.cuda.synchronize(self.ctx.device)
        now = time.perf_counter()
        if step == 0 and n_steps > 1:
            self._cost_t0 = now
            return
        per_step = (now - self._cost_t0) / max(step, 1)
        left = (self.cfg.train.epochs - epoch) * n_steps - (step + 1 if n_steps > 1 else 1)
        self.expected_time_s = (now - self._epoch_t0) + per_step * left
        from .cost import estimate_line, gpu_sized_warning
        epochs = self.cfg.train.epochs - epoch
        what = f"training ({epochs} epoch{'s' if epochs != 1 else ''} × {n_steps} steps)"
        window = window or (f"step {step + 1}" if step == 1 else f"steps 2-{step + 1}")
        detail = (f"{per_step:.3g} s/step measured over {window}; evaluation"
                  + (" and the countermeasure's checks come" if self.step_hooks else " comes") + " on top")
        if self.ctx.is_main and self.cfg.train.progress:
            from tqdm.auto import tqdm  # above the progress bar, not through it
            tqdm.write(estimate_line(what, self.expected_time_s, self.ctx.device, detail), file=sys.stderr)
        warn = gpu_sized_warning(f"this run ({epochs} epoch{'s' if epochs != 1 else ''} of {n_steps} steps)",
                                 self.expected_time_s,
                                 self.ctx.device)
        if warn:
            self.warn(warn)

    def _check_finite(self, losses: torch.Tensor, start: int, stop: int, epoch: int) -> None:
        chunk = losses[start:stop]
        if not bool(torch.isfinite(chunk).all()):
            bad = int((~torch.isfinite(chunk)).nonzero()[0].item()) + start
            ckpt = self._checkpoint_path()
            where = (f"the last checkpoint written before it is {ckpt}" if ckpt.exists()
                     else "no checkpoint was written before it")
            raise TrainingDiverged(
                f"the training loss became {chunk[bad - start].item()} at epoch {epoch + 1}, step {bad + 1} "
                f"(of {len(losses)}). Lower optim.lr (now {self.cfg.optim.lr}), set optim.grad_clip "
                f"(e.g. 5.0), or use train.precision=fp32; {where}")

    @torch.no_grad()
    def evaluate(self, loader=None) -> Dict[str, float]:
        """Clean accuracy and loss over a loader (default: the test set), summed over ranks; with
        ``fast.tta`` the logits are averaged over the test-time views (engine.fast.tta_logits)."""
        loader = loader if loader is not None else self.test_loader
        self.model.eval()
        ctx = self.ctx
        tta = self.cfg.fast.tta
        acc = torch.zeros(3, device=ctx.device, dtype=torch.float64)
        for xb, yb, _ in loader:
            x = self.augmenter.eval_transform(xb, out_dtype=self.input_dtype)
            with self._autocast():
                logits = self.eval_model(x) if tta == "none" else fast.tta_logits(self.eval_model, x, tta)
            acc[0] += F.cross_entropy(logits.float(), yb, reduction="sum").double()
            acc[1] += (logits.argmax(1) == yb).sum()
            acc[2] += yb.shape[0]
        parallel.all_reduce_sum(acc, ctx)
        loss, corr, n = acc.tolist()
        self.model.train()
        return {"test_loss": loss / max(n, 1), "test_acc": corr / max(n, 1), "test_images": int(n)}

    # -- the run ---------------------------------------------------------------------------
    def fit(self) -> Dict[str, Any]:
        cfg, ctx = self.cfg, self.ctx
        writer = RecordWriter(self.run_dir / "records.jsonl") if ctx.is_main else None
        if writer is not None:
            writer.truncate_to(self.records)
        t_run = time.perf_counter()
        elapsed_before = self.records[-1]["elapsed_s"] if self.records else 0.0
        for epoch in range(self.start_epoch, cfg.train.epochs):
            self.epoch = epoch
            rec: Dict[str, Any] = {"epoch": epoch + 1}
            last = epoch + 1 == cfg.train.epochs
            for h in self.hooks:
                h.on_epoch_start(self.view, epoch)
            if any(h.skip_epoch(self.view, epoch) for h in self.hooks):
                rec["skipped"] = True
                if last:
                    rec.update(self.evaluate())
                rec["elapsed_s"] = elapsed_before + time.perf_counter() - t_run
                self.records.append(rec)
                if writer is not None:
                    writer.append(rec)
                if last or (epoch + 1) % cfg.train.checkpoint_every == 0:
                    self._save_checkpoint(epoch)
                continue
            rec.update(self.train_epoch(epoch))
            if last or (epoch + 1) % cfg.train.eval_every == 0:
                rec.update(self.evaluate())
            for h in self.hooks:
                h.on_epoch_end(self.view, rec)
            rec["elapsed_s"] = elapsed_before + time.perf_counter() - t_run
            self.records.append(rec)
            if writer is not None:
                writer.append(rec)
                self._print_epoch(rec)
            if last or rec.get("stop") or (epoch + 1) % cfg.train.checkpoint_every == 0:
                self._save_checkpoint(epoch)
            if rec.get("stop"):
                break
        return self.finish()

    def _print_epoch(self, r: Dict[str, Any]) -> None:
        if not self.cfg.train.progress:
            return
        test = f"  clean test acc {100 * r['test_acc']:.2f}%" if "test_acc" in r else ""
        extra = "".join(f"  {s}" for s in r.get("notes", []))
        tra = f"  train acc {100 * r['train_acc']:.2f}%" if r.get("train_acc") is not None else ""
        print(f"epoch {r['epoch']:>3}/{self.cfg.train.epochs}  loss {r['train_loss']:.4f}"
              f"{tra}{test}  {r['images_per_s']:.0f} img/s{extra}",
              file=sys.stderr, flush=True)

    def finish(self) -> Dict[str, Any]:
        final = next((r for r in reversed(self.records) if "test_acc" in r), {})
        from ..reports.runinfo import run_record
        summary = {
            "run_dir": str(self.run_dir), "recipe": self.cfg.recipe, "epochs": len(self.records),
            "final_test_acc": final.get("test_acc"),
            "final_train_acc": next((r["train_acc"] for r in reversed(self.records) if r.get("train_acc") is not None), None),
            "best_test_acc": max((r["test_acc"] for r in self.records if "test_acc" in r), default=None),
            "mean_images_per_s": _mean(r["images_per_s"] for r in self.records if "images_per_s" in r),
            "countermeasure": self.cfg.countermeasure,
            "total_time_s": self.records[-1]["elapsed_s"] if self.records else 0.0,
            "world_size": self.ctx.world_size, "backend": self.ctx.backend, "device": str(self.ctx.device),
            "dataset": self.store.manifest.get("name"), "model": self.cfg.model.name,
            "warnings": list(self.warnings),
            "pretrained": None if getattr(self, "pretrained_report", None) is None else {
                k: (len(v) if k == "loaded" else v) for k, v in self.pretrained_report.items()},
            "expected_time_s": self.expected_time_s,  # the cost estimate made from the first steps
            "run": run_record(self.run_dir),  # what the run is: protection, countermeasure, data, ... (runinfo)
        }
        for h in self.hooks:
            h.on_train_end(self.view, summary)
        if self.ctx.is_main:
            write_json_atomic(self.run_dir / "summary.json", summary)
            try:
                from ..reports.plots import plot_training
                plot_training(self.records, self.run_dir / "curves.png")  # titled with the run (reports.runinfo)
            except ImportError:
                print("matplotlib is not installed: skipped curves.png (pip install matplotlib)", file=sys.stderr)
        return summary

    def close(self, failed: bool = False) -> None:
        """Release the process group (see :func:`ueperf.parallel.shutdown`; ``failed`` after an error)."""
        if hasattr(self, "ctx"):
            parallel.shutdown(self.ctx, failed=failed)
        if getattr(self, "_lock", None) is not None:
            self._lock.release()

    def __enter__(self) -> "Trainer":
        """``with Trainer(cfg, ...) as tr:`` sets up, and closes on the way out (failed on an exception)."""
        try:
            return self.setup()
        except BaseException:
            self.close(failed=True)
            raise

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)


def train(cfg: RunConfig, *, resume: bool = False, hooks: Sequence[TrainHook] = (),
          run_dir: Optional[os.PathLike] = None, announce: Optional[bool] = None) -> Dict[str, Any]:
    """Run ``cfg`` to the end (or continue it with ``resume``) and return the summary
    (``announce``: print the run folder first, see :class:`Trainer`)."""
    with Trainer(cfg, hooks=hooks, resume=resume, run_dir=run_dir, announce=announce) as tr:
        return tr.fit()


def load_run_config(run_dir: os.PathLike) -> RunConfig:
    """The resolved config saved in a run folder."""
    p = Path(run_dir) / "config.json"
    if not p.exists():
        raise UeperfError(f"{run_dir} holds no run (no config.json)")
    return from_dict(RunConfig, json.loads(p.read_text())["config"])
