"""Read and write pickles in the format of the official CIFAR python release.

The official files were written by Python 2's cPickle (protocol 2): dict keys and names are
Python 2 ``str`` (opcode BINSTRING), and the images a numpy uint8 array rebuilt through
``numpy.core.multiarray._reconstruct``. ``dump`` reproduces that encoding, so a file it writes
loads exactly like an official one with ``encoding="latin1"`` (str keys, as torchvision reads
them) or ``encoding="bytes"`` (bytes keys, as the CIFAR web page's snippet reads them), and its
bytes do not depend on the numpy version. ``load`` accepts only the few globals such a file
needs, so a tampered file cannot run code.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1, np.uint8))[0]
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): __import__("codecs").encode,
}


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table is extensible
    dispatch = dict(pickle._Pickler.dispatch)

    def _write_binstring(self, raw: bytes) -> None:
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)

    def save_bytes(self, obj: bytes) -> None:
        self._write_binstring(obj)
        self.memoize(obj)

    def save_str(self, obj: str) -> None:
        if obj.isascii():  # a Python 2 str
            self._write_binstring(obj.encode("ascii"))
        else:
            pickle._Pickler.save_str(self, obj)

    def save_ndarray(self, arr: np.ndarray) -> None:
        if arr.dtype != np.uint8:
            raise TypeError("only uint8 arrays are written in the CIFAR pickle format")
        arr = np.ascontiguousarray(arr)
        w = self.write
        w(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
        w(pickle.MARK + pickle.GLOBAL + b"numpy\nndarray\n")
        self.save((0,))
        self.save(b"b")
        w(pickle.TUPLE + pickle.REDUCE)
        w(pickle.MARK)
        self.save(1)
        self.save(tuple(int(n) for n in arr.shape))
        w(pickle.GLOBAL + b"numpy\ndtype\n")
        self.save(("u1", 0, 1))
        w(pickle.REDUCE)
        self.save((3, "|", None, None, None, -1, -1, 0))
        w(pickle.BUILD)
        self.save(False)
        self.save(arr.tobytes())
        w(pickle.TUPLE + pickle.BUILD)

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str
    dispatch[np.ndarray] = save_ndarray


def dump(obj: Any, f: BinaryIO) -> None:
    """Write ``obj`` (dicts, lists, ints, str, uint8 arrays) as a Python 2 protocol-2 pickle."""
    _Py2Pickler(f, protocol=2).dump(obj)


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"{module}.{name} is not allowed in a CIFAR pickle (only numpy arrays are)"
            ) from None


def load(path: Path) -> dict[str, Any]:
    """Read a CIFAR pickle; keys and names come back as ``str`` (latin-1), as torchvision reads them."""
    with open(path, "rb") as f:
        obj = _SafeUnpickler(f, encoding="latin1").load()
    if not isinstance(obj, dict):
        raise pickle.UnpicklingError(f"{path} does not hold a dict")
    return obj
