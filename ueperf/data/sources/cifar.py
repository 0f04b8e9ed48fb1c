"""CIFAR-10 / CIFAR-100 in the official python-pickle layout.

``data.root`` may be any of:

* a folder holding ``cifar-10-batches-py/`` (``cifar-100-python/``), the official archive
  ``cifar-10-python.tar.gz`` (``cifar-100-python.tar.gz``), or the batch files themselves
  (``data_batch_1..5``, ``test_batch``, ``batches.meta``; CIFAR-100: ``train``, ``test``, ``meta``);
* the ``.tar.gz`` archive itself (members are read in one sequential pass, nothing extracted).

Each batch is a pickled dict: ``b"data"`` (N, 3072) uint8, one image per row as R | G | B planes
of 32 x 32 (row-major), and ``b"labels"`` (CIFAR-100: ``b"fine_labels"``) a list of ints.

Pickle can run arbitrary code, so batches are read with an unpickler that refuses every global
except the few numpy names needed to rebuild a plain (non-object) array: a file that asks for
anything else is a :class:`DataError` and nothing in it is executed.
"""
from __future__ import annotations

import io
import pickle
import posixpath
import tarfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from ...config import DataConfig
from ...errors import DataError
from ...files import atomic_write, file_digest
from . import RawData, finalize, register_source, resolve_root

_SPECS: Dict[str, Dict[str, Any]] = {
    "cifar10": dict(
        title="CIFAR-10", folder="cifar-10-batches-py", archive="cifar-10-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",  # published on the CIFAR page / torchvision
        train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"], meta="batches.meta",
        label_key="labels", names_key="label_names", num_classes=10),
    "cifar100": dict(
        title="CIFAR-100", folder="cifar-100-python", archive="cifar-100-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train=["train"], test=["test"], meta="meta",
        label_key="fine_labels", names_key="fine_label_names", num_classes=100),
}


