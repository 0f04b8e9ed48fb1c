"""Where a victim's clean-test predictions go: accuracy and the share of predictions that equal
π⁻¹(y) = (y − shift) mod K, i.e. the label BAIT's binding teaches for class y's semantics.

    python bench/confusion.py RUN_DIR [RUN_DIR ...] [--shift 1]

RUN_DIR is a finished ``ueperf.train`` run folder (config.json + checkpoint.pt); the test set is
the run's dataset's clean test split. Prints one line per run.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import harness  # noqa: E402,F401  (bench/ is on the path: puts the checkout on it too)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--shift", type=int, default=1)
    args = p.parse_args(argv)
    from ueperf.data.store import open_store
    from ueperf.engine.checkpoint import load_checkpoint
    from ueperf.models import build_model
    for run in map(Path, args.runs):
        cfg = json.loads((run / "config.json").read_text())["config"]
        st = open_store(cfg["data"]["dataset"])
        x = torch.from_numpy(st.test.x[:]).float().div(255).permute(0, 3, 1, 2)
        y = torch.from_numpy(st.test.y[:].astype("int64"))
        K = int(y.max()) + 1
        m = build_model(cfg["model"]["name"], K, x.shape[-1], width=cfg["model"]["width"], stem=cfg["model"]["stem"])
        m.load_state_dict(load_checkpoint(run / "checkpoint.pt")["trainer"]["model"])
        aug = cfg["augment"]
        mean = torch.tensor(aug["mean"] if aug.get("normalize") else (0.0, 0.0, 0.0)).view(1, 3, 1, 1)
        std = torch.tensor(aug["std"] if aug.get("normalize") else (1.0, 1.0, 1.0)).view(1, 3, 1, 1)
        with torch.no_grad():
            pred = torch.cat([m.eval()((x[s:s + 256] - mean) / std).argmax(1) for s in range(0, len(y), 256)])
        acc = (pred == y).double().mean().item()
        back = (pred == (y - args.shift) % K).double().mean().item()
        print(f"{run.name}: clean test acc {100 * acc:.2f} %, predicts (y-{args.shift}) mod K for {100 * back:.2f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
