"""NT and NT-CG: the standard recipe (spec §3.0) without and with the CG augmentation (§3.4)."""
from __future__ import annotations

from . import COUNTERMEASURES, Countermeasure, default


@COUNTERMEASURES.register("nt")
class NT(Countermeasure):
    name = "nt"
    summary = "natural training: the standard recipe, crop + flip (spec §3.0)"


@COUNTERMEASURES.register("nt_cg")
class NTCG(Countermeasure):
    name = "nt_cg"
    summary = "natural training with CG: colour jitter p 0.8 + grayscale p 0.2 after crop/flip (spec §3.4)"

    def configure(self, cfg, user=frozenset()) -> None:
        default(cfg, user, "augment.cg", True)