# ───────────────────────────────────────────── safe unpickling ──
def _reconstruct_fn():
    # numpy's array-rebuilding function (numpy.core or numpy._core depending on the version).
    return np.empty(0).__reduce__()[0]


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles builtins (dict, list, bytes, str, int) and plain numpy arrays, nothing else.

    The official files (Python 2 pickles) and re-pickled copies (protocol 2 from Python 3) need
    ``numpy.ndarray``, ``numpy.dtype``, ``numpy[._]core.multiarray._reconstruct``, ``...scalar``
    (numpy integers, e.g. labels re-pickled from an array) and ``_codecs.encode`` (how protocol 2
    stores bytes). Each is wrapped so it can only build a non-object array, a numeric scalar or
    latin-1 bytes; every other global is refused before it is looked up.
    """

    def __init__(self, file: Any, what: str):
        super().__init__(file, encoding="bytes")  # Python 2 str -> bytes, as the format expects
        self._what = what

    def find_class(self, module: str, name: str) -> Any:
        what = self._what

        def refuse(reason: str) -> DataError:
            return DataError(f"refusing to unpickle {what}: {reason}: not a CIFAR file (or a "
                             f"tampered one). Nothing from it was executed; replace the file with "
                             f"the official download.")

        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            def safe_dtype(*args: Any) -> np.dtype:
                dt = np.dtype(*args)
                if dt.hasobject:
                    raise refuse(f"object dtype {dt}")
                return dt
            return safe_dtype
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            real = _reconstruct_fn()

            def safe_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
                if subtype is not np.ndarray:
                    raise refuse(f"array subtype {subtype!r}")
                return real(subtype, shape, dtype)
            return safe_reconstruct
        if name == "scalar" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            # numpy scalars (e.g. labels re-pickled as numpy integers): a dtype and its raw bytes
            def safe_scalar(dtype: Any, data: Any = None) -> Any:
                if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, (bytes, bytearray)):
                    raise refuse(f"numpy scalar of {dtype!r}")
                return np.frombuffer(bytes(data), dtype=dtype, count=1)[0]
            return safe_scalar
        if (module, name) == ("_codecs", "encode"):
            def latin1_encode(obj: Any, encoding: str = "latin1", *rest: Any) -> bytes:
                if not isinstance(obj, str) or encoding.lower() not in ("latin1", "latin-1", "iso-8859-1"):
                    raise refuse(f"_codecs.encode with {type(obj).__name__}, {encoding!r}")
                return obj.encode("latin1")
            return latin1_encode
        raise refuse(f"it asks for global {module}.{name}")


def safe_unpickle(data: bytes, what: str) -> Any:
    """Unpickle ``data`` (from file ``what``) with :class:`_SafeUnpickler`; errors → DataError."""
    try:
        return _SafeUnpickler(io.BytesIO(data), what).load()
    except DataError:
        raise
    except Exception as e:  # any malformed pickle: UnpicklingError, EOFError, ValueError, ...
        raise DataError(f"{what} is not a readable CIFAR batch (unpickling failed: "
                        f"{type(e).__name__}: {e}); replace it with the official file.") from None


# ───────────────────────────────────────────── batch parsing ──
def _get(d: Dict[Any, Any], key: str) -> Any:
    # Official files have bytes keys; accept str keys of re-pickled copies too.
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


def _parse_batch(d: Any, what: str, label_key: str, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """Batch dict → (x (N, 32, 32, 3) uint8 NHWC, y (N,) int64)."""
    if not isinstance(d, dict):
        raise DataError(f"{what} holds a {type(d).__name__}, not a CIFAR batch dict")
    data, labels = _get(d, "data"), _get(d, label_key)
    if data is None or labels is None:
        keys = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in d)
        raise DataError(f"{what} is not a CIFAR batch: expected keys 'data' and {label_key!r}, "
                        f"found {keys}")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{what}: 'data' is {desc}; a CIFAR batch holds (N, 3072) uint8 rows")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{what}: {label_key!r} is not a list of integers") from None
    n = data.shape[0]
    if y.shape != (n,):
        raise DataError(f"{what}: {n} images but {label_key!r} has shape {y.shape}")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"{what}: labels span [{y.min()}, {y.max()}], expected [0, {num_classes})")
    # Row = R plane | G plane | B plane, each 32 x 32 row-major → NHWC.
    x = np.ascontiguousarray(data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1))
    return x, y


# ───────────────────────────────────────────── file access ──
def download(url: str, dest: Path, md5: str, *, what: str = "archive",
             alternative: str = "or set data.root to the archive or to the extracted folder") -> Path:
    """Download ``url`` to ``dest`` (atomically: a temp sibling, renamed once its md5 checks).

    The one download of the data sources (SVHN's files come through here too): ``what`` names
    the file in the md5 error ("the official <what>"), ``alternative`` completes the offline
    error's advice ("put it at <dest> (<alternative>)")."""
    import urllib.error
    import urllib.request

    from tqdm.auto import tqdm

    def fetch(part: Path) -> None:
        try:
            with urllib.request.urlopen(url, timeout=60) as r, open(part, "wb") as f:
                total = int(r.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}",
                          disable=None, leave=False) as bar:
                    for chunk in iter(lambda: r.read(1 << 20), b""):
                        f.write(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise DataError(f"could not download {url} ({e}). Without network access, download it "
                            f"on another machine and put it at {dest} ({alternative}).") from None
        got = file_digest(part, "md5")
        if got != md5:
            raise DataError(f"downloaded {url} but its md5 is {got}, expected {md5} (corrupt or changed "
                            f"download); try again, or put the official {what} at {dest}.")

    return atomic_write(dest, fetch)


def _read_tar(path: Path, names: List[str]) -> Dict[str, bytes]:
    """The members of ``path`` whose file names are in ``names`` (one sequential pass)."""
    wanted = set(names)
    found: Dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r|*") as tf:
            for m in tf:
                base = posixpath.basename(m.name)
                if m.isfile() and base in wanted and base not in found:
                    f = tf.extractfile(m)
                    assert f is not None  # regular file
                    found[base] = f.read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"cannot read {path} as a tar archive ({e}); expected the official CIFAR "
                        f"archive (.tar.gz) or a folder of batch files") from None
    return found


