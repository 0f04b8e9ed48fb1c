"""Shared CLI plumbing: user errors become one clear line and exit status 2, never a traceback;
Ctrl-C says how to continue; a closed output pipe (``--print-config | head``) ends quietly."""
from __future__ import annotations

import os
import sys
from typing import Callable

from .errors import UeperfError

# What an interrupted command tells the user to run next. Each entry point gives a default to
# run_cli and replaces it with the exact command once it knows more (e.g. the run folder it chose).
_INTERRUPT_HINT = [""]


def set_interrupt_hint(text: str) -> None:
    """What to print after "ueperf: interrupted." if the user presses Ctrl-C from now on."""
    _INTERRUPT_HINT[0] = text


def _quiet_broken_pipe() -> None:
    """The reader of stdout went away (``| head``): point stdout at /dev/null so the interpreter's
    final flush cannot raise again (the Python docs' recipe for SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def run_cli(main: Callable[[], int], interrupt_hint: str = "") -> None:
    """Run ``main`` as a command: UeperfError → one line on stderr and exit 2; Ctrl-C → the hint
    (see :func:`set_interrupt_hint`) and exit 130; a closed stdout pipe → exit 141, no traceback."""
    if interrupt_hint:
        set_interrupt_hint(interrupt_hint)
    try:
        try:
            code = main()
        except SystemExit:  # argparse's --help and usage errors: their output may meet a closed pipe too
            sys.stdout.flush()
            raise
        sys.stdout.flush()  # a closed pipe shows up here for output still in the buffer
    except UeperfError as e:
        rank = os.environ.get("RANK")
        prefix = f"ueperf (rank {rank})" if rank not in (None, "0") else "ueperf"
        print(f"{prefix}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        hint = _INTERRUPT_HINT[0]
        print("\nueperf: interrupted." + (f" {hint}" if hint else ""), file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        _quiet_broken_pipe()
        sys.exit(141)  # 128 + SIGPIPE, what a shell reports for a command whose reader left
    sys.exit(code or 0)
