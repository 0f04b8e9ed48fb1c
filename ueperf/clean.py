"""Remove what killed or failed work left behind: ``python -m ueperf.clean [FOLDER ...] [--dry-run]``.

Writers publish by renaming a temporary sibling into place (``ueperf.files``), so a killed one
leaves ``.<name>.tmp-<pid>-<hex>`` files or folders (and ``.<name>.old-…`` when it was replacing a
folder); a failed cache build leaves a ``.<name>.error`` marker for the processes that waited on
it; an interrupted surrogate training leaves a resumable ``.<key>.partial`` folder. Most of these
are removed the next time the same target is written (under its lock); this command finds the rest
under the given folders (default: the cache, ``$UEPERF_CACHE_DIR`` or ``~/.cache/ueperf``, and ``runs/``), skipping every
target whose lock a live process holds. ``--partial`` also removes the resumable surrogate folders.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Iterator, List, Tuple

from .files import LOCK_SUFFIX, OLD_MARK, TEMP_MARK, Busy, default_cache_dir, hold

ERROR_SUFFIX = ".error"
PARTIAL_SUFFIX = ".partial"


def _leftovers(root: Path, partial: bool) -> Iterator[Tuple[Path, Path, str]]:
    """(leftover, the target it belongs to, what it is) under ``root``."""
    for p in sorted(root.rglob(".*")):
        name = p.name[1:]
        for mark, what in ((TEMP_MARK, "temporary of a killed writer"), (OLD_MARK, "folder moved aside by a killed writer")):
            if mark in name:
                yield p, p.parent / name.split(mark)[0], what
                break
        else:
            if name.endswith(ERROR_SUFFIX):
                yield p, p.parent / name[:-len(ERROR_SUFFIX)], "marker of a failed build"
            elif name.endswith(LOCK_SUFFIX):
                yield p, p.parent / name[:-len(LOCK_SUFFIX)], "lock file of a finished writer"
            elif partial and name.endswith(PARTIAL_SUFFIX) and p.is_dir():
                yield p, p.parent / name[:-len(PARTIAL_SUFFIX)], "interrupted surrogate training"


def clean(roots: List[Path], dry_run: bool = False, partial: bool = False) -> List[Tuple[Path, str]]:
    """Remove (or with ``dry_run`` only list) the leftovers under ``roots``; returns (path, what)."""
    done = []
    for root in roots:
        if not root.is_dir():
            continue
        for p, target, what in list(_leftovers(root, partial)):
            if not (p.exists() or p.is_symlink()):
                continue  # gone with an earlier entry (inside a removed folder)
            try:
                lock = None if dry_run else hold(target)
            except Busy:
                continue  # a live writer owns it
            try:
                if not dry_run and not p.name.endswith(LOCK_SUFFIX):  # hold()/release removes the lock file
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
            finally:
                if lock is not None:
                    lock.release()
            done.append((p, what))
    return done


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ueperf.clean", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="*", help="folders to clean (default: $UEPERF_CACHE_DIR or ~/.cache/ueperf, and runs/)")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    p.add_argument("--partial", action="store_true", help="also remove resumable surrogate trainings (.*.partial)")
    args = p.parse_args(argv)
    roots = [Path(f).expanduser() for f in (args.folders or [default_cache_dir(), "runs"])]
    done = clean(roots, dry_run=args.dry_run, partial=args.partial)
    for path, what in done:
        print(f"{'would remove' if args.dry_run else 'removed'} {path}  ({what})")
    print(f"{len(done)} leftover(s) {'found' if args.dry_run else 'removed'} under "
          f"{', '.join(str(r) for r in roots)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from .cli import run_cli
    run_cli(main)