def _locate(root: Path, spec: Dict[str, Any], download_ok: bool) -> Tuple[Dict[str, bytes], str]:
    """Read the batch files for ``spec`` from ``root``; returns (name → bytes, description)."""
    names = spec["train"] + spec["test"] + [spec["meta"]]
    layout = (f"{root}/{spec['folder']}/{{{','.join(names)}}}, or the official archive "
              f"{spec['archive']} ({spec['url']}) in {root}, or data.root pointing at the archive")
    if not root.exists() and root.name.endswith((".tar.gz", ".tgz", ".tar")):
        raise DataError(f"{spec['title']} archive {root} does not exist. Point data.root at the "
                        f"official {spec['archive']} ({spec['url']}) or at the extracted folder.")
    if root.is_file():
        files = _read_tar(root, names)
        missing = [n for n in names if n not in files]
        if missing:
            raise DataError(f"{root} is not a {spec['title']} archive: it lacks "
                            f"{', '.join(missing)} (expected {spec['folder']}/{{{','.join(names)}}})")
        return files, f"{spec['title']} archive {root}"
    for folder in (root / spec["folder"], root):
        if folder.is_dir() and all((folder / n).is_file() for n in names):
            return {n: (folder / n).read_bytes() for n in names}, f"{spec['title']} folder {folder}"
    archive = root / spec["archive"]
    if not archive.is_file():
        if not download_ok:
            present = (f"{root} exists but holds none of the expected files" if root.exists()
                       else f"{root} does not exist")
            raise DataError(f"{spec['title']} not found: {present}. Expected {layout}. Set "
                            f"data.root to where it is, or data.download=true to fetch it.")
        download(spec["url"], archive, spec["md5"])
    return _locate(archive, spec, False)


def load_cifar(root: Path, name: str, download_ok: bool = False) -> RawData:
    """Read CIFAR-10 (``name="cifar10"``) or CIFAR-100 from ``root`` (see module docstring)."""
    spec = _SPECS[name]
    files, where = _locate(root, spec, download_ok)
    k = spec["num_classes"]
    meta = safe_unpickle(files[spec["meta"]], f"{spec['meta']} ({where})")
    names = _get(meta, spec["names_key"]) if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != k:
        raise DataError(f"{spec['meta']} ({where}) does not list the {k} {spec['title']} class names "
                        f"under {spec['names_key']!r}")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]

    parts: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    info_batches: Dict[str, Dict[str, Any]] = {}
    for bname in spec["train"] + spec["test"]:
        d = safe_unpickle(files.pop(bname), f"{bname} ({where})")  # pop: free the bytes early
        parts[bname] = _parse_batch(d, f"{bname} ({where})", spec["label_key"], k)
        label = _get(d, "batch_label")
        info_batches[bname] = {"n": int(parts[bname][1].shape[0]),
                               "batch_label": label.decode("utf-8", "replace") if isinstance(label, bytes)
                               else (str(label) if label is not None else None)}

    def cat(batch_names: List[str]) -> Tuple[np.ndarray, np.ndarray]:
        return (np.concatenate([parts[b][0] for b in batch_names]),
                np.concatenate([parts[b][1] for b in batch_names]))

    train_x, train_y = cat(spec["train"])
    test_x, test_y = cat(spec["test"])
    info = {"description": f"{spec['title']} (official python-pickle format) from {where}",
            "source": name, "format": "cifar-python", "batches": info_batches,
            "label_key": spec["label_key"]}
    return RawData(train_x, train_y, test_x, test_y, classes, info)


def _root_of(name: str):
    return lambda cfg: resolve_root(cfg, name)


@register_source("cifar10", root=_root_of("cifar10"))
def cifar10(cfg: DataConfig) -> RawData:
    """CIFAR-10: 50,000 train + 10,000 test, 32 x 32, 10 classes (subsets read unchanged).

    ``train_limit``/``test_limit`` keep the first N rows in file order (the official order is
    already shuffled, so the first N are close to class-balanced).
    """
    return finalize(load_cifar(resolve_root(cfg, "cifar10"), "cifar10", cfg.download), cfg, "cifar10")


@register_source("cifar100", root=_root_of("cifar100"))
def cifar100(cfg: DataConfig) -> RawData:
    """CIFAR-100 with its 100 fine labels: 50,000 train + 10,000 test, 32 x 32."""
    return finalize(load_cifar(resolve_root(cfg, "cifar100"), "cifar100", cfg.download), cfg, "cifar100")
