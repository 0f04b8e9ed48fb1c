"""The generation driver: method name + clean store → protected store (used by the CLI and tests).

::

    resolve Config (defaults, then --set overrides, type-checked)
      ─▶ ProtectContext (clean x/y on the device, shard, gather/broadcast, surrogate, log, seed)
      ─▶ method.generate(ctx) -> Perturbation                              craft()
      ─▶ partial protection: indices = select_indices(ratio, seed)
      ─▶ apply (rank 0) ─▶ measure, check against size_limit (a violation is a bug: raise)
      ─▶ write_protected (atomic store, manifest) ─▶ grid.png               finalize()

:func:`generate_protected` does both. The output path defaults to
``<cache_dir>/protected/<method>-<clean store name>-<key12>``, the key being the sha256 of the
method, its resolved config, ratio, seed, the surrogate overrides and the clean store's array
hashes; an existing store with the same key is reused (opened and verified), anything else at the
path is refused unless ``overwrite``. Device and process count are not part of the key.

Distributed (torchrun): every rank runs this; sample-wise methods craft ``ctx.shard`` =
``arange(N)[rank::world]`` and ``ctx.gather`` reassembles the full δ on every rank
(:func:`ueperf.parallel.gather_rows`; ``ctx.broadcast`` is :func:`ueperf.parallel.broadcast_tensor`).
Rank 0 applies δ and writes the store; the others wait for it and open the result.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .. import parallel
from ..config import apply_overrides
from ..data.protected import open_protected, write_protected
from ..data.store import MANIFEST, STORE_FILES, Store, is_store, open_store
from ..errors import ConfigError, DataError
from . import PROTECTIONS
from ..data.budget import NORMS, measure, size_limit
from ..files import check_replaceable, clean_leftovers, default_cache_dir, hold, json_safe
from .base import GRANULARITIES, Perturbation, ProtectContext, apply, select_indices
from .surrogate import make_surrogate_fn

KEY_VERSION = 2      # bump when the meaning of a config changes without its fields changing
                     # (2: AEP paugment / BAIT outer_eot no longer gray a fifth of their EOT images)
LOG_KEEP = 200       # ctx.log entries kept in the manifest (the last ones)
_LOG_MEMORY = 10000  # entries held in memory during a run


# ───────────────────────────────────────────── config ──
def resolve_config(method: str, overrides: Sequence[str] = ()) -> Tuple[type, Any]:
    """(method class, its Config instance with ``overrides`` applied and checked)."""
    cls = PROTECTIONS.get(method)
    Cfg = getattr(cls, "Config", None)
    if Cfg is None or not dataclasses.is_dataclass(Cfg):
        raise TypeError(f"protection {method!r} ({cls.__name__}) has no Config dataclass")
    cfg = Cfg()
    try:
        apply_overrides(cfg, list(overrides))
    except ConfigError as e:
        raise ConfigError(f"method {method!r}: {e}") from None
    check_config(method, cfg)
    return cls, cfg


def check_config(method: str, cfg: Any) -> None:
    """The contract every Config meets: ``eps`` > 0 and ``norm`` in NORMS; ``granularity`` and
    ``batch_size`` valid where present. ConfigError names the key."""
    names = {f.name for f in dataclasses.fields(cfg)}
    for k in ("eps", "norm"):
        if k not in names:
            raise TypeError(f"protection {method!r}: Config must have an {k!r} field (method contract)")
    if cfg.norm not in NORMS:
        raise ConfigError(f"method {method!r}: norm={cfg.norm!r}; expected one of {', '.join(NORMS)}")
    # eps = 0 is allowed as "the method's own default" (HYPO resolves it from a preset); the
    # budget recorded and checked is always the one on the returned Perturbation.
    if not (isinstance(cfg.eps, (int, float)) and math.isfinite(cfg.eps) and cfg.eps >= 0):
        raise ConfigError(f"method {method!r}: eps={cfg.eps!r}; must be a number > 0 in [0,1] pixel "
                          f"units (e.g. eps=8/255), or a pixel count for norm=l0")
    if cfg.norm == "linf" and cfg.eps > 1:
        raise ConfigError(f"method {method!r}: eps={cfg.eps} with norm=linf is more than the whole "
                          f"[0,1] pixel range; ε is in [0,1] units (8/255, not 8)")
    if "granularity" in names and cfg.granularity not in GRANULARITIES:
        raise ConfigError(f"method {method!r}: granularity={cfg.granularity!r}; expected one of "
                          f"{', '.join(GRANULARITIES)}")
    if "batch_size" in names and not (isinstance(cfg.batch_size, int) and cfg.batch_size >= 1):
        raise ConfigError(f"method {method!r}: batch_size={cfg.batch_size!r}; must be an integer >= 1")


def protection_key(method: str, cfg: Any, ratio: float, seed: int, clean: Store,
                   surrogate_overrides: Sequence[str] = ()) -> Tuple[str, Dict[str, Any]]:
    """(hex sha256, the document it hashes) naming one protected set."""
    doc = {"key_version": KEY_VERSION, "method": method, "config": json_safe(dataclasses.asdict(cfg)),
           "ratio": float(ratio), "seed": int(seed), "surrogate_overrides": list(surrogate_overrides),
           "clean_hashes": {f: e["sha256"] for f, e in sorted(clean.manifest["files"].items())}}
    prior = getattr(cfg, "prior", "")
    if prior and Path(prior).expanduser().is_file():  # a checkpoint rewritten in place is another prior
        from ..files import sha256_file
        doc["prior_sha256"] = sha256_file(Path(prior).expanduser())
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest(), doc


def default_out(method: str, clean: Store, key: str, cache_dir: Optional[Union[str, os.PathLike]] = None) -> Path:
    root = Path(os.path.expanduser(str(cache_dir or default_cache_dir()))).absolute()
    return root / "protected" / f"{method}-{clean.name}-{key[:12]}"


def open_clean(clean: Union[Store, str, os.PathLike], verify: bool = True) -> Store:
    """The clean store to protect (a Store or a store folder). A protected store is refused."""
    st = clean if isinstance(clean, Store) else open_store(clean, verify=verify)
    if st.kind != "clean":
        raise ConfigError(f"{st.path} is a {st.kind} store; protect the clean store it was made from "
                          f"(its manifest's meta.clean_source.path: "
                          f"{st.manifest.get('meta', {}).get('clean_source', {}).get('path')})")
    return st


# ───────────────────────────────────────────── craft ──
SET_FLAG = "--set "  # how `python -m ueperf.protect` sets a method key; a sweep's is --protect-set LABEL:


@dataclass
class Crafted:
    """The result of running a method: its perturbation and how it was made."""
    method: str
    cfg: Any
    pert: Perturbation
    seed: int
    generation_time_s: float
    device: str
    world_size: int
    logs: List[Dict[str, Any]] = field(default_factory=list)
    surrogates: List[Dict[str, Any]] = field(default_factory=list)
    overrides: List[str] = field(default_factory=list)            # the --set strings, as given
    surrogate_overrides: List[str] = field(default_factory=list)  # forced on every surrogate (part of the key)
    warnings: List[str] = field(default_factory=list)             # what the user should know (printed, manifest)
    set_flag: str = SET_FLAG                                      # how the printed advice sets a method key


def advice_for(warning: str, set_flag: str = SET_FLAG) -> str:
    """``warning`` with its advice (``--set KEY=VALUE``) written for the command at hand: ``set_flag``
    is ``"--set "`` for ``protect`` (as the manifest keeps it) and ``"--protect-set LABEL:"`` in a
    sweep, whose rows take method keys that way."""
    return warning if set_flag == SET_FLAG else re.sub(r"--set (?=[A-Za-z_][\w.]*=)", lambda _: set_flag, warning)


def _logger(progress: bool, store: List[Dict[str, Any]]) -> Callable[[Dict[str, Any]], None]:
    t0 = time.perf_counter()
    last = [0.0]

    def log(d: Dict[str, Any]) -> None:
        entry = json_safe(dict(d))
        entry["t_s"] = round(time.perf_counter() - t0, 3)
        if len(store) >= _LOG_MEMORY:
            del store[: _LOG_MEMORY // 2]
        store.append(entry)
        now = time.perf_counter()
        if progress and now - last[0] >= 1.0:  # at most one line a second on the terminal
            last[0] = now
            from tqdm.auto import tqdm
            tqdm.write("  " + "  ".join(f"{k}={_short(v)}" for k, v in entry.items()), file=sys.stderr)
    return log


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def craft(method: str, clean: Union[Store, str, os.PathLike], *, overrides: Sequence[str] = (), seed: int = 0,
          device: Union[str, torch.device] = "auto", progress: bool = True,
          cache_dir: Optional[Union[str, os.PathLike]] = None, surrogate_overrides: Sequence[str] = (),
          dist: Optional[parallel.DistContext] = None, set_flag: str = SET_FLAG, **ctx_extra: Any) -> Crafted:
    """Run ``method`` on the clean store and return its checked :class:`Crafted` perturbation.

    ``ctx_extra`` replaces ProtectContext fields (e.g. ``surrogate=`` a custom provider).
    ``set_flag``: how the advice of printed warnings sets a method key (:func:`advice_for`).
    """
    cls, cfg = resolve_config(method, overrides)
    store = open_clean(clean)
    dist = dist or parallel.DistContext()
    dev = torch.device(device) if isinstance(device, torch.device) else parallel.resolve_device(device, dist.local_rank)
    bad = set(ctx_extra) - {f.name for f in dataclasses.fields(ProtectContext)}
    if bad:
        raise TypeError(f"craft: unknown ProtectContext fields {sorted(bad)}")
    n = len(store.train)
    show = bool(progress) and dist.is_main
    logs: List[Dict[str, Any]] = []
    surrogates: List[Dict[str, Any]] = []
    # Model initialisations inside a method use the global generators: seed them too.
    from ..engine.trainer import seed_everything
    seed_everything(int(seed))
    x = torch.from_numpy(np.array(store.train.x, copy=True)).to(dev)  # an owned copy: the memmap is read-only
    y = torch.from_numpy(np.asarray(store.train.y, dtype=np.int64)).to(dev)
    shard = torch.arange(n, device=dev)[dist.rank::dist.world_size]
    fields = dict(
        x=x, y=y, num_classes=store.num_classes, classes=store.classes, cfg=cfg, seed=int(seed), device=dev,
        rank=dist.rank, world_size=dist.world_size, shard=shard, progress=show,
        surrogate=make_surrogate_fn(store, device=dev, seed=int(seed), cache_dir=cache_dir, progress=show,
                                    dist=dist, forced=surrogate_overrides, record=surrogates),
        gather=lambda rows: parallel.gather_rows(rows, shard, n, dist), broadcast=lambda t, src=0: parallel.broadcast_tensor(t, dist, src), log=_logger(show, logs))
    fields.update(ctx_extra)
    ctx = ProtectContext(**fields)
    _sync(dev)
    t0 = time.perf_counter()
    pert = cls().generate(ctx)
    _sync(dev)
    dt = time.perf_counter() - t0
    _check_perturbation(method, cfg, pert, store)
    warnings = _stop_test_warnings(method, cfg, pert)
    if dist.is_main:
        for w in warnings:
            print(f"warning: {advice_for(w, set_flag)}", file=sys.stderr, flush=True)
    return Crafted(method=method, cfg=cfg, pert=pert, seed=int(seed), generation_time_s=dt, device=str(dev),
                   world_size=dist.world_size, logs=logs, surrogates=surrogates, overrides=list(overrides),
                   surrogate_overrides=list(surrogate_overrides), warnings=warnings, set_flag=set_flag)


# ───────────────────────────────────────────── will it do what the user wants ──
def _stop_test_warnings(method: str, cfg: Any, pert: Perturbation) -> List[str]:
    """A method with a stop test (``info["stopped"]``: EM, SSC) that ended at its round cap instead
    made weaker noise than its published form, which loops until the test passes."""
    info = pert.info or {}
    if info.get("stopped") is not False:
        return []
    acc, cap = info.get("surrogate_acc"), getattr(cfg, "max_rounds", None)
    target = 1 - getattr(cfg, "stop_error", 0.0)
    acc_text = f" with the surrogate at {100 * acc:.1f} %" if isinstance(acc, (int, float)) else ""
    rounds = info.get("rounds", cap)
    return [f"{method} stopped at its round cap (max_rounds={cap}) after {rounds} round{'s' if rounds != 1 else ''}"
            f"{acc_text} on "
            f"the perturbed training set, short of its stop test (> {100 * target:.0f} %): the noise is weaker "
            f"than the method's published form, which loops until the test passes. Raise the cap "
            f"(--set max_rounds={2 * cap if isinstance(cap, int) else 'N'}) or accept it knowingly"]


BUDGET_USED_MIN = 0.5  # a protection whose measured size is below this fraction of its ε is warned of


def _budget_warnings(method: str, pert: Perturbation, size: Dict[str, Any], limit: float) -> List[str]:
    """A protection that uses little of its ε budget is weaker than the ε it is reported at."""
    if limit <= 0 or size["size"] >= BUDGET_USED_MIN * limit:
        return []
    unit = "pixels" if pert.norm == "l0" else "grey levels"
    used = (f"at most {size['max_abs']} of the {limit:.0f} grey levels ε allows" if pert.norm == "linf"
            else f"{size['size']:.3g} of the {limit:.3g} {unit} ε allows")
    hint = ("try more PGD steps (--set steps=N) or a larger step (--set alpha=...) for class-wise noise"
            if pert.granularity == "class" else "check its PGD step size × steps (and rounds, where it has them)")
    return [f"{method} ({pert.granularity}-wise, {pert.norm} ε={_eps_str(pert)}) changes the images by {used} "
            f"(mean |x'-x| {size['mean_abs']:.2f}): it is weaker than its budget and should not be reported "
            f"as an ε={_eps_str(pert)} protection without saying so; {hint}"]


def estimate_cost(method: str, cfg: Any, store: Store, device: Any) -> Optional[Tuple[float, str]]:
    """(seconds, what) for a method that states its work (``work(cfg, n, num_classes)``), from a
    quick timing on this machine; None for the others (model-free methods that take seconds).

    ``work`` returns ``passes`` (image passes of its surrogate ``model`` at ``width``, timed by
    :func:`ueperf.engine.cost.measure_rate` on ``device``) or, for work that is not a model's,
    ``passes`` units of ``unit`` and ``measure(height, width, channels)``: units per second here."""
    work = getattr(PROTECTIONS.get(method), "work", None)
    if work is None:
        return None
    from ..engine.cost import measure_rate
    w = work(cfg, len(store.train), store.num_classes)
    H, W, C = store.image_shape
    if "measure" in w:
        rate, unit, per = w["measure"](H, W, C), w["unit"], "/s"
    else:
        rate, unit, per = measure_rate(w["model"], w["width"], store.num_classes, H, device, channels=C), \
            "image passes", " img/s"
    return w["passes"] / rate, f"{w['what']}: {w['passes']:.3g} {unit} at {rate:.0f}{per} measured"


def _check_perturbation(method: str, cfg: Any, pert: Any, store: Store) -> None:
    """What a method returns must match its contract; a mismatch is a bug in the method."""
    where = f"protection {method!r} returned"
    if not isinstance(pert, Perturbation):
        raise TypeError(f"{where} {type(pert).__name__}, not a Perturbation")
    d = pert.delta
    rows = len(store.train) if pert.granularity == "sample" else store.num_classes
    if tuple(d.shape) != (rows, *store.image_shape):
        raise RuntimeError(f"{where} a {pert.granularity}-wise δ of shape {tuple(d.shape)}; expected "
                           f"{(rows, *store.image_shape)} (NHWC, one row per "
                           f"{'training sample' if pert.granularity == 'sample' else 'class'})")
    if d.dtype != torch.float32:
        raise RuntimeError(f"{where} δ of dtype {d.dtype}; the contract is float32 in [0,1] pixel units")
    if not bool(torch.isfinite(d).all()):
        raise RuntimeError(f"{where} a δ with NaN/inf entries")
    if not (pert.eps > 0 and math.isfinite(pert.eps)):
        raise RuntimeError(f"{where} eps={pert.eps}; the budget of a perturbation must be > 0")
    if pert.norm != cfg.norm or (cfg.eps > 0 and not math.isclose(pert.eps, cfg.eps, rel_tol=1e-6, abs_tol=1e-12)):
        raise RuntimeError(f"{where} norm={pert.norm} eps={pert.eps} but its config says norm={cfg.norm} "
                           f"eps={cfg.eps}; the manifest must describe the real budget")
    if "granularity" in {f.name for f in dataclasses.fields(cfg)} and pert.granularity != cfg.granularity:
        raise RuntimeError(f"{where} a {pert.granularity}-wise δ but its config asks for {cfg.granularity}")


# ───────────────────────────────────────────── finalize ──
def finalize(crafted: Crafted, clean: Union[Store, str, os.PathLike], *, ratio: float = 1.0,
             out: Optional[Union[str, os.PathLike]] = None, cache_dir: Optional[Union[str, os.PathLike]] = None,
             overwrite: bool = False, grid: bool = True, dist: Optional[parallel.DistContext] = None,
             progress: bool = False) -> Store:
    """Apply the crafted δ to (a ``ratio`` of) the clean training set and write the protected store.

    Only rank 0 applies and writes; every rank returns the opened store (or raises rank 0's error).
    """
    store = open_clean(clean, verify=False)
    dist = dist or parallel.DistContext()
    n = len(store.train)
    idx = select_indices(n, ratio, crafted.seed)
    pert = crafted.pert
    if pert.indices is None and idx is not None:
        pert = dataclasses.replace(pert, indices=idx)
    key, doc = protection_key(crafted.method, crafted.cfg, ratio, crafted.seed, store, crafted.surrogate_overrides)
    path = Path(out).expanduser().absolute() if out else default_out(crafted.method, store, key, cache_dir)
    if dist.world_size == 1:
        return _write(crafted, pert, store, path, key, doc, ratio, overwrite, grid, progress)
    failure: Optional[BaseException] = None
    if dist.is_main:
        try:
            _write(crafted, pert, store, path, key, doc, ratio, overwrite, grid, progress)
        except BaseException as e:  # re-raised below, after the other ranks have heard of it
            failure = e
    err = parallel.broadcast_object(None if failure is None else f"{type(failure).__name__}: {failure}", dist)
    if failure is not None:
        raise failure
    if err is not None:
        raise DataError(f"rank 0 failed to write the protected store {path}: {err}")
    return open_store(path, verify=False)


def _write(crafted: Crafted, pert: Perturbation, store: Store, path: Path, key: str, doc: Dict[str, Any],
           ratio: float, overwrite: bool, grid: bool, progress: bool) -> Store:
    cfg = crafted.cfg
    check_replaceable(path, overwrite=overwrite, what="protected store", marker=MANIFEST,
                      allowed=(*STORE_FILES, "grid.png"), inputs=[store.path])
    with hold(path, what="protected store", hint=_BUSY_HINT):
        return _write_locked(crafted, pert, store, path, key, doc, ratio, overwrite, grid, progress, cfg)


_BUSY_HINT = ("Another protection is writing it: wait for it to finish (the same request then reuses its "
              "store), or choose another --out")


def _write_locked(crafted: Crafted, pert: Perturbation, store: Store, path: Path, key: str, doc: Dict[str, Any],
                  ratio: float, overwrite: bool, grid: bool, progress: bool, cfg: Any) -> Store:
    t0 = time.perf_counter()
    x_prot = apply(store.train.x, store.train.y, pert)
    size = measure(store.train.x, x_prot, pert.norm, device=pert.delta.device)
    limit = size_limit(pert.norm, pert.eps, int(np.prod(store.image_shape)))
    if size["size"] > limit + 1e-9:
        raise RuntimeError(f"bug in protection {crafted.method!r}: its images change by {size['size']:.3g} "
                           f"({pert.norm}, grey levels/pixels) but ε={pert.eps:.6g} allows {limit:.3g}; "
                           f"nothing was written")
    budget = _budget_warnings(crafted.method, pert, size, limit)
    for w in budget:
        print(f"warning: {advice_for(w, crafted.set_flag)}", file=sys.stderr, flush=True)
    gran = pert.granularity
    meta = {
        "method": crafted.method,
        "config": json_safe(dataclasses.asdict(cfg)), "overrides": crafted.overrides,
        "surrogate_overrides": crafted.surrogate_overrides,
        "eps": float(pert.eps), "norm": pert.norm, "granularity": gran,
        "seed": crafted.seed, "ratio": float(ratio),
        "key": key, "key_doc": doc,
        "size": dict(json_safe(size), limit=limit,
                     unit="pixels" if pert.norm == "l0" else "grey levels (0-255)"),
        "generation_time_s": round(crafted.generation_time_s, 3),
        "device": crafted.device, "world_size": crafted.world_size,
        "info": json_safe(pert.info),
        "surrogates": json_safe(crafted.surrogates),
        "log_tail": crafted.logs[-LOG_KEEP:], "log_entries": len(crafted.logs),
        "warnings": [*crafted.warnings, *budget],
        "torch_version": torch.__version__,
        "cuda_device": torch.cuda.get_device_name() if crafted.device.startswith("cuda") else None,
    }
    # Surrogate details the method reported (Perturbation.info["surrogate"]) or the cached ones.
    meta["surrogate"] = json_safe(pert.info.get("surrogate", crafted.surrogates[0] if crafted.surrogates else None))
    out = write_protected(path, store, x_prot, meta, indices=pert.indices, overwrite=overwrite)
    meta_time = time.perf_counter() - t0
    if grid:
        from ..reports.grid import save_grid
        save_grid(store.train.x, out.train.x, out.path / "grid.png", n=min(max(store.num_classes, 8), 10),
                  labels=store.train.y, classes=store.classes,
                  indices=pert.indices,
                  title=f"{Path(path).name}: {crafted.method} ({gran}-wise, {pert.norm} ε={_eps_str(pert)}) on "
                        f"{store.name}, seed {crafted.seed}" + (f", ratio {ratio:g}" if ratio < 1 else ""))
    if progress:
        print(f"wrote {path} in {meta_time:.1f} s (apply + measure + write)", file=sys.stderr)
    return out


def _eps_str(pert: Perturbation) -> str:
    if pert.norm == "l0":
        return f"{pert.eps:g} px"
    return f"{pert.eps * 255:.3g}/255" if pert.norm == "linf" else f"{pert.eps:.3g}"


# ───────────────────────────────────────────── one call ──
def generate_protected(method: str, clean_store: Union[Store, str, os.PathLike], *, overrides: Sequence[str] = (),
                       ratio: float = 1.0, seed: int = 0, out: Optional[Union[str, os.PathLike]] = None,
                       device: Union[str, torch.device] = "auto", progress: bool = True,
                       cache_dir: Optional[Union[str, os.PathLike]] = None,
                       surrogate_overrides: Sequence[str] = (), overwrite: bool = False, reuse: bool = True,
                       grid: bool = True, dist: Optional[parallel.DistContext] = None, set_flag: str = SET_FLAG,
                       **ctx_extra: Any) -> Store:
    """Protect ``clean_store`` with ``method`` and return the written (or reused) protected store.

    overrides: ``["key=value", ...]`` on the method's Config (type-checked; unknown key = ConfigError).
    ratio: fraction of training samples protected (0, 1], a subset seeded by ``seed`` (spec §6.4).
    seed: every random number of the method derives from it (same seed → same bytes).
    out: store folder (default: keyed under ``<cache_dir>/protected``). device: auto | cpu | cuda[:N].
    surrogate_overrides: RunConfig ``key=value`` applied to every surrogate the method trains,
    after the method's own choices (e.g. ``model.width=0.125`` for quick looks and tests).
    reuse: return an existing store at the output path that has the same key, without crafting.
    dist: the DistContext under torchrun (default: a single process).
    set_flag: how the advice of printed warnings sets a method key: ``"--set "`` (protect), or
    ``"--protect-set LABEL:"`` in a sweep; the manifest keeps the ``--set`` form (:func:`advice_for`).
    """
    _, cfg = resolve_config(method, overrides)
    if int(seed) < 0:
        raise ConfigError(f"seed={seed}: must be >= 0")
    store = open_clean(clean_store)
    select_indices(len(store.train), ratio, seed)  # rejects a bad ratio before any work
    dist = dist or parallel.DistContext()
    key, _ = protection_key(method, cfg, ratio, seed, store, surrogate_overrides)
    path = Path(out).expanduser().absolute() if out else default_out(method, store, key, cache_dir)
    # One writer per output for the whole run (rank 0 writes; under torchrun the others follow it).
    # The default output is keyed by the request, so a second identical request waits and reuses it;
    # an explicit --out held by another writer is an error.
    lock = hold(path, wait_s=0 if out else 24 * 3600, what="protected store", hint=_BUSY_HINT) \
        if dist.is_main else None
    try:
        if dist.is_main:
            clean_leftovers(path)  # temp folders of a killed writer of this output
        if reuse and not overwrite and is_store(path):
            existing = open_store(path, verify=False).manifest.get("meta", {}).get("key")
            if existing == key:
                if progress and dist.is_main:
                    print(f"reusing {path} (same method, config, ratio, seed and clean data)", file=sys.stderr)
                return open_protected(path, store)
            raise DataError(f"{path} already holds a different store (made with other settings); pass "
                            f"--overwrite to replace it, or choose another --out")
        if dist.is_main:  # before hours of crafting, not after
            check_replaceable(path, overwrite=overwrite, what="protected store", marker=MANIFEST,
                              allowed=(*STORE_FILES, "grid.png"), inputs=[store.path])
            if progress:
                print(f"protected store: {path}/ (written when {method} finishes)", file=sys.stderr, flush=True)
        pre: List[str] = []
        if dist.is_main:  # what it will cost, before it starts
            dev = device if isinstance(device, torch.device) else parallel.resolve_device(device, dist.local_rank)
            est = estimate_cost(method, cfg, store, dev)
            if est is not None:
                from ..engine.cost import announce
                warn = announce(f"protecting {len(store.train)} images with {method}", est[0], dev, est[1])
                pre += [warn] if warn else []
        crafted = craft(method, store, overrides=overrides, seed=seed, device=device, progress=progress,
                        cache_dir=cache_dir, surrogate_overrides=surrogate_overrides, dist=dist, set_flag=set_flag,
                        **ctx_extra)
        crafted.warnings[:0] = pre
        return finalize(crafted, store, ratio=ratio, out=path, overwrite=overwrite, grid=grid, dist=dist,
                        progress=progress and dist.is_main)
    finally:
        if lock is not None:
            lock.release()


__all__ = ["resolve_config", "check_config", "protection_key", "default_out", "open_clean", "craft",
           "finalize", "generate_protected", "Crafted", "advice_for"]
