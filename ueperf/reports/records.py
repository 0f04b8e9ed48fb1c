"""Per-epoch run records as JSON lines.

One line per epoch: ``{"epoch": e, "train_loss": ..., "test_acc": ..., ...}``. Appends are
flushed and fsynced so an interrupted run keeps every completed epoch; on resume the file is cut
back to the epochs the checkpoint covers, so resumed and uninterrupted runs write the same lines.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List

from ..files import json_safe, write_text_atomic


def read_records(path: os.PathLike) -> List[Dict[str, Any]]:
    """All complete records of a JSONL file (a torn last line from a crash is ignored)."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return out


class RecordWriter:
    """Appends one JSON object per line to ``path``."""

    def __init__(self, path: os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_to(self, keep: List[Dict[str, Any]]) -> None:
        """Rewrite the file with exactly ``keep`` (used when resuming)."""
        write_text_atomic(self.path, "".join(json.dumps(json_safe(r)) + "\n" for r in keep))

    def append(self, record: Dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(json_safe(record)) + "\n")
            f.flush()
            os.fsync(f.fileno())
