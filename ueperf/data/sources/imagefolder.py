"""ImageFolder datasets from a folder or a tar archive (read in place, nothing extracted).

Layout (``data.root`` is the folder or archive; one extra top-level folder is allowed, as in
``tiny-imagenet-100.tar.gz`` → ``tiny-imagenet-100/train/...``)::

    train/<class>/**/<image>     training images (JPEG, PNG, BMP, PPM/PGM, TIFF, WebP)
    val/<class>/**/<image>       test images (or test/<class>/...)
    classes.tsv                  optional: "<class>\\t<description>" lines, kept in the manifest

Classes are the sorted names of the folders under ``train/`` (label = position), and images
are ordered as torchvision's ``ImageFolder`` orders them (class, then sorted walk), so sample
indices match it. Test folders must be a subset of the training classes. Every image becomes
RGB (grayscale, palette, CMYK and alpha converted); with ``data.image_size > 0`` it is resized
(shorter side, bicubic) and centre-cropped to a square, otherwise all images must share one size.
Hidden files (names starting with ".") and files with other extensions are ignored.

``train_limit``/``test_limit`` are applied before decoding and are class-stratified: the first
image of every class, then the second of every class, ... until N are taken (the first N in
folder order would be only the first few classes).
"""
from __future__ import annotations

import os
import posixpath
import tarfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ...config import DataConfig
from ...errors import DataError
from . import RawData, check_common, finalize, register_source, resolve_root, select_classes
from ._decode import IMG_EXTENSIONS, decode_many

_TEST_DIRS = ("val", "test")
# Tar members up to this many bytes in all are kept from the listing pass, which saves a second
# decompression pass over the archive (tiny-imagenet-100: 106 MB of JPEGs, ~3 s saved).
_TAR_CACHE_BYTES = 512 << 20
_LAYOUT = ("expected train/<class>/<images> and val/<class>/<images> (or test/) directly inside "
           "it or inside one top-level folder")


def _is_image(name: str) -> bool:
    base = posixpath.basename(name)
    return not base.startswith(".") and base.lower().endswith(IMG_EXTENSIONS)


def _inside(real: str, root: Path) -> bool:
    real_root = os.path.realpath(root)
    return real == real_root or real.startswith(real_root + os.sep)


def _walk_sorted(top: Path, root: Path, seen: set) -> Iterator[str]:
    """Image paths under ``top`` relative to it (posix), in torchvision ImageFolder order (that of
    ``sorted(os.walk(top, followlinks=True))``).

    Links are followed only where they stay inside the dataset folder ``root`` and lead to a folder
    not yet visited (``seen``: the real paths visited so far, shared by every class of a split): a
    link out of ``root``, or one that leads to a folder already read (``train/a/loop -> ..``, or
    into another class), is a DataError naming it — checked before descending, so a loop or a link
    to ``/`` is never walked."""
    def inside(p: str) -> bool:
        return _inside(p, root)

    dirs = []  # (dirpath, image file names), gathered first, then yielded in sorted(os.walk) order
    stack = [str(top)]
    while stack:
        dirpath = stack.pop()
        with os.scandir(dirpath) as it:
            entries = list(it)
        files = []
        for e in entries:
            full = e.path
            if e.is_dir():  # follows links: a link to a folder is a folder here
                real = os.path.realpath(full)
                if e.is_symlink() and not inside(real):
                    raise DataError(f"{full} is a link out of the dataset folder {root} (to {real}); a dataset is "
                                    f"read from inside its folder only: copy the images in, or set data.root to "
                                    f"the real location")
                if real in seen:
                    raise DataError(f"{full} leads back to {real}, which is already part of the dataset (a link "
                                    f"loop, or another class's folder): its images would be read twice; remove the link")
                seen.add(real)
                stack.append(full)
            elif _is_image(e.name):
                if e.is_symlink() and not inside(os.path.realpath(full)):
                    raise DataError(f"{full} is a link out of the dataset folder {root} (to "
                                    f"{os.path.realpath(full)}); copy the image in, or set data.root to the "
                                    f"real location")
                files.append(e.name)
        dirs.append((dirpath, sorted(files)))
    for dirpath, files in sorted(dirs):
        rel = Path(dirpath).relative_to(top).as_posix()
        for f in files:
            yield f if rel == "." else f"{rel}/{f}"


