"""A reader of numeric arrays in MATLAB v5 ``.mat`` files (what ``save -v6`` and ``save -v7`` write).

Enough of the format for data sets shipped as .mat files (SVHN's ``*_32x32.mat``), without a
dependency on scipy. Layout, as MathWorks documents it ("MAT-File Format", version 5)::

    header (128 bytes)   116 text ("MATLAB 5.0 MAT-file, ...") | 8 subsystem offset |
                         2 version (0x0100) | 2 endian indicator ("IM": little-endian, "MI": big)
    data elements        tag = uint32 type | uint32 byte count, then the data, 8-byte aligned;
                         a "small element" packs count (upper 16 bits) | type (lower 16) into one
                         uint32 and up to 4 data bytes into the rest of the 8-byte tag

A top-level element is ``miMATRIX`` (one variable) or ``miCOMPRESSED`` (a zlib stream holding one
``miMATRIX`` element, what ``-v7`` writes). A numeric ``miMATRIX`` holds, in order: array flags
(class, complex/logical bits), dimensions (int32), name (int8 text), the real part. The stored
type of the real part may be narrower than the class (MATLAB saves a double array of small
integers as ``miUINT8``); it is converted to the class's dtype. Data are column-major: an array of
MATLAB dimensions (d0, d1, ..., dk) is returned with that shape in Fortran order, as a view of
one buffer (no copy).

Memory: elements are read sequentially, compressed ones inflated in bounded pieces straight into
the array's buffer, so a variable costs its own size once, never its compressed bytes beside it
too; variables that are not asked for are skipped after their name (inflating only their head).

Not supported, each a :class:`DataError` saying so: v7.3 files (HDF5, ``save -v7.3``), v4 files,
and, for a variable that is asked for, cell/struct/object/char/sparse classes and complex data.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...errors import DataError

HEADER_BYTES = 128
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"   # a v7.3 file is HDF5 with a 512-byte user block
_CHUNK = 1 << 20                         # compressed bytes read per step, and the inflate bound

# Data types of element tags (miINT8 ... miUTF32).
MI_INT8, MI_UINT8, MI_INT16, MI_UINT16, MI_INT32, MI_UINT32 = 1, 2, 3, 4, 5, 6
MI_SINGLE, MI_DOUBLE, MI_INT64, MI_UINT64 = 7, 9, 12, 13
MI_MATRIX, MI_COMPRESSED = 14, 15
_MI_DTYPES = {MI_INT8: "i1", MI_UINT8: "u1", MI_INT16: "i2", MI_UINT16: "u2", MI_INT32: "i4",
              MI_UINT32: "u4", MI_SINGLE: "f4", MI_DOUBLE: "f8", MI_INT64: "i8", MI_UINT64: "u8"}

# Array classes (the low byte of the array flags) → numpy dtype of the returned array.
_MX_DTYPES = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4",
              14: "i8", 15: "u8"}
_MX_NAMES = {1: "cell array", 2: "struct", 3: "object", 4: "char array", 5: "sparse array",
             6: "double", 7: "single", 8: "int8", 9: "uint8", 10: "int16", 11: "uint16",
             12: "int32", 13: "uint32", 14: "int64", 15: "uint64"}
_FLAG_COMPLEX = 0x800


class _Element:
    """The content of one top-level element, read front to back: straight from the file
    (``miMATRIX``) or inflated on the way (``miCOMPRESSED``), never past the element's end."""

    def __init__(self, f: BinaryIO, nbytes: int, compressed: bool, what: str):
        self._f, self._left, self._what = f, nbytes, what
        # The most bytes this element can hold: deflate expands at most ~1032:1 (zlib's bound).
        self.capacity = nbytes * 1032 + 1024 if compressed else nbytes
        self._z = zlib.decompressobj() if compressed else None
        self._pending = b""   # inflated, not yet consumed

    def _truncated(self) -> DataError:
        return DataError(f"{self._what} ends early (truncated or corrupt .mat file); download it again")

    def _raw(self, n: int) -> bytes:
        data = self._f.read(min(n, self._left))
        self._left -= len(data)
        return data

    def _inflate(self, limit: int) -> bytes:
        """Up to ``limit`` more inflated bytes (b"" at the end of the zlib stream)."""
        assert self._z is not None
        while True:
            data = self._z.unconsumed_tail
            if not data:
                if self._z.eof or self._left == 0:
                    return b""
                data = self._raw(_CHUNK)
                if not data:
                    raise self._truncated()
            try:
                out = self._z.decompress(data, limit)
            except zlib.error as e:
                raise DataError(f"{self._what}: its compressed data cannot be inflated ({e}); the file is "
                                f"corrupt, download it again") from None
            if out or self._z.eof:
                return out

    def readinto(self, view: memoryview) -> None:
        """Fill ``view`` (a byte view) with the next ``len(view)`` bytes, or raise."""
        pos, n = 0, len(view)
        if self._pending:
            k = min(n, len(self._pending))
            view[:k] = self._pending[:k]
            self._pending = self._pending[k:]
            pos = k
        while pos < n:
            if self._z is None:
                got = self._f.readinto(view[pos:pos + min(n - pos, self._left)]) if self._left else 0
                self._left -= got or 0
            else:
                out = self._inflate(min(n - pos, _CHUNK))
                got = len(out)
                view[pos:pos + got] = out
            if not got:
                raise self._truncated()
            pos += got

    def read(self, n: int) -> bytes:
        buf = bytearray(n)
        self.readinto(memoryview(buf))
        return bytes(buf)


