"""A small victim trained by the real trainer on a store (clean or protected): the measurement
behind every effect test. Eighth-width ResNet-18, the standard recipe (SGD 0.1, cosine, crop +
flip, batch 128) shortened to a few epochs; the test set is the store's clean one."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Sequence


def train_victim(store: Any, run_dir: Path, *, countermeasure: str = "nt", epochs: int = 6,
                 width: float = 0.125, sets: Sequence[str] = ()) -> Dict[str, Any]:
    from ueperf.countermeasures import build_hooks
    from ueperf.engine.trainer import train
    from ueperf.recipes import build
    run_dir = Path(run_dir)
    cfg = build("cifar10_resnet18", [f"data.dataset={store.path}", f"model.width={width}",
                                     f"train.epochs={epochs}", "train.progress=false", "train.threads=2",
                                     f"out_dir={run_dir.parent}", f"name={run_dir.name}", *sets],
                countermeasure=countermeasure)
    return train(cfg, hooks=build_hooks(cfg))