def _sort_key(rel: str) -> Tuple[str, str]:
    # Same order as sorted(os.walk): by directory path, then file name.
    return posixpath.dirname(rel), posixpath.basename(rel)


class _Listing:
    """Image files of one dataset: per split, (label, relative path, locator) in canonical order.

    ``locator`` is a filesystem path (folder) or a member name (tar).
    """

    def __init__(self, base: str, classes: List[str], test_dir: str,
                 train: List[Tuple[int, str, str]], test: List[Tuple[int, str, str]],
                 descriptions: Optional[Dict[str, str]], member_bytes: Optional[Dict[str, bytes]] = None):
        self.base, self.classes, self.test_dir = base, classes, test_dir
        self.train, self.test = train, test
        self.descriptions = descriptions
        self.member_bytes = member_bytes  # tar only: image member → bytes, when it fit the budget


def _parse_descriptions(text: str) -> Dict[str, str]:
    out = {}
    for line in text.splitlines():
        if "\t" in line:
            k, v = line.split("\t", 1)
            out[k.strip()] = v.strip()
    return out


def _assign(where: str, classes: List[str], split_dir: str,
            files: Dict[str, List[Tuple[str, str]]]) -> List[Tuple[int, str, str]]:
    """Class folder → label for one split; ``files[class] = [(rel, locator), ...]``."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(files) - set(index))
    if unknown:
        raise DataError(f"{where}/{split_dir} has class folders with no training counterpart: "
                        f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}. Every "
                        f"{split_dir}/<class> must also exist under train/ ({_LAYOUT}).")
    out = []
    for c in sorted(files, key=index.__getitem__):
        for rel, loc in sorted(files[c], key=lambda t: _sort_key(t[0])):
            out.append((index[c], f"{c}/{rel}", loc))
    return out


def _list_dir(root: Path) -> _Listing:
    if (root / "train").is_dir():
        base = root
    else:
        cands = sorted(d for d in root.iterdir() if (d / "train").is_dir()) if root.is_dir() else []
        if len(cands) != 1:
            what = ("several candidates: " + ", ".join(str(c) for c in cands) + "; set data.root to one"
                    if cands else "no train/ folder found")
            raise DataError(f"{root} is not an ImageFolder dataset ({what}); {_LAYOUT}.")
        base = cands[0]
    test_dir = next((d for d in _TEST_DIRS if (base / d).is_dir()), None)
    if test_dir is None:
        raise DataError(f"{base} has train/ but no val/ or test/ folder; {_LAYOUT}.")
    splits = {}
    classes: List[str] = []
    for split_dir in ("train", test_dir):
        top = base / split_dir
        folders = sorted(e.name for e in os.scandir(top) if e.is_dir() and not e.name.startswith("."))
        seen = set()
        for c in folders:  # a class folder is a link out of the dataset, or another class's folder
            real = os.path.realpath(top / c)
            if not _inside(real, base):
                raise DataError(f"{top / c} is a link out of the dataset folder {base} (to {real}); copy the "
                                f"class in, or set data.root to the real location")
            if real in seen:
                raise DataError(f"{top / c} is the same folder as another class of {top} (a link to {real}); "
                                f"its images would be read twice under two labels")
            seen.add(real)
        files = {c: [(rel, str(top / c / rel)) for rel in _walk_sorted(top / c, base, seen)] for c in folders}
        empty = [c for c, fs in files.items() if not fs]
        if empty:
            raise DataError(f"{top} has class folders without images: {', '.join(empty[:5])}"
                            f"{' ...' if len(empty) > 5 else ''} (accepted: {', '.join(IMG_EXTENSIONS)}); "
                            f"remove them or add images.")
        if split_dir == "train":
            classes = folders
            if not classes:
                raise DataError(f"{top} has no class folders; {_LAYOUT}.")
        splits[split_dir] = _assign(str(base), classes, split_dir, files)
    desc_file = base / "classes.tsv"
    descriptions = _parse_descriptions(desc_file.read_text("utf-8", "replace")) if desc_file.is_file() else None
    return _Listing(str(base), classes, test_dir, splits["train"], splits[test_dir], descriptions)


def _list_tar(path: Path) -> _Listing:
    members: List[str] = []
    small: Dict[str, bytes] = {}
    cache: Optional[Dict[str, bytes]] = {}
    cached = 0
    try:
        with tarfile.open(path, "r|*") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                name = m.name[2:] if m.name.startswith("./") else m.name
                if name.startswith("/") or ".." in name.split("/") or "\\" in name:
                    raise DataError(f"{path}: member {m.name!r} has an absolute path or a '..' part; a "
                                    f"dataset archive holds relative paths inside its own folder only: "
                                    f"refusing to read it (re-create the archive from the dataset folder)")
                if _is_image(name):
                    members.append(name)  # a name stored twice is read once (first copy)
                    if cache is not None and name not in cache:
                        cached += m.size
                        if cached > _TAR_CACHE_BYTES:
                            cache = None  # too big to hold: decode in a second pass instead
                        else:
                            f = tf.extractfile(m)
                            assert f is not None
                            cache[name] = f.read()
                elif posixpath.basename(name) == "classes.tsv" and name.count("/") <= 1:
                    f = tf.extractfile(m)
                    assert f is not None
                    small[name] = f.read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"cannot read {path} as a tar archive ({e}); data.root must be an "
                        f"ImageFolder folder or a .tar/.tar.gz of one") from None
    members = list(dict.fromkeys(members))
    # Base prefix: "" or "<top>/" such that "<prefix>train/<class>/<file>" exists.
    prefixes = set()
    for n in members:
        parts = n.split("/")
        if len(parts) >= 3 and parts[0] == "train":
            prefixes.add("")
        elif len(parts) >= 4 and parts[1] == "train":
            prefixes.add(parts[0] + "/")
    if len(prefixes) != 1:
        what = (f"several top-level folders with train/: {sorted(prefixes)}" if prefixes
                else "no train/<class>/<image> members found")
        raise DataError(f"{path} is not an ImageFolder archive ({what}); {_LAYOUT}.")
    prefix = prefixes.pop()
    by_split: Dict[str, Dict[str, List[Tuple[str, str]]]] = {}
    for n in members:
        if not n.startswith(prefix):
            continue
        parts = n[len(prefix):].split("/")
        if len(parts) >= 3 and parts[0] in ("train",) + _TEST_DIRS:
            by_split.setdefault(parts[0], {}).setdefault(parts[1], []).append(("/".join(parts[2:]), n))
    test_dir = next((d for d in _TEST_DIRS if d in by_split), None)
    if test_dir is None:
        raise DataError(f"{path} has {prefix}train/ but no {prefix}val/ or {prefix}test/ images; {_LAYOUT}.")
    classes = sorted(by_split["train"])
    where = f"{path}:{prefix.rstrip('/')}" if prefix else str(path)
    train = _assign(where, classes, "train", by_split["train"])
    test = _assign(where, classes, test_dir, by_split[test_dir])
    desc = small.get(prefix + "classes.tsv")
    descriptions = _parse_descriptions(desc.decode("utf-8", "replace")) if desc is not None else None
    return _Listing(where, classes, test_dir, train, test, descriptions, cache)


def _stratified_first(entries: Sequence[Tuple[int, str, str]], n: int) -> List[Tuple[int, str, str]]:
    """The first ``n`` entries taking classes round-robin, returned in the original order."""
    if n <= 0 or n >= len(entries):
        return list(entries)
    pos: Dict[int, int] = {}
    rank = []
    for i, (label, _, _) in enumerate(entries):
        k = pos.get(label, 0)
        pos[label] = k + 1
        rank.append((k, label, i))
    keep = sorted(i for _, _, i in sorted(rank)[:n])
    return [entries[i] for i in keep]


def load_imagefolder(root: Path, *, image_size: int = 0, train_limit: int = 0,
                     test_limit: int = 0, classes: str = "") -> RawData:
    """Decode an ImageFolder folder or tar archive (see the module docstring) into uint8 NHWC."""
    if not root.exists():
        raise DataError(f"ImageFolder dataset not found: {root} does not exist. Set data.root to "
                        f"a folder or .tar(.gz) archive; {_LAYOUT}.")
    is_tar = root.is_file()
    listing = _list_tar(root) if is_tar else _list_dir(root)
    names = listing.classes
    subset = None
    if str(classes).strip():  # before the limits and the decoding: only the kept classes are read
        keep = select_classes(classes, listing.classes)
        new = {old: i for i, old in enumerate(keep)}
        listing.train = [(new[lab], a, loc) for lab, a, loc in listing.train if lab in new]
        listing.test = [(new[lab], a, loc) for lab, a, loc in listing.test if lab in new]
        names = [listing.classes[i] for i in keep]
        subset = {"spec": classes, "original_labels": keep}
    train = _stratified_first(listing.train, train_limit)
    test = _stratified_first(listing.test, test_limit)
    entries = train + test
    desc = f"decode {root.name}"
    if is_tar and listing.member_bytes is not None:
        cache = listing.member_bytes
        job_iter = ((r, f"{root}:{loc}", cache[loc]) for r, (_, _, loc) in enumerate(entries))
    elif is_tar:
        rows = {loc: r for r, (_, _, loc) in enumerate(entries)}

        def jobs() -> Iterator[Tuple[int, str, bytes]]:
            # Second sequential pass over the archive: read wanted members in archive order.
            try:
                with tarfile.open(root, "r|*") as tf:
                    for m in tf:
                        if not m.isfile():
                            continue
                        name = m.name[2:] if m.name.startswith("./") else m.name
                        r = rows.pop(name, None)
                        if r is not None:
                            f = tf.extractfile(m)
                            assert f is not None
                            yield r, f"{root}:{name}", f.read()
                            if not rows:
                                break  # everything wanted has been read
            except (tarfile.TarError, OSError, EOFError) as e:
                raise DataError(f"cannot read {root} ({e}); the archive is truncated or corrupt") from None
        job_iter = jobs()
    else:
        job_iter = ((r, loc, loc) for r, (_, _, loc) in enumerate(entries))
    x = decode_many(job_iter, total=len(entries), size=image_size, desc=desc)
    y = np.array([label for label, _, _ in entries], dtype=np.int64)
    nt = len(train)
    info = {
        "description": f"ImageFolder {listing.base} (train/, {listing.test_dir}/)",
        "source": "imagefolder", "format": "imagefolder-tar" if is_tar else "imagefolder-dir",
        "root": str(root), "test_dir": listing.test_dir,
        "files": {"train": len(listing.train), "test": len(listing.test)},
        "limits": "class-stratified first N (round-robin over classes)" if (train_limit or test_limit) else None,
        "resize": (f"shorter side to {image_size} (bicubic, JPEG draft), centre crop "
                   f"{image_size}x{image_size}") if image_size > 0 else None,
    }
    if subset is not None:
        info["class_subset"] = subset
    if listing.descriptions:
        info["class_descriptions"] = [listing.descriptions.get(c, "") for c in names]
    return RawData(x[:nt], y[:nt], x[nt:], y[nt:], names, info)


@register_source("imagefolder", root=lambda cfg: resolve_root(cfg, "imagefolder"))
def imagefolder(cfg: DataConfig) -> RawData:
    """ImageFolder dataset at ``data.root`` (folder or tar archive)."""
    check_common(cfg)
    raw = load_imagefolder(resolve_root(cfg, "imagefolder"), image_size=cfg.image_size,
                           train_limit=cfg.train_limit, test_limit=cfg.test_limit, classes=cfg.classes)
    return finalize(raw, cfg, "imagefolder")