class _Parser:
    """Tags and sub-elements of one variable, in the file's byte order."""

    def __init__(self, el: _Element, order: str, what: str):
        self.el, self.order, self.what = el, order, what

    def tag(self) -> Tuple[int, int, Optional[bytes]]:
        """(type, byte count, data of a small element or None); a normal element's data follows."""
        word, count = struct.unpack(self.order + "II", self.el.read(8))
        if word >> 16:  # small data element: count in the upper half, data in the second word
            n = word >> 16
            if n > 4:
                raise DataError(f"{self.what}: malformed small data element ({n} bytes); the file is corrupt")
            return word & 0xFFFF, n, struct.pack(self.order + "I", count)[:n]
        return word, count, None

    def element(self, expect: Sequence[int], part: str) -> Tuple[int, bytes]:
        """(type, data) of the next sub-element, padding consumed; its type must be in ``expect``."""
        mi, n, small = self.tag()
        if mi not in expect:
            raise DataError(f"{self.what}: unexpected {part} element (type {mi}); not a MATLAB v5 "
                            f"numeric array, or a corrupt file")
        if small is not None:
            return mi, small
        data = self.el.read(n)
        self.el.read(-n % 8)
        return mi, data


def _check_header(head: bytes, path: Path) -> str:
    """The struct byte order of a v5 file ('<' or '>'), or a DataError saying what the file is."""
    if len(head) < HEADER_BYTES:
        raise DataError(f"{path} is too short to be a MATLAB .mat file ({len(head)} bytes); the download is "
                        f"incomplete or the file is not a .mat file")
    text = head[:116]
    if text.startswith(b"MATLAB 7.3") or head[124:126] in (b"\x00\x02", b"\x02\x00"):
        raise DataError(f"{path} is a MATLAB v7.3 file (HDF5), which this reader does not read. Use the "
                        f"official file, or re-save it in MATLAB with save(name, 'X', 'y', '-v7') "
                        f"(a v5 .mat file).")
    if head[:8] == HDF5_SIGNATURE:
        raise DataError(f"{path} is an HDF5 file, not a MATLAB v5 .mat file; re-save it in MATLAB with "
                        f"save(name, 'X', 'y', '-v7')")
    if not text.startswith(b"MATLAB"):
        raise DataError(f"{path} is not a MATLAB v5 .mat file (no 'MATLAB 5.0 MAT-file' header; a v4 file "
                        f"or another format); re-save it with save(name, 'X', 'y', '-v7') or use the "
                        f"official file")
    endian = head[126:128]
    if endian not in (b"IM", b"MI"):
        raise DataError(f"{path}: the header's endian indicator is {endian!r}, not 'IM' or 'MI'; the file "
                        f"is corrupt")
    order = "<" if endian == b"IM" else ">"
    (version,) = struct.unpack(order + "H", head[124:126])
    if version != 0x0100:
        raise DataError(f"{path}: MAT-file version 0x{version:04x}, expected 0x0100 (v5/v6/v7); re-save it "
                        f"with save(name, 'X', 'y', '-v7')")
    return order


