"""Result tables: Markdown, CSV, JSON and a heat map, from values over seeds.

A table is ``cells[row][column] = [value per seed]`` (``None`` where a run is missing); it is shown
as ``mean ± std`` (sample std over the seeds, n where fewer than asked finished). Every writer
here is atomic (ueperf.files), so a reader never sees half a table.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..files import write_json_atomic, write_text_atomic

Values = Sequence[Optional[float]]


def mean_std(values: Values) -> Tuple[Optional[float], Optional[float], int]:
    """(mean, sample std (None for fewer than two values), n) over the values that are not None."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return None, None, 0
    m = sum(v) / len(v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else None
    return m, sd, len(v)


def fmt(values: Values, scale: float = 100.0, digits: int = 1, expect: Optional[int] = None) -> str:
    """``52.3 ± 1.2`` (× ``scale``), ``52.3`` for one value, ``–`` for none; ``(n=2)`` when fewer
    than ``expect`` values are there."""
    m, sd, n = mean_std(values)
    if m is None:
        return "–"
    out = f"{scale * m:.{digits}f}" + (f" ± {scale * sd:.{digits}f}" if sd is not None else "")
    return out + (f" (n={n})" if expect and n < expect else "")


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    """The lines of a Markdown table with ``header`` and string ``rows``."""
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)] + \
        ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def markdown(rows: Sequence[str], cols: Sequence[str], cells: Dict[str, Dict[str, Values]], *, corner: str = "",
             scale: float = 100.0, digits: int = 1, expect: Optional[int] = None) -> List[str]:
    """A Markdown table of ``mean ± std`` cells."""
    return md_table([corner, *cols], [[r, *(fmt(cells.get(r, {}).get(c, []), scale, digits, expect) for c in cols)]
                                      for r in rows])


def write_table(out: os.PathLike, stem: str, rows: Sequence[str], cols: Sequence[str],
                cells: Dict[str, Dict[str, Values]], *, title: str, lines_before: Sequence[str] = (),
                lines_after: Sequence[str] = (), corner: str = "protection", label: str = "clean test accuracy (%)",
                expect: Optional[int] = None, plot: bool = True, scale: float = 100.0, digits: int = 1,
                metric: str = "") -> Path:
    """``<stem>.md`` (title, ``lines_before``, the table, ``lines_after``), ``<stem>.csv`` (one
    column per seed statistic: mean, std, n), ``<stem>.json`` (every value) and ``<stem>.png``
    (heat map of the means, annotated mean±std; ``plot=False`` skips it). The .csv and .json hold
    the values as given (fractions for accuracies, seconds for times); the .md and the heat map
    show them × ``scale`` with ``digits`` decimals (the default: fractions as percent); the .json
    records that ``scale`` and, where given, the ``metric`` the values are."""
    out = Path(out)
    md = [f"# {title}", "", *lines_before, "",
          *markdown(rows, cols, cells, corner=corner, scale=scale, digits=digits, expect=expect), "", *lines_after]
    write_text_atomic(out / f"{stem}.md", "\n".join(md).rstrip() + "\n")
    csv = [f"{corner}," + ",".join(f"{c} mean,{c} std,{c} n" for c in cols)]
    for r in rows:
        parts = []
        for c in cols:
            m, sd, n = mean_std(cells.get(r, {}).get(c, []))
            parts += ["" if m is None else f"{m:.4f}", "" if sd is None else f"{sd:.4f}", str(n)]
        csv.append(r + "," + ",".join(parts))
    write_text_atomic(out / f"{stem}.csv", "\n".join(csv) + "\n")
    write_json_atomic(out / f"{stem}.json", {"title": title, "label": label, "shown_scale": scale,
                                             **({"metric": metric} if metric else {}),
                                             "rows": list(rows), "columns": list(cols),
                                             "cells": {r: {c: list(cells.get(r, {}).get(c, [])) for c in cols} for r in rows}})
    if not plot:
        return out / f"{stem}.md"
    try:
        from .plots import plot_heatmap
        stats = [[mean_std(cells.get(r, {}).get(c, [])) for c in cols] for r in rows]
        plot_heatmap([[s[0] for s in row] for row in stats], rows, cols, out / f"{stem}.png", title=title,
                     label=label, stds=[[s[1] for s in row] for row in stats], percent=label.endswith("(%)"),
                     scale=scale, digits=digits)
    except ImportError:
        print(f"matplotlib is not installed: skipped {stem}.png", file=sys.stderr)
    return out / f"{stem}.md"
