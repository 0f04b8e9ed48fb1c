"""What the CLIs' ``--list`` options print: config keys with their type, default, unit and meaning,
and one line describing every registered method, model, data source, paradigm and recipe.

A key's meaning is the trailing comment of its dataclass field (``ueperf/config.py``, or a
protection's ``Config``), read from the source, so the comment a developer edits is the help a
user reads::

    lr: float = 0.1                 # base learning rate [spec §3.0]
    classes: str = ""               # keep only these classes ("" = all): "A:B" = labels A..B-1 (e.g. 0:50 and
                                    # 50:100, ...)                        <- a continuation: same column

Units live in :data:`UNITS` (dotted key → unit), so every numeric key states one; a test checks
that every numeric key has an entry and that no entry names a key that does not exist.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import re
import textwrap
import tokenize
import typing
from typing import Any, Dict, List, NamedTuple, Sequence, Tuple

# ───────────────────────────────────────────── units ──
# Dotted key → unit. "" marks a number checked to have none (a seed, a coefficient); keys whose
# values are names, flags or paths are not listed here.
UNITS: Dict[str, str] = {
    # data
    "data.image_size": "pixels", "data.train_limit": "images", "data.test_limit": "images",
    "data.test_holdout": "images", "data.synthetic_classes": "classes", "data.synthetic_train": "images",
    "data.synthetic_test": "images", "data.synthetic_size": "pixels",
    # model
    "model.width": "× channels", "model.dropout": "probability",
    # augment
    "augment.crop_padding": "pixels", "augment.jitter_p": "probability", "augment.jitter": "strength",
    "augment.gray_p": "probability", "augment.mean": "[0,1] pixel", "augment.std": "[0,1] pixel",
    # optim
    "optim.lr": "lr", "optim.momentum": "", "optim.weight_decay": "",
    "optim.milestones": "fraction of run", "optim.gamma": "× lr", "optim.warmup_epochs": "epochs",
    "optim.warmup_start": "× lr", "optim.beta2": "", "optim.eps": "",
    "optim.group_lr": "× lr", "optim.grad_clip": "L2 norm",
    # train
    "train.epochs": "epochs", "train.batch_size": "images", "train.eval_batch_size": "images",
    "train.seed": "", "train.eval_every": "epochs", "train.checkpoint_every": "epochs",
    "train.log_every": "steps", "train.threads": "threads",
    # parallel
    "parallel.zero_stage": "",
    # acm
    "acm.subset": "images", "acm.classes": "classes", "acm.perplexity": "t-SNE perplexity",
    "acm.batch_size": "images",
    # st
    "st.tau": "ACM", "st.jump": "× ACM", "st.window": "epochs", "st.alpha": "", "st.v_min": "× lr",
    "st.warmup_epochs": "epochs", "st.warmup_steps": "steps", "st.check_every": "steps",
    "st.rollback": "checks", "st.finetune_epochs": "epochs", "st.finetune_lr": "lr",
    # at
    "at.eps": "[0,1] pixel", "at.alpha": "[0,1] pixel", "at.steps": "PGD steps",
    # ueraser
    "ueraser.repeats": "copies", "ueraser.repeat_epochs": "epochs", "ueraser.plasma_p": "probability",
    "ueraser.shuffle_p": "probability", "ueraser.jpeg_quality": "JPEG quality (1-100)",
    # iss
    "iss.jpeg_quality": "JPEG quality (1-100)", "iss.bits": "bits per channel",
    # reg
    "reg.cutout_size": "pixels", "reg.mixup_alpha": "Beta α", "reg.cutmix_alpha": "Beta α",
    "reg.cutmix_p": "probability", "reg.randaugment_n": "ops", "reg.randaugment_m": "magnitude (0-30)",
    "reg.blur_sigma": "pixels", "reg.blur_kernel": "pixels",
    # fast
    "fast.whiten_images": "images", "fast.whiten_eps": "variance", "fast.whiten_bias_epochs": "epochs",
    "fast.bn_momentum": "", "fast.bn_bias_lr": "× lr", "fast.label_smoothing": "probability",
    "fast.lookahead_every": "steps", "fast.lookahead_decay": "",
}

# Protection configs are smaller and share names; a unit by field name (last part of the key).
METHOD_UNITS: Dict[str, str] = {
    "eps": "[0,1] pixel (l0: pixels)", "alpha": "[0,1] pixel", "step": "[0,1] pixel", "adv_eps": "[0,1] pixel",
    "adv_alpha": "[0,1] pixel", "regen_alpha": "[0,1] pixel", "steps": "PGD steps", "adv_steps": "PGD steps",
    "regen_steps": "PGD steps", "batch_size": "images", "train_batch_size": "images", "eval_batch_size": "images",
    "regen_batch_size": "images", "probe_images": "images", "epochs": "epochs", "surrogate_epochs": "epochs",
    "probe_epochs": "epochs", "lr": "lr", "probe_lr": "lr", "patch_size": "pixels", "crop_padding": "pixels",
    "pad": "pixels", "width": "× channels", "surrogate_width": "× channels", "max_rounds": "rounds",
    "passes": "passes", "train_steps": "SGD steps", "inner_steps": "SGD steps", "iterations": "steps",
    "lr_decay_every": "steps", "log_every": "steps", "eot": "draws", "restarts": "restarts",
    "grad_clip": "L2 norm", "stop_error": "error rate", "class_portion": "fraction", "rgb_portion": "fraction",
    "rho": "fraction", "tau": "× ε",
}


# ───────────────────────────────────────────── config keys ──
class KeyInfo(NamedTuple):
    key: str          # dotted key, e.g. "optim.lr"
    type: str         # "float", "int", "bool", "str", "float×3", "float list"
    default: str      # the default as one would type it after --set key=
    unit: str         # "" for names, flags and paths
    meaning: str      # the field's comment, one line ("" when it has none)


_WS = re.compile(r"\s+")


@functools.lru_cache(maxsize=None)
def field_comments(cls: type) -> Dict[str, str]:
    """``{field: comment}`` of a dataclass, from its source: the comment that ends the field's line,
    plus the comment-only lines right below it that start in the same column (a continuation),
    joined into one line. Fields without a comment are left out; no source → ``{}``."""
    try:
        lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return {}
    src = textwrap.dedent("".join(lines))
    tree = ast.parse(src)
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    fields = {n.lineno: n.target.id for n in body
              if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    comments: Dict[int, Tuple[int, str]] = {}          # line → (column, text)
    code_lines = set()
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = (tok.start[1], tok.string.lstrip("#").strip())
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                              tokenize.ENDMARKER):
            code_lines.add(tok.start[0])
    out: Dict[str, str] = {}
    for line, name in fields.items():
        if line not in comments:
            continue
        col, text = comments[line]
        parts = [text]
        nxt = line + 1
        while nxt in comments and nxt not in code_lines and comments[nxt][0] == col:
            parts.append(comments[nxt][1])
            nxt += 1
        out[name] = _WS.sub(" ", " ".join(parts)).strip()
    return out


def type_text(tp: Any) -> str:
    """A field type as a user types its value: ``float``, ``float×3`` (three comma-separated
    numbers), ``float list`` (any number of them)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        inner = [type_text(a) for a in args if a is not type(None)]
        return " | ".join(inner) + " | none"
    if origin in (tuple, list):
        if len(args) == 2 and args[1] is Ellipsis:
            return f"{type_text(args[0])} list"               # --set k=a,b,c (any length)
        if args and all(a == args[0] for a in args):
            return f"{type_text(args[0])}×{len(args)}"        # --set k=a,b,c (exactly n)
        return "(" + ", ".join(type_text(a) for a in args) + ")" if args else "list"
    return getattr(tp, "__name__", str(tp))


