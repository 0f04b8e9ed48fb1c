"""Files written so that a reader never sees half of one: the one atomic-write mechanism.

Every file ueperf writes for another process (or a later run) to read goes through here:

    write(tmp) ─▶ flush + fsync ─▶ os.replace(tmp, path)       (same folder: an atomic rename)

Temporary siblings are named ``.<name>.tmp-<pid>-<8 hex>`` (:func:`temp_sibling`), unique per
writer, so two writers never share a temp file, and a killed writer's leftovers are found by
that one pattern (:data:`TEMP_GLOB`).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Union

PathLike = Union[str, os.PathLike]
TEMP_MARK = ".tmp-"
TEMP_GLOB = f".*{TEMP_MARK}*"   # what every temp sibling's name matches
_HASH_CHUNK = 8 << 20           # 8 MiB reads: large enough to amortise syscalls, small enough to stay in cache


def temp_sibling(path: PathLike, suffix: str = "") -> Path:
    """A fresh hidden name beside ``path`` (same filesystem, so a rename onto ``path`` is atomic)."""
    path = Path(path)
    return path.parent / f".{path.name}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


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


def sha256_file(path: PathLike, chunk: int = _HASH_CHUNK) -> str:
    """Hex sha256 of a file, read in fixed-size chunks into one reused buffer."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()
