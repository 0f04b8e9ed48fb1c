"""Grids of victim runs: protections × countermeasures × paradigms × seeds.

One **cell** is one victim training run, ``(row, countermeasure, paradigm, seed)``:

- a **row** is the training data: ``clean``, a protection method (``em``), or ``LABEL=METHOD``
  (a variant row with its own method overrides, ``em_class=em`` + ``granularity=class``);
- the **seed** is the replicate: the protection is crafted with seed s and the victim trains with
  ``train.seed = s``, so the spread over seeds covers both.

Every cell is an ordinary run folder ``OUT/runs/<row>__<paradigm>__<countermeasure>__s<seed>``: a
finished one is reused, an interrupted one resumed, so rerunning a grid continues it. A protected
store is made once per (row, seed), before the cells that train on it, and cached by its key
(method, config, seed, clean data) in ``data.cache_dir``. All cells' configs are built and
checked before the first cell starts (:meth:`GridRunner.validate`).

Used by ``python -m ueperf.sweep`` (tables) and bench/effects.py (named checks); the cells run
where :mod:`ueperf.launch` puts them (this process, a local pool, SLURM jobs).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .errors import ConfigError, UeperfError

CLEAN = "clean"
# Summary fields collected per cell (the companion tables of a sweep).
METRICS = ("final_test_acc", "best_test_acc", "final_train_acc", "total_time_s", "mean_images_per_s")


# ───────────────────────────────────────────── the spec ──
@dataclass(frozen=True)
class Row:
    """A row of the grid: ``label`` names it, ``method`` ("" = the clean data) crafts its store
    with ``overrides`` (the method's Config ``key=value``)."""
    label: str
    method: str = ""
    overrides: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Cell:
    row: str
    countermeasure: str
    paradigm: str = "fs"
    seed: int = 0

    @property
    def name(self) -> str:
        """The run folder's name."""
        return f"{self.row}__{self.paradigm}__{self.countermeasure}__s{self.seed}"


@dataclass
class Grid:
    """What to run. ``overrides`` are the victims' ``--set`` values; ``prior`` a state dict or a
    recipe (built and cached with :func:`ueperf.prior.build_prior` and ``prior_sets``) for every
    paradigm but ``fs``; ``surrogate_sets`` apply to every surrogate a protection trains."""
    dataset: str
    rows: List[Row]
    countermeasures: List[str]
    out: Path
    root: str = ""
    data_sets: List[str] = field(default_factory=list)
    paradigms: List[str] = field(default_factory=lambda: ["fs"])
    seeds: List[int] = field(default_factory=lambda: [0])
    recipe: str = "cifar10_resnet18"
    overrides: List[str] = field(default_factory=list)
    prior: str = ""
    prior_sets: List[str] = field(default_factory=list)
    surrogate_sets: List[str] = field(default_factory=list)
    device: str = "auto"
    progress: bool = True

    def cells(self) -> List[Cell]:
        """Every cell, row-major (row, paradigm, countermeasure, seed): a store's cells run together."""
        return [Cell(r.label, c, p, s) for r in self.rows for s in self.seeds for p in self.paradigms
                for c in self.countermeasures]

    def column(self, cell: Cell) -> str:
        """The table column of a cell: the countermeasure (paradigm fs only), the paradigm
        (countermeasure nt only), else ``paradigm/countermeasure``."""
        if self.paradigms == ["fs"]:
            return cell.countermeasure
        if self.countermeasures == ["nt"]:
            return cell.paradigm
        return f"{cell.paradigm}/{cell.countermeasure}"

    def columns(self) -> List[str]:
        return list(dict.fromkeys(self.column(Cell("", c, p)) for p in self.paradigms for c in self.countermeasures))

    def row(self, label: str) -> Row:
        return next(r for r in self.rows if r.label == label)


def parse_rows(spec: str, protect_sets: Sequence[str] = ()) -> List[Row]:
    """Rows from ``--protections`` (``clean,em,em_class=em``) and ``--protect-set LABEL:KEY=VALUE``."""
    labels: List[Tuple[str, str]] = []
    for item in (i.strip() for i in spec.split(",")):
        if not item:
            continue
        label, _, method = item.partition("=")
        label, method = label.strip(), (method.strip() or label.strip())
        if not label or label in dict(labels):
            raise ConfigError(f"--protections: {item!r} " + ("repeats a row name" if label else "has no row name")
                              + "; give each row its own name (LABEL=METHOD for a variant)")
        if "__" in label or "/" in label:
            raise ConfigError(f"--protections: row name {label!r} may not contain '__' or '/' (it names run folders)")
        labels.append((label, method))
    if not labels:
        raise ConfigError("--protections needs at least one row (e.g. clean,em)")
    sets: Dict[str, List[str]] = {label: [] for label, _ in labels}
    for item in protect_sets:
        if ":" not in item or "=" not in item.split(":", 1)[1]:
            raise ConfigError(f"--protect-set {item!r}: expected LABEL:KEY=VALUE (e.g. em:max_rounds=10)")
        label, kv = item.split(":", 1)
        if label not in sets:
            raise ConfigError(f"--protect-set {item!r}: {label!r} is not in --protections ({', '.join(sets)})")
        if label == CLEAN:
            raise ConfigError(f"--protect-set {item!r}: the clean row has no protection to configure")
        sets[label].append(kv)
    return [Row(label, "" if label == CLEAN else method, tuple(sets[label])) for label, method in labels]


def parse_list(spec: str, what: str) -> List[str]:
    out = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not out:
        raise ConfigError(f"--{what} needs at least one name")
    if len(set(out)) != len(out):
        raise ConfigError(f"--{what} {spec!r} names one entry twice")
    return out


def parse_seeds(spec: str) -> List[int]:
    try:
        seeds = [int(s) for s in parse_list(spec, "seeds")]
    except ValueError:
        raise ConfigError(f"--seeds {spec!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if any(s < 0 for s in seeds):
        raise ConfigError(f"--seeds {spec!r}: seeds must be >= 0")
    return seeds


def prior_arch(prior: Path) -> Dict[str, str]:
    """model, width, stem of a prior from the ``prior.json`` that ``ueperf.prior`` writes beside it
    ({} when there is none, e.g. a torchvision checkpoint)."""
    meta = prior.parent / "prior.json"
    if not meta.is_file():
        return {}
    m = json.loads(meta.read_text())
    mc = (m.get("config") or {}).get("model") or {}
    return {k: str(v) for k, v in (("model", mc.get("name", m.get("model"))), ("width", mc.get("width", m.get("width"))),
                                   ("stem", mc.get("stem"))) if v not in (None, "")}


# ───────────────────────────────────────────── running ──
class GridRunner:
    """Builds the clean store, the prior and the protected stores of a :class:`Grid`, and runs or
    reads its cells. Nothing heavy happens in the constructor."""

    def __init__(self, grid: Grid):
        self.g = grid
        self._clean = None
        self._prior: Optional[Path] = None
        self._stores: Dict[Tuple[str, int], Any] = {}
        self.gen_time: Dict[str, float] = {}

    # -- configs ---------------------------------------------------------------------------
    def _victim(self):
        from .recipes import build
        return build(self.g.recipe, self.g.overrides)

    def validate(self) -> None:
        """Every name and every cell's config, checked before any work (a bad ``st_full`` setting
        fails now, not when its cell is reached)."""
        from .countermeasures import build_hooks
        from .paradigms import get as paradigm
        from .protections import PROTECTIONS
        from .protections.runner import resolve_config
        g = self.g
        if any(k.split("=", 1)[0].strip() == "train.seed" for k in g.overrides):
            raise ConfigError("--set train.seed: a grid's victims take their seed from --seeds (replicate s "
                              "crafts with seed s and trains with train.seed=s)")
        for r in g.rows:
            if r.method:
                PROTECTIONS.get(r.method)
                resolve_config(r.method, self._row_overrides(r, check_only=True))
        for p in g.paradigms:
            paradigm(p)
        if any(p != "fs" for p in g.paradigms) and not g.prior:
            raise ConfigError("--paradigms other than fs start from a pretrained prior: pass --prior PATH (a state "
                              "dict) or --prior RECIPE (built and cached on that recipe's dataset)")
        for cell in g.cells():
            cfg = self.cell_config(cell, store_path="<store>", prior="<prior>")
            build_hooks(cfg)

    def cell_sets(self, cell: Cell, store_path: str, prior: Optional[str] = None) -> List[str]:
        """The ``--set`` values of a cell's victim: with the recipe, the countermeasure and the
        paradigm they are the cell's whole config (``python -m ueperf.train`` takes the same)."""
        sets = [*self.g.overrides, f"train.seed={cell.seed}", f"data.dataset={store_path}",
                f"out_dir={self.g.out / 'runs'}", f"name={cell.name}",
                f"train.progress={'true' if self.g.progress else 'false'}"]
        if cell.paradigm != "fs":
            sets.append(f"model.pretrained={prior if prior is not None else self.prior()}")
        return sets

    def cell_config(self, cell: Cell, store_path: str, prior: Optional[str] = None):
        from .recipes import build
        return build(self.g.recipe, self.cell_sets(cell, store_path, prior), countermeasure=cell.countermeasure,
                     paradigm=cell.paradigm)

    # -- data, prior, protected stores -----------------------------------------------------
    def clean(self):
        if self._clean is None:
            from .config import DataConfig, apply_overrides
            from .data import prepare_dataset
            from .data.store import is_store, open_store
            if is_store(self.g.dataset):
                self._clean = open_store(self.g.dataset)
            else:
                dcfg = apply_overrides(DataConfig(dataset=self.g.dataset, root=self.g.root,
                                                  cache_dir=self._victim().data.cache_dir), list(self.g.data_sets))
                self._clean = prepare_dataset(dcfg)
        return self._clean

    def prior(self) -> Optional[Path]:
        if not self.g.prior:
            return None
        if self._prior is None:
            p = Path(self.g.prior).expanduser()
            if not p.is_file():
                if "/" in self.g.prior or p.suffix in (".pt", ".pth"):
                    raise ConfigError(f"--prior {self.g.prior}: no such file; give a state dict written by "
                                      f"`python -m ueperf.prior` (or torchvision), or a recipe name to build one")
                from .prior import build_prior
                from .recipes import build
                p = build_prior(build(self.g.prior, [f"data.cache_dir={self._victim().data.cache_dir}",
                                                     *self.g.prior_sets]), progress=self.g.progress)
            self._prior = p.absolute()
        return self._prior

    def _row_overrides(self, row: Row, check_only: bool = False) -> List[str]:
        """The row's method overrides; methods crafted against a prior (Config field ``prior``:
        bait, ssc) get the grid's prior and that prior's architecture (model, width, stem from
        its ``prior.json``) for the fields the row does not set — so a row crafted against another
        family's prior (spec §5's black-box check) needs only ``LABEL:prior=PATH``."""
        from .protections import PROTECTIONS
        sets = list(row.overrides)
        fields = {f.name for f in dataclasses.fields(PROTECTIONS.get(row.method).Config)}
        if "prior" not in fields or check_only:
            return sets
        given = {k: v for k, _, v in (kv.partition("=") for kv in sets)}
        if "prior" in given:
            own = Path(given["prior"]).expanduser()
        else:
            own = self.prior()
            if own is None:
                raise ConfigError(f"row {row.label!r}: {row.method} crafts against a pretrained prior: pass --prior, "
                                  f"or --protect-set {row.label}:prior=PATH")
            sets.append(f"prior={own}")
        sets.extend(f"{k}={v}" for k, v in prior_arch(own).items() if k in fields and k not in given)
        return sets

    def existing_store(self, row_label: str, seed: int) -> Optional[Path]:
        """The path of (row, seed)'s training store when it exists already, found without making
        anything (no data conversion, prior training or crafting); None when the sweep has yet to
        make it (or its prior)."""
        from .config import DataConfig, apply_overrides
        from .data.prepare import cache_key, store_path_for
        from .data.sources import SOURCES
        from .data.store import is_store, open_store
        from .protections import PROTECTIONS
        from .protections.runner import default_out, protection_key, resolve_config
        g = self.g
        if self._clean is not None:
            clean = Path(self._clean.path)
        elif is_store(Path(g.dataset).expanduser()):
            clean = Path(g.dataset).expanduser()
        else:
            dcfg = apply_overrides(DataConfig(dataset=g.dataset, root=g.root, cache_dir=self._victim().data.cache_dir),
                                   list(g.data_sets))
            try:  # the source's files may not be here (a dry run for another machine): not made, then
                SOURCES.get(g.dataset)
                clean = store_path_for(dcfg, g.dataset, cache_key(dcfg, g.dataset)[0])
            except (UeperfError, OSError):
                return None
        if not is_store(clean):
            return None
        row = self.g.row(row_label)
        if not row.method:
            return clean
        if "prior" in {f.name for f in dataclasses.fields(PROTECTIONS.get(row.method).Config)} and \
                not any(s.startswith("prior=") for s in row.overrides) and self.existing_prior() is None:
            return None
        _, pcfg = resolve_config(row.method, self._row_overrides(row))
        store = open_store(clean, verify=False)
        key, _ = protection_key(row.method, pcfg, 1.0, seed, store, g.surrogate_sets)
        path = default_out(row.method, store, key, Path(self._victim().data.cache_dir).expanduser())
        return path if is_store(path) else None

    def existing_prior(self) -> Optional[Path]:
        """The prior's path when it is a file (``--prior PATH``); None for none, or for a recipe (which
        :meth:`prior` builds, or finds in the cache, by training)."""
        if self._prior is not None:
            return self._prior
        p = Path(self.g.prior).expanduser() if self.g.prior else None
        return self.prior() if p is not None and p.is_file() else None

    def store(self, row_label: str, seed: int):
        """The training store of (row, seed): the clean store, or the protected one (made now or reused)."""
        row = self.g.row(row_label)
        if not row.method:
            return self.clean()
        key = (row_label, seed)
        if key not in self._stores:
            import time

            from .protections.runner import generate_protected
            t0 = time.perf_counter()
            self._stores[key] = generate_protected(
                row.method, self.clean(), overrides=self._row_overrides(row), seed=seed,
                cache_dir=Path(self._victim().data.cache_dir).expanduser(), surrogate_overrides=self.g.surrogate_sets,
                device=self.g.device, progress=self.g.progress, set_flag=f"--protect-set {row.label}:")
            self.gen_time[f"{row_label} s{seed}"] = time.perf_counter() - t0
        return self._stores[key]

    # -- cells -----------------------------------------------------------------------------
    def run_dir(self, cell: Cell) -> Path:
        return self.g.out / "runs" / cell.name

    def summary(self, cell: Cell) -> Optional[Dict[str, Any]]:
        """A finished cell's summary, or None."""
        p = self.run_dir(cell) / "summary.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def run_cell(self, cell: Cell) -> Dict[str, Any]:
        """Train one victim in this process (or reuse / resume its run folder) and return its
        summary. Where and how cells run (a pool of processes, SLURM jobs, torchrun for a cell on
        several devices) is :mod:`ueperf.launch`."""
        from .countermeasures import build_hooks
        from .engine.trainer import Trainer
        store = self.store(cell.row, cell.seed)
        cfg = self.cell_config(cell, str(store.path))
        done = self.finished(cell, cfg)
        if done is not None:
            return done
        resume = (self.run_dir(cell) / "config.json").exists()
        with Trainer(cfg, hooks=build_hooks(cfg), resume=resume, store=store) as tr:  # the store is open already
            return tr.fit()

    def finished(self, cell: Cell, cfg) -> Optional[Dict[str, Any]]:
        """A finished cell's summary, checked against ``cfg`` (its config now: a :class:`ConfigError`
        when the same coordinates ran under other settings), or None."""
        done = self.summary(cell)
        if done is None:
            return None
        from .config import to_dict
        from .engine.trainer import config_diff
        saved = json.loads((self.run_dir(cell) / "config.json").read_text())["config"]
        diff = config_diff(saved, to_dict(cfg))
        if diff:  # the same coordinates run under other settings (or other code defaults)
            raise ConfigError(f"cell {cell.name} already finished with a different config ("
                              + "; ".join(diff[:4]) + f"). Delete {self.run_dir(cell)} to rerun it, or "
                              f"give the grid another output folder")
        return done

    # -- results ---------------------------------------------------------------------------
    def results(self) -> Dict[str, Dict[str, Dict[str, List[Optional[float]]]]]:
        """{row: {column: {metric: [value per seed, None where not finished]}}} of finished cells."""
        out: Dict[str, Dict[str, Dict[str, List[Optional[float]]]]] = {}
        for cell in self.g.cells():
            s = self.summary(cell) or {}
            col = out.setdefault(cell.row, {}).setdefault(self.g.column(cell), {m: [] for m in METRICS})
            for m in METRICS:
                v = s.get(m)
                col[m].append(float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None)
        return out