def value_text(v: Any) -> str:
    """A default as it would be written after ``--set key=``: 8/255 for a budget, "" for empty."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        short = f"{v:.6g}"
        r = v * 255
        if 0 < v < 1 and len(short) > 6 and abs(r - round(r, 1)) < 1e-9:
            return f"{round(r, 1):g}/255"
        return short
    if isinstance(v, str):
        return '""' if v == "" else v
    if isinstance(v, (tuple, list)):
        return ",".join(value_text(x) for x in v) if v else "()"
    return str(v)


def config_keys(cfg: Any, prefix: str = "", units: Dict[str, str] = UNITS,
                unit_by_name: Dict[str, str] = {}) -> List[KeyInfo]:
    """Every settable key of a (nested) dataclass config instance, in declaration order."""
    out: List[KeyInfo] = []
    hints = typing.get_type_hints(type(cfg))
    notes = field_comments(type(cfg))
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(v):
            out.extend(config_keys(v, key + ".", units, unit_by_name))
            continue
        unit = units.get(key, unit_by_name.get(f.name, ""))
        out.append(KeyInfo(key, type_text(hints[f.name]), value_text(v), unit, notes.get(f.name, "")))
    return out


def method_config_keys(method: str, overrides: Sequence[str] = ()) -> List[KeyInfo]:
    """The keys of protection ``method``'s config (``protect --set``), with ``overrides`` applied."""
    from .protections.runner import resolve_config
    _, cfg = resolve_config(method, list(overrides))
    return config_keys(cfg, units={}, unit_by_name=METHOD_UNITS)


