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
from typing import Any, Callable, Iterator, Optional, Sequence, Union

from .errors import UeperfError

PathLike = Union[str, os.PathLike]
TEMP_MARK = ".tmp-"             # a file or folder being written
OLD_MARK = ".old-"              # a folder being replaced, moved aside until the new one is in place
_HASH_CHUNK = 8 << 20           # 8 MiB reads: large enough to amortise syscalls, small enough to stay in cache


def default_cache_dir() -> str:
    """Where stores, surrogates and priors are cached unless a config says otherwise:
    ``$UEPERF_CACHE_DIR`` (e.g. a cluster's scratch disk), else ``~/.cache/ueperf``."""
    return os.environ.get("UEPERF_CACHE_DIR") or "~/.cache/ueperf"


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


def torch_load_safe(path: PathLike, what: str, fix: str) -> Any:
    """``torch.load(path, weights_only=True)`` (tensors and plain containers only: no code stored in
    the file can run), with errors that say what happened: a file asking to run code names the global
    it asked for; a truncated or foreign file says so. ``what`` names the file's role ("checkpoint"),
    ``fix`` is what to do next. Raises :class:`UeperfError`."""
    import pickle
    import re

    import torch
    p = Path(path)
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        g = re.search(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL)\s+([\w.]+)", text)
        if g:
            raise UeperfError(f"refused to load the {what} {p}: it asks to call the Python object {g.group(1)} while "
                              f"loading, which a file of tensors never needs (a crafted or foreign file); nothing "
                              f"from it was run. {fix}") from None
        op = re.search(r"Unsupported operand (\d+)", text)
        raise UeperfError(f"cannot load the {what} {p}: it is not a file torch.save wrote "
                          f"({'pickle opcode ' + op.group(1) + ' is not allowed' if op else 'its pickle is refused'}); "
                          f"nothing from it was run. {fix}") from None
    except Exception as e:  # truncated zip, not a torch file at all, ...
        raise UeperfError(f"cannot load the {what} {p} ({type(e).__name__}: {e}): it is truncated or not a "
                          f"PyTorch file. {fix}") from None


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


# ───────────────────────────────────────────── one writer at a time ──
LOCK_SUFFIX = ".lock"


def lock_path(target: PathLike) -> Path:
    """The lock file of ``target`` (a file or folder): ``.<name>.lock`` beside it, so it exists
    before the target does and survives the target's atomic replacement."""
    target = Path(target)
    return target.parent / f".{target.name}{LOCK_SUFFIX}"


class Busy(UeperfError):
    """Raised by :func:`hold` when another process holds the lock; ``holder`` describes it."""

    def __init__(self, target: Path, holder: dict, what: str = "", hint: str = ""):
        self.target, self.holder = target, holder
        super().__init__(f"{what + ' ' if what else ''}{target} is in use by {describe_holder(holder)}"
                         + (f". {hint}" if hint else ""))


def describe_holder(holder: dict) -> str:
    if not holder:
        return "another process (it has not said which yet)"
    cmd = holder.get("command", "")
    return (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"
            + (f" (`{cmd}`)" if cmd else ""))


_HELD: dict = {}  # lock file → [fd, depth]: a process that holds a lock may take it again (nested)


class Lock:
    """An exclusive OS lock (``flock``) on :func:`lock_path` of a target, held until :meth:`release`
    (or the process ends: the OS releases it, so a killed writer never leaves a stale lock). The
    lock file records the holder (pid, host, start time, command) for the error other writers get,
    and is removed on release (a killed writer's empty lock file is harmless and reused).
    Re-entrant within a process: taking a lock this process already holds nests (the writer that
    holds a store's lock may call code that takes it again).

    Works between processes of one machine and on local filesystems. On NFS, ``flock`` is emulated
    with fcntl byte-range locks where the server runs lockd/NFSv4 (Linux clients do this); on
    filesystems without lock support a second writer on another host is not stopped — keep one
    sweep's run folders on one node or on a filesystem with working locks (README, Reliability).
    """

    def __init__(self, target: PathLike):
        self.target = Path(target)
        self.path = lock_path(self.target)
        self._fd: Optional[int] = None

    def acquire(self, wait_s: float = 0.0, poll_s: float = 0.2, what: str = "", hint: str = "") -> "Lock":
        import fcntl
        import socket
        import sys
        import time
        key = str(self.path.absolute())
        if key in _HELD:
            _HELD[key][1] += 1
            self._fd = -1  # nested: the outer holder keeps the file open
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + wait_s
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise Busy(self.target, read_holder(self.path), what, hint) from None
                time.sleep(poll_s)
                continue
            # The holder removes the file when it releases: a lock taken on a file that is no longer
            # at the path (or was replaced) is stale; take it again on the current one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join(sys.argv)[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd
        _HELD[key] = [fd, 1]
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        key = str(self.path.absolute())
        entry = _HELD.get(key)
        self._fd = None
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _HELD[key]
        import fcntl
        try:
            self.path.unlink(missing_ok=True)  # while still held: a waiter then retries on a fresh file
            fcntl.flock(entry[0], fcntl.LOCK_UN)
        finally:
            os.close(entry[0])

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __del__(self) -> None:  # a forgotten lock is released with its object, not at process exit
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __enter__(self) -> "Lock":
        return self if self.held else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def read_holder(path: PathLike) -> dict:
    try:
        return json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}


