"""Surrogates: models trained on the CLEAN training set by the engine's trainer, cached by config.

Methods that craft against a fixed, well-trained model (AEP, HYPO, ...) get one through
``ctx.surrogate(model_name, epochs, **overrides)`` (:func:`make_surrogate_fn`), which calls
:func:`train_surrogate`:

    clean store ─▶ RunConfig (spec §3.0 recipe: SGD 0.1, momentum 0.9, wd 5e-4, cosine, batch 128,
                   crop(4)+flip, 60 epochs, + the caller's overrides)
                ─▶ Trainer (one process, or DDP under torchrun) ─▶ <cache_dir>/surrogates/<key16>/

The cache key is sha256 of the resolved RunConfig (minus what does not change the weights: paths,
progress, logging, device, parallel backend) and the clean store's array hashes, so the same
request on the same clean data reuses the trained model, and any change retrains. The cache folder
holds ``model.pt`` (the model's state_dict), ``surrogate.json`` (key document, config, the
trainer's summary: clean test accuracy, time, device) and the trainer's ``records.jsonl``,
``summary.json``, ``curves.png``. Training runs in a hidden ``.<key16>.partial`` folder that is
renamed into place when done; an interrupted surrogate training resumes from its last epoch
checkpoint on the next call.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .. import parallel
from ..config import RunConfig, apply_overrides, result_keys, to_dict
from ..data.store import Store, open_store
from ..errors import ConfigError
from ..files import default_cache_dir, hold, torch_load_safe
from .base import ProtectContext

KEY_VERSION = 1  # bump when the training recipe changes in a way the config does not show


# ───────────────────────────────────────────── config + key ──
def surrogate_config(store: Store, *, model: str = "resnet18", width: float = 1.0,
                     epochs: Optional[int] = None, seed: int = 0, device: str = "auto",
                     overrides: Sequence[str] = (), progress: bool = False) -> RunConfig:
    """The RunConfig that trains a surrogate on ``store``'s clean training set.

    Defaults are the spec §3.0 recipe (RunConfig's defaults); ``epochs=None`` keeps its 60.
    ``overrides`` are dotted ``key=value`` strings applied last (type-checked).
    """
    cfg = RunConfig()
    cfg.recipe = "surrogate"
    cfg.data.dataset = str(store.path)
    cfg.model.name = model
    cfg.model.width = float(width)
    if epochs is not None:
        cfg.train.epochs = int(epochs)
    cfg.train.seed = int(seed)
    cfg.train.device = device
    cfg.train.progress = bool(progress)
    apply_overrides(cfg, list(overrides))
    if cfg.data.dataset != str(store.path):
        raise ConfigError(f"surrogate override data.dataset={cfg.data.dataset!r}: a surrogate is "
                          f"always trained on the clean store being protected ({store.path})")
    return cfg


def surrogate_key(cfg: RunConfig, store: Store) -> Tuple[str, Dict[str, Any]]:
    """(hex sha256, the JSON document it hashes) identifying a surrogate."""
    # The config minus what does not change the weights (ueperf.config.RESULT_FREE_KEYS) and minus
    # the data keys: the store path is replaced by the store's content hashes below.
    d = {k: v for k, v in result_keys(cfg).items() if not k.startswith("data.")}
    doc = {"key_version": KEY_VERSION, "config": d,
           "clean_hashes": {f: e["sha256"] for f, e in sorted(store.manifest["files"].items())}}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest(), doc


def _cache_root(cache_dir: Optional[Union[str, os.PathLike]]) -> Path:
    return Path(os.path.expanduser(str(cache_dir or default_cache_dir()))).absolute() / "surrogates"


# ───────────────────────────────────────────── train / load ──
def _ready(folder: Path) -> bool:
    return (folder / "model.pt").is_file() and (folder / "surrogate.json").is_file()


def _load(folder: Path, cfg: RunConfig, store: Store, device: torch.device) -> torch.nn.Module:
    from ..models import build_model
    m = build_model(cfg.model.name, store.num_classes, store.image_shape[0], width=cfg.model.width,
                    stem=cfg.model.stem)
    state = torch_load_safe(folder / "model.pt", "cached surrogate",
                            f"Delete {folder} and the surrogate is trained again on the next run.")
    m.load_state_dict(state)
    m = m.to(device).to(memory_format=torch.channels_last).eval()
    # Crafting only differentiates w.r.t. the input: frozen weights skip their gradient work.
    m.requires_grad_(False)
    return m


def train_surrogate(clean: Union[Store, str, os.PathLike], *, model: str = "resnet18", width: float = 1.0,
                    epochs: Optional[int] = None, seed: int = 0, device: Union[str, torch.device] = "auto",
                    overrides: Sequence[str] = (), cache_dir: Optional[Union[str, os.PathLike]] = None,
                    progress: bool = False, dist: Optional[parallel.DistContext] = None
                    ) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """Train (or load from the cache) a surrogate on the clean store ``clean``.

    Returns ``(model, info)``: the model in eval mode with frozen weights, channels-last, on
    ``device``; ``info`` = the cache record (key, config, clean test accuracy, training time,
    device it was trained on) plus ``path`` and ``cached`` (True when no training ran).
    ``dist``: the caller's DistContext under torchrun (every rank must call; the trainer then
    runs DDP and rank 0 writes the cache); None for one process.
    """
    store = clean if isinstance(clean, Store) else open_store(clean, verify=False)
    if store.kind != "clean":
        raise ConfigError(f"surrogates are trained on clean data, but {store.path} is a "
                          f"{store.kind} store")
    dist = dist or parallel.DistContext()
    dev = torch.device(device) if isinstance(device, torch.device) else parallel.resolve_device(device, dist.local_rank)
    cfg = surrogate_config(store, model=model, width=width, epochs=epochs, seed=seed,
                           device=str(dev), overrides=overrides, progress=progress and dist.is_main)
    key, doc = surrogate_key(cfg, store)
    root = _cache_root(cache_dir)
    final = root / key[:16]
    # One trainer per surrogate: a second process asking for the same one waits, then loads it.
    lock = hold(final, wait_s=24 * 3600, what="surrogate") if dist.is_main else None
    try:
        cached = bool(parallel.broadcast_object(_ready(final), dist))
        if not cached:
            _train_into(final, cfg, doc, key, dist)
        parallel.barrier(dist)
    finally:
        if lock is not None:
            lock.release()
    info = json.loads((final / "surrogate.json").read_text())
    info.update(path=str(final), cached=cached)
    return _load(final, cfg, store, dev), info


def _train_into(final: Path, cfg: RunConfig, doc: Dict[str, Any], key: str, dist: parallel.DistContext) -> None:
    """Run the trainer in ``.<key16>.partial`` (resuming a matching interrupted run), then
    publish model.pt + surrogate.json and rename the folder to ``final`` (rank 0)."""
    from ..engine.checkpoint import load_checkpoint
    from ..engine.trainer import train
    from ..files import torch_save_atomic, write_json_atomic
    partial = final.parent / f".{final.name}.partial"
    cfg.out_dir, cfg.name = str(final.parent), partial.name
    resume = False
    if dist.is_main:
        saved = partial / "config.json"
        if (partial / "checkpoint.pt").is_file() and saved.is_file():
            try:
                same = json.loads(saved.read_text())["config"] == json.loads(json.dumps(to_dict(cfg)))
            except (OSError, ValueError, KeyError):
                same = False
            resume = same
        if not resume and partial.exists():
            shutil.rmtree(partial)  # a different or unusable leftover: start clean
    resume = bool(parallel.broadcast_object(resume, dist))
    parallel.barrier(dist)
    summary = train(cfg, resume=resume, run_dir=partial)
    if dist.is_main:
        state = load_checkpoint(partial / "checkpoint.pt")["trainer"]["model"]
        torch_save_atomic(partial / "model.pt", state)
        write_json_atomic(partial / "surrogate.json", {
            "key": key, "key_doc": doc, "config": to_dict(cfg), "model": cfg.model.name,
            "width": cfg.model.width, "epochs": cfg.train.epochs, "seed": cfg.train.seed,
            "clean_test_acc": summary.get("final_test_acc"), "final_train_acc": summary.get("final_train_acc"),
            "train_time_s": summary.get("total_time_s"), "trained_on": summary.get("device"),
            "world_size": summary.get("world_size")})
        (partial / "checkpoint.pt").unlink()  # optimiser state is not needed once trained
        if final.exists():  # a concurrent process published the same key first
            shutil.rmtree(partial, ignore_errors=True)
        else:
            os.replace(partial, final)


# ───────────────────────────────────────────── ctx.surrogate ──
def make_surrogate_fn(store: Store, *, device: torch.device, seed: int, cache_dir: Optional[Union[str, os.PathLike]],
                      progress: bool, dist: Optional[parallel.DistContext] = None,
                      forced: Sequence[str] = (), record: Optional[List[Dict[str, Any]]] = None
                      ) -> Callable[..., torch.nn.Module]:
    """The ``ctx.surrogate`` closure: ``surrogate(model_name="resnet18", epochs=None, *, width=1.0,
    seed=<run seed>, overrides=(), **sets)``.

    ``sets`` are extra RunConfig keys with ``__`` for the dot (``optim__lr=0.05``); ``forced``
    (the runner's ``surrogate_overrides``, e.g. ``model.width=0.125`` for tests) are applied after
    the method's own request. Each call's info dict is appended to ``record`` (it goes into the
    protected store's manifest) and set as ``model.surrogate_info``.
    """
    def surrogate(model_name: str = "resnet18", epochs: Optional[int] = None, **kw: Any) -> torch.nn.Module:
        width = float(kw.pop("width", 1.0))
        s = int(kw.pop("seed", seed))
        sets = list(kw.pop("overrides", ()))
        sets += [f"{k.replace('__', '.')}={_fmt(v)}" for k, v in kw.items()]
        model, info = train_surrogate(store, model=model_name, width=width, epochs=epochs, seed=s,
                                      device=device, overrides=sets + list(forced), cache_dir=cache_dir,
                                      progress=progress, dist=dist)
        model.surrogate_info = info
        if record is not None:
            record.append({k: v for k, v in info.items() if k not in ("key_doc", "config")})
        return model
    return surrogate


# ───────────────────────────────────────────── a method's side ──
def get_surrogate(ctx: ProtectContext, model_name: str, epochs: int, width: float, method: str) -> torch.nn.Module:
    """The clean-data surrogate from ``ctx.surrogate``, frozen, eval mode, channels-last.

    Its parameters are set to ``requires_grad=False``: crafting differentiates w.r.t. δ only,
    and a frozen model lets autograd skip every weight-gradient kernel.
    """
    if ctx.surrogate is None:
        raise ConfigError(f"{method} crafts against a surrogate trained on the clean data, but this "
                          f"ProtectContext has no `surrogate` provider; run it through "
                          f"`python -m ueperf.protect` (which trains and caches one) or pass "
                          f"ProtectContext(surrogate=...)")
    if int(epochs) < 1:
        raise ConfigError(f"{method}: surrogate_epochs={epochs} must be >= 1 (epochs of clean training)")
    if not float(width) > 0:
        raise ConfigError(f"{method}: surrogate_width={width} must be > 0 (channel-width multiplier, 1 = published)")
    model = ctx.surrogate(model_name, int(epochs), width=float(width))
    model = model.to(ctx.device, memory_format=torch.channels_last).eval()
    model.requires_grad_(False)
    return model


def surrogate_details(model: torch.nn.Module, name: str, width: float, epochs: int) -> Dict[str, object]:
    """What the manifest records about the surrogate: the request, plus the provider's record
    (cache key, clean test accuracy, training time, ...) when it attached one."""
    d: Dict[str, object] = {"model": name, "width": float(width), "epochs": int(epochs)}
    extra = getattr(model, "surrogate_info", None)
    if isinstance(extra, dict):
        d.update({k: v for k, v in extra.items() if k not in ("key_doc", "config")})
    return d


def _fmt(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        return ",".join(str(x) for x in v)
    return str(v)


__all__ = ["surrogate_config", "surrogate_key", "train_surrogate", "make_surrogate_fn", "get_surrogate",
           "surrogate_details"]