def run_config_keys() -> List[KeyInfo]:
    """The keys of :class:`ueperf.config.RunConfig` (``--set`` of train and sweep)."""
    from .config import RunConfig
    return config_keys(RunConfig())


def format_keys(keys: List[KeyInfo]) -> str:
    """An aligned table, one key per line (so ``| grep st.`` finds a section)."""
    head = KeyInfo("KEY", "TYPE", "DEFAULT", "UNIT", "MEANING")
    rows = [head, *keys]
    clip = lambda s, n: s if len(s) <= n else s[: n - 1] + "…"  # noqa: E731  long defaults (paths)
    w = [max(len(clip(r[i], 28)) for r in rows) for i in range(4)]
    return "\n".join(f"{r.key:<{w[0]}}  {r.type:<{w[1]}}  {clip(r.default, 28):<{w[2]}}  "
                     f"{(r.unit or '–'):<{w[3]}}  {r.meaning or '–'}".rstrip() for r in rows)


# ───────────────────────────────────────────── registered names ──
KINDS = ("recipes", "models", "datasets", "countermeasures", "paradigms", "protections")


def _first_sentence(doc: str) -> str:
    """The first sentence of a docstring's first paragraph, on one line, without RST markup."""
    para = inspect.cleandoc(doc or "").split("\n\n")[0]
    text = _WS.sub(" ", para.replace("``", "")).strip()
    return re.split(r"(?<=\.)\s+(?=[A-Z(])", text)[0] if text else ""


def _recipe_line(name: str) -> str:
    from .recipes import RECIPES
    fn = RECIPES.get(name)
    cfg = fn()
    what = f"{cfg.data.dataset}, {cfg.model.name} width {cfg.model.width:g}, {cfg.train.epochs} epochs"
    doc = _first_sentence(fn.__doc__ or "")
    return f"{doc} [{what}]" if doc else ""


def registered(kind: str) -> List[Tuple[str, str]]:
    """``[(name, one-line description)]`` of a registry, sorted by name."""
    if kind == "recipes":
        from .recipes import RECIPES
        return [(n, _recipe_line(n)) for n in RECIPES.names()]
    if kind == "models":
        from .models import MODELS
        return [(n, MODELS.get(n).description) for n in MODELS.names()]
    if kind == "datasets":
        from .data import SOURCES
        return [(n, _first_sentence(SOURCES.get(n).__doc__ or "")) for n in SOURCES.names()]
    if kind == "countermeasures":
        from .countermeasures import COUNTERMEASURES
        return [(n, COUNTERMEASURES.get(n).summary) for n in COUNTERMEASURES.names()]
    if kind == "paradigms":
        from .paradigms import PARADIGMS
        return [(n, PARADIGMS.get(n).summary) for n in PARADIGMS.names()]
    if kind == "protections":
        from .protections import PROTECTIONS
        return [(n, _first_sentence(PROTECTIONS.get(n).__doc__ or "")) for n in PROTECTIONS.names()]
    raise ValueError(f"unknown listing {kind!r}; one of {', '.join(KINDS)}")


def format_registered(kind: str) -> str:
    items = registered(kind)
    w = max((len(n) for n, _ in items), default=0)
    return "\n".join(f"{n:<{w}}  {d}".rstrip() for n, d in items)


__all__ = ["UNITS", "METHOD_UNITS", "KeyInfo", "field_comments", "config_keys", "run_config_keys",
           "method_config_keys", "format_keys",
           "KINDS", "registered", "format_registered"]
