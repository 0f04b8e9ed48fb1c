"""Margins of the gate's few value-from-training checks.

An attack's success on its surrogate, a binding rate, a camouflage share: values that come out of
a training loop move with the seed, the thread count and the CPU. Such checks are marked
``margin``, take their seeds from :data:`GATE_SEED` and assert through the ``margin`` fixture
(tests/conftest.py), which also logs each value; ``python bench/gate_margins.py`` reruns them
over seeds 0-2 × torch threads 1-2 and reports each assertion's spread next to its margin (the
rule: margin >= 3 × spread). A plain gate run uses seed 0.
"""
from __future__ import annotations

import json
import os

GATE_SEED = int(os.environ.get("UEPERF_GATE_SEED", "0"))


class Margin:
    """``above(label, value, bound)`` / ``below(...)``: assert with a message, and append
    ``{test, label, value, bound, margin, seed, threads}`` to $UEPERF_MARGIN_LOG when it is set."""

    def __init__(self, nodeid: str):
        self.nodeid = nodeid

    def _log(self, label: str, value: float, bound: float, margin: float) -> None:
        path = os.environ.get("UEPERF_MARGIN_LOG")
        if path:
            import torch
            with open(path, "a") as f:
                f.write(json.dumps({"test": self.nodeid, "label": label, "value": float(value),
                                    "bound": float(bound), "margin": float(margin), "seed": GATE_SEED,
                                    "threads": torch.get_num_threads()}) + "\n")

    def above(self, label: str, value: float, bound: float) -> None:
        self._log(label, value, bound, value - bound)
        assert value > bound, f"{label}: {value:.4f} is not above {bound:.4f}"

    def below(self, label: str, value: float, bound: float) -> None:
        self._log(label, value, bound, bound - value)
        assert value < bound, f"{label}: {value:.4f} is not below {bound:.4f}"
