"""Augmentation, one home.

- :mod:`.pipeline` — :class:`~ueperf.augment.pipeline.Augmenter`, the standard training
  pipeline (crop + flip, CG, normalisation) the trainer applies to every batch through the fused
  kernel of :mod:`ueperf.kernels.augment`;
- :mod:`.policies` — batch policies of the countermeasures: UEraser's plasma and channel shuffle,
  colour ops, TrivialAugment / RandAugment / AutoAugment, cutout, mixup, cutmix, blur (spec §3.2-§3.4);
- :mod:`.squeeze` — uint8 host-side squeezes: ISS grayscale / JPEG / bit depth, UEraser's JPEG (§3.3);
- :mod:`.eot` — differentiable expectation-over-transformation wrappers for the one PGD (§2.2, §2.12).

Only the fused kernel, its torch reference and its dispatcher live in :mod:`ueperf.kernels`.
"""
