"""NT and NT-CG: the standard recipe (spec §3.0) without and with the CG augmentation (§3.4)."""
from __future__ import annotations

import math

from ..errors import require
from ..config import set_default
from . import COUNTERMEASURES, Countermeasure

CG_OPTIONS = ("augment.jitter_p", "augment.jitter", "augment.gray_p")


def check_cg(cfg) -> None:
    """The CG options (spec §3.4): probabilities in [0, 1], jitter strengths finite and >= 0 with
    hue <= 0.5 (a hue shift is a fraction of the colour circle)."""
    a = cfg.augment
    j = tuple(a.jitter)
    require([(0 <= a.jitter_p <= 1, f"augment.jitter_p={a.jitter_p}: a probability, must be in [0, 1]"),
             (0 <= a.gray_p <= 1, f"augment.gray_p={a.gray_p}: a probability, must be in [0, 1]"),
             (len(j) == 4 and all(math.isfinite(v) and v >= 0 for v in j) and j[3] <= 0.5,
              f"augment.jitter={j}: expected 4 strengths >= 0 (brightness, contrast, saturation, hue "
              f"<= 0.5), e.g. 0.4,0.4,0.4,0.1")])


@COUNTERMEASURES.register("nt")
class NT(Countermeasure):
    summary = "natural training: the standard recipe, crop + flip (spec §3.0)"


@COUNTERMEASURES.register("nt_cg")
class NTCG(Countermeasure):
    summary = "natural training with CG: colour jitter p 0.8 + grayscale p 0.2 after crop/flip (spec §3.4)"
    options = CG_OPTIONS

    def configure(self, cfg, user=frozenset()) -> None:
        set_default(cfg, user, "augment.cg", True)

    def check(self, cfg) -> None:
        check_cg(cfg)
