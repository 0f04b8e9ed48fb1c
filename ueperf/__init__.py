"""ueperf — a fast engine for research on unlearnable examples (UEs).

Pipeline (the package tree follows it)::

    source images ─▶ protection ─▶ protected store ─▶ training (paradigm + countermeasures) ─▶ metrics ─▶ records/plots
     data/             protections/   data/store.py      engine/ + paradigms/ + countermeasures/   metrics/    reports/

Glossary
--------
protection        a method that crafts an imperceptible perturbation δ so that a model trained on
                  x' = clip(x + δ, 0, 1) fails on clean data (EM, REM, SP, ...).
countermeasure    what the exploiter does to still learn from protected data (ST, AT, UEraser, ...).
surrogate         the model a protection crafts δ against.
victim            the model trained on the protected set and evaluated on the clean test set.
ε (eps)           perturbation budget in [0, 1] pixel units (8/255 ≈ 0.0314).
paradigm          how the victim starts and what it trains: from scratch, linear probe, partial
                  freeze, full fine-tune.
layer group       one of a model's ordered parameter groups, shallow → deep (stem, blocks, head);
                  per-group learning rates and freezing act on these.
store             uint8 images on disk (memory-mapped arrays) plus a manifest; clean and protected
                  datasets alike.
detection         telling from a training set alone (no clean reference) whether it is protected,
                  and which samples: ``python -m ueperf.detect`` (docs/methods.md §9).

Documentation: ``docs/methods.md`` is the method reference (algorithms, defaults and their sources,
what was measured); every "§N.M" or "spec §N.M" in the docstrings, comments and messages of this
package names a section of it. ``docs/ARCHITECTURE.md`` describes the layout and the contracts.

Nothing heavy is imported here: ``import ueperf`` does not import torch.
"""

__version__ = "0.1.0"
