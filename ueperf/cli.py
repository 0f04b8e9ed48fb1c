"""Shared CLI plumbing: user errors become one clear line and exit status 2, never a traceback."""
from __future__ import annotations

import os
import sys
from typing import Callable

from .errors import UeperfError


def run_cli(main: Callable[[], int]) -> None:
    try:
        code = main()
    except UeperfError as e:
        rank = os.environ.get("RANK")
        prefix = f"ueperf (rank {rank})" if rank not in (None, "0") else "ueperf"
        print(f"{prefix}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\nueperf: interrupted. Continue the run with the same command plus --resume.", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