def hold(target: PathLike, wait_s: float = 0.0, *, what: str = "", hint: str = "") -> Lock:
    """Acquire the lock of ``target``; when another process holds it after ``wait_s`` seconds raise
    :class:`Busy`: "<what> <target> is in use by pid P on host H since T (`command`). <hint>".
    Use as ``with hold(path):`` or keep the returned :class:`Lock` and release it."""
    return Lock(target).acquire(wait_s, what=what, hint=hint)


def clean_leftovers_in(folder: PathLike) -> list:
    """Remove every writer's temporary inside ``folder`` (``.*.tmp-*``, ``.*.old-*``): call it with
    the folder's lock held (a run folder: every file in it belongs to the run)."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for p in folder.iterdir():
            if is_leftover(p.name):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def clean_leftovers(target: PathLike) -> list:
    """Remove what killed writers of ``target`` left beside it (temp and moved-aside siblings of
    :func:`temp_sibling`). Call it with ``target``'s lock held: then no live writer owns them."""
    target = Path(target)
    removed = []
    if not target.parent.is_dir():
        return removed
    prefix = f".{target.name}"
    for p in target.parent.iterdir():
        rest = p.name[len(prefix):]
        if p.name.startswith(prefix) and (rest.startswith(TEMP_MARK) or rest.startswith(OLD_MARK)):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


# ───────────────────────────────────────────── what may be replaced ──
def check_replaceable(target: PathLike, *, overwrite: bool, what: str, marker: str, allowed: Sequence[str],
                      inputs: Sequence[PathLike] = ()) -> Path:
    """Refuse to write ``target`` where that would destroy something it should not (DataError):

    - ``target`` is, contains or lies inside one of ``inputs`` (a command's own input);
    - ``target`` exists and ``overwrite`` is off;
    - ``target`` exists but is not a folder ueperf made: not a folder, a link, no ``marker`` entry,
      or entries beyond ``allowed`` (a user's own files).

    Returns ``target`` as an absolute path; the replacement itself is atomic (:func:`atomic_dir`)."""
    from .errors import DataError
    target = Path(target).expanduser().absolute()
    for inp in inputs:
        inp = Path(inp).expanduser().absolute()
        if target == inp or inp in target.parents or target in inp.parents:
            rel = "is" if target == inp else ("lies inside" if inp in target.parents else "contains")
            raise DataError(f"refusing to write the {what} to {target}: it {rel} this command's own input "
                            f"{inp}; choose another output folder")
    if not (target.exists() or target.is_symlink()):
        return target
    if not overwrite:
        raise DataError(f"{target} already exists; pass --overwrite to replace it (only a {what} that ueperf "
                        f"wrote is ever replaced), or choose another output folder")
    if target.is_symlink() or not target.is_dir():
        raise DataError(f"refusing to replace {target}: it is a {'link' if target.is_symlink() else 'file'}, not a "
                        f"{what} folder ueperf wrote; remove it yourself or choose another output folder")
    entries = {e.name for e in target.iterdir()}
    foreign = sorted(entries - set(allowed) - {e for e in entries if is_leftover(e)})
    if marker not in entries or foreign:
        why = f"it holds files ueperf did not write ({', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''})" \
            if foreign else f"it has no {marker}, so it is not a {what} ueperf wrote"
        raise DataError(f"refusing to replace {target}: {why}. Remove it yourself or choose another output folder")
    return target


# ───────────────────────────────────────────── seals ──
SEAL_KEY_ENV = "UEPERF_SEAL_KEY"


def seal_key_path() -> Path:
    """The key file: ``$UEPERF_SEAL_KEY``, else ``~/.config/ueperf/seal.key`` (one per user; a lab that
    shares a cache folder points every member at one key file)."""
    env = os.environ.get(SEAL_KEY_ENV)
    return Path(env).expanduser() if env else Path("~/.config/ueperf/seal.key").expanduser()


def seal_key() -> bytes:
    """This user's 32-byte sealing key, created (mode 0600, atomically) on first use."""
    path = seal_key_path()
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first
        return path.read_bytes()
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(32))
        f.flush()
        os.fsync(f.fileno())
    return path.read_bytes()


def _canonical(doc: dict) -> bytes:
    return json.dumps({k: v for k, v in doc.items() if k != "seal"}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode()


def seal(doc: dict) -> dict:
    """An HMAC-SHA256 of ``doc`` (without its own ``seal`` entry) under this user's key, with the
    key's id: what :func:`check_seal` verifies."""
    import hmac
    key = seal_key()
    return {"alg": "hmac-sha256", "key_id": hashlib.sha256(key).hexdigest()[:16],
            "mac": hmac.new(key, _canonical(doc), hashlib.sha256).hexdigest()}


def check_seal(doc: dict) -> str:
    """``"ours"`` (sealed with this user's key and unchanged since), ``"foreign"`` (sealed with another
    key: cannot be checked here) or ``"none"``; raises ValueError when the seal is this user's but
    the document changed after it was sealed."""
    import hmac
    s = doc.get("seal")
    if not isinstance(s, dict):
        return "none"
    key = seal_key()
    if s.get("key_id") != hashlib.sha256(key).hexdigest()[:16]:
        return "foreign"
    if not hmac.compare_digest(str(s.get("mac", "")), hmac.new(key, _canonical(doc), hashlib.sha256).hexdigest()):
        raise ValueError("its seal does not match its content")
    return "ours"
