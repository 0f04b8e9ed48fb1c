"""Files written so that a reader never sees half of one: the one atomic-write mechanism.

Every file ueperf writes for another process (or a later run) to read goes through here:

    write(tmp) ─▶ flush + fsync ─▶ os.replace(tmp, path)       (same folder: an atomic rename)

Temporary siblings are named ``.<name>.tmp-<pid>-<8 hex>`` (:func:`temp_sibling`), unique per
writer, so two writers never share a temp file; a folder being replaced is moved aside as
``.<name>.old-<pid>-<8 hex>`` until the new one is in place. A killed writer's leftovers are found
by those two patterns (:func:`is_leftover`). Folders are published the same way
(:func:`atomic_dir`: build in a temp sibling, one rename).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Union

PathLike = Union[str, os.PathLike]
TEMP_MARK = ".tmp-"             # a file or folder being written
OLD_MARK = ".old-"              # a folder being replaced, moved aside until the new one is in place
_HASH_CHUNK = 8 << 20           # 8 MiB reads: large enough to amortise syscalls, small enough to stay in cache


def temp_sibling(path: PathLike, suffix: str = "", mark: str = TEMP_MARK) -> Path:
    """A fresh hidden name beside ``path`` (same filesystem, so a rename onto ``path`` is atomic):
    ``.<name>.tmp-<pid>-<8 hex><suffix>``."""
    path = Path(path)
    return path.parent / f".{path.name}{mark}{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


def is_leftover(name: str) -> bool:
    """Whether a file or folder name is a writer's temporary (``.x.tmp-…`` / ``.x.old-…``)."""
    return name.startswith(".") and (TEMP_MARK in name or OLD_MARK in name)


def fsync_dir(path: PathLike) -> None:
    """Make a folder's new entries (a rename) durable; a no-op where the platform cannot."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[Path], None], *, suffix: str = "") -> Path:
    """Call ``write(tmp)`` to produce the file at a temp sibling, then rename it onto ``path``.

    ``suffix`` keeps a file type visible to writers that infer it from the name (``.png``).
    On any exception the temp file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path, suffix)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def atomic_dir(path: PathLike, *, replace: bool = False) -> Iterator[Path]:
    """Build a folder in a temp sibling (yielded) and publish it at ``path`` in one rename.

    Readers see either no folder, the old one or the complete new one. ``replace``: an existing
    folder at ``path`` is moved aside, the new one renamed into place, then the old one deleted
    (restored if the rename fails); without it an existing ``path`` raises FileExistsError at
    publish time (e.g. another writer finished first). The caller decides whether a folder may be
    replaced. On any exception the temp folder is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        fsync_dir(tmp)
        old = None
        if path.exists() or path.is_symlink():
            if not replace:
                raise FileExistsError(f"{path} appeared while it was being written")
            old = temp_sibling(path, mark=OLD_MARK)
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except OSError:
            if old is not None:
                os.replace(old, path)
            raise
        fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes_atomic(path: PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def json_safe(v: Any) -> Any:
    """A JSON-safe copy: NaN/inf become strings (JSON has none; they stay visible), tensors and
    numpy values become numbers or lists, dataclasses dicts, anything else its repr."""
    import dataclasses
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    mod = type(v).__module__.split(".")[0]
    if mod == "torch":
        v = v.detach().cpu()
        return json_safe(v.item() if v.numel() == 1 else v.tolist())
    if mod == "numpy":
        return json_safe(v.tolist() if hasattr(v, "tolist") else v.item())
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return json_safe(dataclasses.asdict(v))
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    return repr(v)


def write_json_atomic(path: PathLike, obj: Any, *, indent: int = 2) -> Path:
    """``obj`` as JSON (through :func:`json_safe`), never half-written."""
    return write_text_atomic(path, json.dumps(json_safe(obj), indent=indent))


def torch_save_atomic(path: PathLike, obj: Any) -> Path:
    """``torch.save(obj)`` to ``path``, never half-written (checkpoints, priors, surrogates)."""
    import torch
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def sha256_file(path: PathLike, chunk: int = _HASH_CHUNK) -> str:
    """Hex sha256 of a file, read in fixed-size chunks into one reused buffer."""
    return file_digest(path, "sha256", chunk)


def file_digest(path: PathLike, algorithm: str = "sha256", chunk: int = _HASH_CHUNK) -> str:
    """Hex digest (``hashlib`` algorithm name) of a file, read in chunks into one reused buffer."""
    h = hashlib.new(algorithm)
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()
