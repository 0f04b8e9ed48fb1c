"""What a run is, in a few words: the line every figure of a run folder carries as its title.

    runs/demo-3 · protection em (8/255, sample-wise) · countermeasure st_cg · paradigm fs ·
    data cifar10 · resnet18 width 0.25 · 12 epochs · seed 0

:func:`describe_run` builds it from the resolved config and the training store's manifest (plain
dicts: this module imports nothing of the engine). The trainer registers it for its run folder
(:func:`register_run`) once the data and the model are known, so every figure written into that
folder — by the trainer or by a countermeasure's hook — can name the run (:func:`run_info`)
without being handed it; ``python -m ueperf.report`` rebuilds it from a finished run's files
(:func:`read_run`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

# run folder (absolute) → describe_run(...) of the run being trained there (this process)
_RUNS: Dict[str, Dict[str, Any]] = {}


def _eps_text(norm: Optional[str], eps: Optional[float]) -> str:
    if eps is None:
        return ""
    if norm == "l0":
        return f"{eps:g} px"
    return f"{eps * 255:.3g}/255" if norm in (None, "linf") else f"{norm} {eps:.3g}"


def protection_text(manifest: Optional[Mapping[str, Any]]) -> str:
    """``em (8/255, sample-wise)``, ``random (8/255, class-wise, ratio 0.4)``, ``clean``; ``?`` when
    the training store is unknown."""
    if not manifest:
        return "?"
    if manifest.get("kind") != "protected":
        return "clean"
    m = manifest.get("meta", {})
    bits = [_eps_text(m.get("norm"), m.get("eps")),
            f"{m['granularity']}-wise" if m.get("granularity") else "",
            f"ratio {m['ratio']:g}" if m.get("ratio") not in (None, 1, 1.0) else ""]
    bits = [b for b in bits if b]
    return f"{m.get('method', '?')}" + (f" ({', '.join(bits)})" if bits else "")


def dataset_text(manifest: Optional[Mapping[str, Any]], data_cfg: Mapping[str, Any]) -> str:
    """The clean data a run's store came from: ``cifar10``, ``tiny-imagenet-100 (imagefolder)``,
    with a class subset or a train limit when one was set."""
    if manifest:
        src = manifest.get("source") or {}
        name = src.get("clean_name") or manifest.get("name") or "?"
        clean = src.get("clean_source") or src
        root = clean.get("root") if isinstance(clean, Mapping) else None
        data = (manifest.get("meta") or {}).get("data_config") or \
            ((manifest.get("meta") or {}).get("clean_source") or {}).get("data_config") or {}
    else:
        name, root, data = Path(str(data_cfg.get("dataset", "?"))).name, data_cfg.get("root"), data_cfg
    if name == "imagefolder" and root:
        name = f"{Path(str(root)).name.split('.')[0]} (imagefolder)"
    extra = [f"classes {data['classes']}" if data.get("classes") else "",
             f"{data['train_limit']} train images" if data.get("train_limit") else "",
             f"{data['image_size']} px" if data.get("image_size") else ""]
    extra = [e for e in extra if e]
    return name + (f" ({', '.join(extra)})" if extra else "")


def describe_run(config: Mapping[str, Any], manifest: Optional[Mapping[str, Any]] = None, *,
                 run_dir: Optional[os.PathLike] = None, group_names: Sequence[str] = (),
                 classes: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """The parts of a run's title, from its resolved config (``to_dict(cfg)``) and its training
    store's manifest (None: unknown). ``classes`` default to the manifest's class names."""
    model = config.get("model", {})
    width = model.get("width", 1.0)
    return {
        "run": Path(run_dir).name if run_dir else (config.get("name") or ""),
        "protection": protection_text(manifest),
        "countermeasure": config.get("countermeasure", "nt"),
        "paradigm": config.get("paradigm", "fs"),
        "dataset": dataset_text(manifest, config.get("data", {})),
        "model": model.get("name", "?") + (f" width {width:g}" if width != 1 else ""),
        "epochs": config.get("train", {}).get("epochs"),
        "seed": config.get("train", {}).get("seed"),
        "group_names": list(group_names),
        "classes": list(classes) if classes is not None else list((manifest or {}).get("classes") or []),
    }


def run_title(info: Mapping[str, Any], epochs: Optional[int] = None, width: int = 120) -> str:
    """One line naming the run, broken between its parts where longer than ``width`` characters;
    ``epochs`` overrides the configured count (e.g. the epochs a figure actually shows)."""
    if not info:
        return ""
    n = epochs if epochs is not None else info.get("epochs")
    parts = [info.get("run") or "", f"protection {info.get('protection', '?')}",
             f"countermeasure {info.get('countermeasure', '?')}", f"paradigm {info.get('paradigm', '?')}",
             f"data {info.get('dataset', '?')}", str(info.get("model", "?")),
             f"{n} epoch{'s' if n != 1 else ''}" if n is not None else "",
             f"seed {info['seed']}" if info.get("seed") is not None else ""]
    lines: List[str] = []
    for part in (p for p in parts if p):  # break between parts, never inside one
        if lines and len(lines[-1]) + 3 + len(part) <= width:
            lines[-1] += " · " + part
        else:
            lines.append(part)
    return "\n".join(lines)


def register_run(run_dir: os.PathLike, info: Dict[str, Any]) -> None:
    """Make ``info`` the description of every figure written into ``run_dir`` from now on."""
    _RUNS[os.path.abspath(os.fspath(run_dir))] = dict(info)


def run_info(path: os.PathLike) -> Dict[str, Any]:
    """The registered description of the run folder holding figure ``path`` ({} if none)."""
    return _RUNS.get(os.path.dirname(os.path.abspath(os.fspath(path))), {})


def run_record(run_dir: os.PathLike) -> Dict[str, Any]:
    """The registered description of ``run_dir`` as summary.json keeps it (without class names)."""
    return {k: v for k, v in _RUNS.get(os.path.abspath(os.fspath(run_dir)), {}).items() if k != "classes"}


def read_run(run_dir: os.PathLike) -> Dict[str, Any]:
    """:func:`describe_run` of a finished (or running) run folder: its summary's ``run`` entry when
    the trainer recorded one, else rebuilt from config.json and, when the training data was a store
    folder, that store's manifest.json."""
    d = Path(run_dir)
    summary = _load(d / "summary.json") or {}
    if isinstance(summary.get("run"), dict):
        return dict(summary["run"], run=d.name)
    config = (_load(d / "config.json") or {}).get("config", {})
    store = Path(str(config.get("data", {}).get("dataset", ""))).expanduser()
    manifest = _load(store / "manifest.json") if store.parts and store.is_dir() else None
    info = describe_run(config, manifest, run_dir=d)
    if manifest is None and not store.is_dir():
        info["protection"] = "clean"  # a registered source name: the clean data itself
    return info


def _load(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


__all__ = ["describe_run", "run_title", "register_run", "run_info", "run_record", "read_run", "protection_text", "dataset_text"]
