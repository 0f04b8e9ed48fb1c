"""Countermeasures: the exploiter's side — train on protected data and still learn (spec §3, §4).

A countermeasure is registered by name and acts on the one training loop only through
:class:`~ueperf.engine.hooks.TrainHook`s (on the training images once, on each batch, on the
loss, on the learning rate, at epoch end) and through the defaults it sets on the run config:

    class Countermeasure:
        name, summary
        configure(cfg, user)  # defaults it implies (e.g. ST-CG: CG on, lr 0.2); keys in user (--set) win
        check(cfg)       # ConfigError for values it cannot run with
        hooks(cfg)       # the TrainHooks it adds, in order

``RunConfig.countermeasure`` names one or several joined by ``+`` (``st_cg+cutout``); ``nt`` is
plain training (spec §3.0). :func:`configure` and :func:`build_hooks` are what the CLIs call.
"""
from __future__ import annotations

from typing import Any, List, Set, Tuple

from ..errors import ConfigError
from ..registry import Registry


COUNTERMEASURES: Registry = Registry("countermeasure", package=__name__)


class Countermeasure:
    """Base class: a countermeasure that changes nothing (plain training).

    ``options``: the dotted config keys it reads, each validated by :meth:`check` (a nonsense value
    is a ConfigError naming the key: tests/test_countermeasures_registry.py tries one per key).
    ``records``: the keys it adds to every trained epoch's record in records.jsonl.
    """

    name = ""
    summary = ""
    options: Tuple[str, ...] = ()
    records: Tuple[str, ...] = ()

    def configure(self, cfg: Any, user: Set[str] = frozenset()) -> None:
        """Set the config defaults this countermeasure implies; ``user`` holds the dotted keys the
        user set (--set), which keep the user's value (use :func:`ueperf.config.set_default`)."""

    def check(self, cfg: Any) -> None:
        """Raise ConfigError for config values this countermeasure cannot run with."""

    def hooks(self, cfg: Any) -> List[Any]:
        """The TrainHooks it adds to the training loop."""
        return []


def parse(names: str) -> List[Countermeasure]:
    """``"st_cg+cutout"`` → instances, in order. ``nt`` (or "") alone is plain training."""
    parts = [p.strip() for p in str(names or "nt").split("+") if p.strip()]
    if not parts:
        parts = ["nt"]
    if len(set(parts)) != len(parts):
        raise ConfigError(f"countermeasure={names!r} names one countermeasure twice")
    if len(parts) > 1 and "nt" in parts:
        parts = [p for p in parts if p != "nt"]  # nt + X is X
    return [COUNTERMEASURES.get(p)() for p in parts]


def configure(cfg: Any, user: Set[str] = frozenset()) -> Any:
    """Apply the defaults of ``cfg.countermeasure`` to ``cfg`` (in place; returns it), leaving
    the keys in ``user`` (set by the user) alone."""
    from .. import paradigms
    paradigms.configure(cfg, user)
    for cm in parse(cfg.countermeasure):
        cm.configure(cfg, set(user))
    return cfg


def build_hooks(cfg: Any) -> List[Any]:
    """Check ``cfg`` against its paradigm and countermeasures and return their hooks: the
    paradigm's first (it decides what trains), then each countermeasure's, in order."""
    from .. import paradigms
    from ..engine.validate import check_run_config
    check_run_config(cfg)  # the engine's sections first: every bad value fails before anything is written
    cms = parse(cfg.countermeasure)
    losses = [cm.name for cm in cms if getattr(cm, "replaces_loss", False)]
    if len(losses) > 1:
        raise ConfigError(f"countermeasure={cfg.countermeasure!r}: {' and '.join(losses)} each replace "
                          f"the training loss; combine at most one of them with others")
    hooks: List[Any] = paradigms.build_hooks(cfg)
    for cm in cms:
        cm.check(cfg)
        hooks.extend(cm.hooks(cfg))
    return hooks


def describe() -> List[str]:
    """``name — summary`` lines for listings."""
    return [f"{n} — {COUNTERMEASURES.get(n).summary}" for n in COUNTERMEASURES.names()]