def _variable(p: _Parser, wanted: Sequence[str]) -> Tuple[str, Optional[np.ndarray]]:
    """(name, array) of the miMATRIX whose content ``p`` reads; array None when not wanted."""
    _, flags = p.element((MI_UINT32,), "array flags")
    if len(flags) < 4:
        raise DataError(f"{p.what}: malformed array flags; the file is corrupt")
    (word,) = struct.unpack(p.order + "I", flags[:4])
    cls = word & 0xFF
    _, dims_raw = p.element((MI_INT32,), "dimensions")
    dims = tuple(int(d) for d in np.frombuffer(dims_raw, p.order + "i4"))
    _, name_raw = p.element((MI_INT8, MI_UINT8), "array name")
    name = name_raw.decode("latin-1")
    if name not in wanted:
        return name, None
    where = f"{p.what}, variable {name!r}"
    if cls not in _MX_DTYPES:
        raise DataError(f"{where} is a {_MX_NAMES.get(cls, f'class-{cls}')} value, expected a numeric array")
    if word & _FLAG_COMPLEX:
        raise DataError(f"{where} is complex, expected a real numeric array")
    if any(d < 0 for d in dims) or len(dims) < 2:
        raise DataError(f"{where}: invalid dimensions {dims}; the file is corrupt")
    count = int(np.prod(dims, dtype=np.int64))
    mi, n, small = p.tag()
    if mi not in _MI_DTYPES:
        raise DataError(f"{where}: its data has type {mi}, not a numeric type; the file is corrupt")
    stored = np.dtype(p.order + _MI_DTYPES[mi])
    if n > p.el.capacity:
        raise DataError(f"{where}: {n} data bytes announced in an element of {p.el.capacity} at most; the "
                        f"file is corrupt")
    if n != count * stored.itemsize:
        raise DataError(f"{where}: {n} data bytes for dimensions {dims} of {stored.name} "
                        f"({count * stored.itemsize} expected); the file is corrupt")
    if small is not None:
        buf = bytearray(small)
    else:
        buf = bytearray(n)  # filled in place: the variable's bytes exist once
        p.el.readinto(memoryview(buf))
    arr = np.frombuffer(buf, dtype=stored).reshape(dims, order="F")
    out = np.dtype(_MX_DTYPES[cls])
    if arr.dtype != out:  # a narrower stored type, or the other byte order
        arr = arr.astype(out, order="F")
    return name, arr


def read_mat5(path: Path, names: Sequence[str]) -> Dict[str, np.ndarray]:
    """The variables ``names`` of the MATLAB v5 file ``path``, each with its MATLAB shape in
    Fortran order and its class's dtype (see the module docstring). DataError for a file this
    reader cannot read (v7.3/HDF5, v4, corrupt, truncated), a requested variable that is not a
    real numeric array, or one that is missing (naming those the file holds)."""
    path = Path(path)
    found: Dict[str, np.ndarray] = {}
    seen: List[str] = []
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"cannot open {path} ({e.strerror or e})") from None
    with f:
        order = _check_header(f.read(HEADER_BYTES), path)
        size = path.stat().st_size
        pos = HEADER_BYTES
        while pos < size and len(found) < len(names):
            f.seek(pos)
            tag = f.read(8)
            if len(tag) < 8:
                break  # trailing padding
            mi, nbytes = struct.unpack(order + "II", tag)
            what = f"{path} (element at byte {pos})"
            if pos + 8 + nbytes > size:
                raise DataError(f"{what} runs past the end of the file ({nbytes} bytes announced); the file "
                                f"is truncated, download it again")
            if mi in (MI_MATRIX, MI_COMPRESSED) and nbytes:  # an empty element is a placeholder
                el = _Element(f, nbytes, mi == MI_COMPRESSED, what)
                if mi == MI_COMPRESSED:  # the inflated stream is itself one tagged miMATRIX element
                    inner, _ = struct.unpack(order + "II", el.read(8))
                    if inner != MI_MATRIX:
                        raise DataError(f"{what}: compressed element holds type {inner}, not a MATLAB "
                                        f"array (miMATRIX); the file is corrupt")
                name, arr = _variable(_Parser(el, order, what), names)
                seen.append(name)
                if arr is not None and name not in found:
                    found[name] = arr
            pos += 8 + nbytes
    missing = [n for n in names if n not in found]
    if missing:
        holds = ", ".join(repr(s) for s in seen) or "no variables"
        raise DataError(f"{path} has no variable {', '.join(repr(m) for m in missing)} (it holds {holds}); "
                        f"expected the official file")
    return found


__all__ = ["read_mat5", "HDF5_SIGNATURE"]
