"""Write numpy arrays as a PyTorch state dict (``.pth``), without PyTorch.

The file is what ``torch.save`` writes for a dict of tensors, in either of its two formats (the
legacy stream or the zip archive; see :mod:`tlmulti.backbones._torch_state_dict`, which reads
both). Used by the tests, and handy to hand a small state dict to PyTorch users.

Example::

    import numpy as np
    from tlmulti.backbones._torch_state_dict_writer import write_state_dict
    write_state_dict("small.pth", {"w": np.ones((2, 3), np.float32)}, format="zip")
"""

from __future__ import annotations

import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np

from tlmulti.backbones._torch_state_dict import MAGIC_NUMBER, PROTOCOL_VERSION

__all__ = ["write_state_dict"]


class _PickleWriter:
    """Emits the protocol-2 pickle ``torch.save`` writes for a dict of tensors."""

    def __init__(self, zip_format: bool):
        self.out = bytearray(pickle.PROTO + b"\x02")
        self.zip = zip_format

    def op(self, code: bytes, payload: bytes = b""):
        self.out += code + payload

    def string(self, s: str):
        raw = s.encode("utf-8")
        self.op(pickle.BINUNICODE, struct.pack("<I", len(raw)) + raw)

    def integer(self, n: int):
        if 0 <= n < 256:
            self.op(pickle.BININT1, bytes([n]))
        elif -(2**31) <= n < 2**31:
            self.op(pickle.BININT, struct.pack("<i", n))
        else:
            raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
            self.op(pickle.LONG1, bytes([len(raw)]) + raw)

    def int_tuple(self, values):
        self.op(pickle.MARK)
        for v in values:
            self.integer(int(v))
        self.op(pickle.TUPLE)

    def global_(self, module: str, name: str):
        self.op(pickle.GLOBAL, f"{module}\n{name}\n".encode("ascii"))

    def ordered_dict(self):
        self.global_("collections", "OrderedDict")
        self.op(pickle.EMPTY_TUPLE)
        self.op(pickle.REDUCE)

    def tensor(self, stype: str, key: str, numel: int, view, offset: int, size, stride):
        self.global_("torch._utils", "_rebuild_tensor_v2")
        self.op(pickle.MARK)
        self.op(pickle.MARK)  # persistent id
        self.string("storage")
        self.global_("torch", stype)
        self.string(key)
        self.string("cpu")
        self.integer(numel)
        if not self.zip:
            if view is None:
                self.op(pickle.NONE)
            else:
                self.op(pickle.MARK)
                self.string(view[0])
                self.integer(view[1])
                self.integer(view[2])
                self.op(pickle.TUPLE)
        self.op(pickle.TUPLE)
        self.op(pickle.BINPERSID)
        self.integer(offset)
        self.int_tuple(size)
        self.int_tuple(stride)
        self.op(pickle.NEWFALSE)
        self.ordered_dict()  # backward hooks
        self.op(pickle.TUPLE)
        self.op(pickle.REDUCE)


_NUMPY_STORAGES = {
    np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage", np.dtype(np.int32): "IntStorage",
    np.dtype(np.int16): "ShortStorage", np.dtype(np.int8): "CharStorage", np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}


def write_state_dict(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], *,
                     format: str = "legacy") -> Path:
    """Write ``tensors`` as a PyTorch state dict that ``torch.load`` and :func:`read_state_dict` read.

    ``format`` is ``"legacy"`` (the pre-1.6 stream) or ``"zip"``. An array that is a strided view
    of a contiguous numpy array (``a[1:, ::2]``) is written the way PyTorch writes a view: the
    whole base array as the storage, with the view's offset and strides; arrays sharing a base
    share one storage, as tensors that are views of one another do in PyTorch.
    """
    if format not in ("legacy", "zip"):
        raise ValueError("format must be 'legacy' or 'zip'")
    zip_format = format == "zip"
    storages: dict[int, tuple[str, np.ndarray, np.ndarray]] = {}  # id(owner) -> (key, flat, owner)
    w = _PickleWriter(zip_format)
    w.ordered_dict()
    w.op(pickle.MARK)
    for name, value in tensors.items():
        arr = np.asarray(value)
        if arr.dtype not in _NUMPY_STORAGES:
            raise ValueError(f"tensor '{name}' has dtype {arr.dtype}, which has no torch storage type")
        owner, flat, offset, stride = _storage_of(arr)
        key, flat, _ = storages.setdefault(id(owner), (str(len(storages)), flat, owner))
        w.string(name)
        w.tensor(_NUMPY_STORAGES[arr.dtype], key, flat.size, None, offset, arr.shape, stride)
    w.op(pickle.SETITEMS)
    w.op(pickle.STOP)
    path = Path(path)
    raw = {key: flat.astype(flat.dtype.newbyteorder("<"), copy=False).tobytes()
           for key, flat, _ in storages.values()}
    if zip_format:
        prefix = "archive/"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
            z.writestr(prefix + "data.pkl", bytes(w.out))
            z.writestr(prefix + "byteorder", "little")
            for key, payload in raw.items():
                z.writestr(f"{prefix}data/{key}", payload)
            z.writestr(prefix + "version", "3\n")
    else:
        with open(path, "wb") as f:
            for header in (MAGIC_NUMBER, PROTOCOL_VERSION,
                           {"protocol_version": PROTOCOL_VERSION, "little_endian": True,
                            "type_sizes": {"short": 2, "int": 4, "long": 4}}):
                pickle.dump(header, f, protocol=2)
            f.write(bytes(w.out))
            pickle.dump(list(raw), f, protocol=2)
            for key, flat, _ in storages.values():
                f.write(struct.pack("<q", flat.size))
                f.write(raw[key])
    return path


def _storage_of(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, tuple[int, ...]]:
    """(owner, 1-D storage, element offset, element strides) describing ``arr`` as a torch tensor.

    A view of a C-contiguous array that owns its memory keeps that array as its storage (the
    owner identifies storages shared by several views); anything else is copied contiguous.
    """
    base = arr.base
    item = arr.dtype.itemsize
    if (isinstance(base, np.ndarray) and base.base is None and base.dtype == arr.dtype
            and base.flags.c_contiguous and arr.size > 0 and all(s >= 0 and s % item == 0 for s in arr.strides)):
        delta = arr.__array_interface__["data"][0] - base.__array_interface__["data"][0]
        if delta >= 0 and delta % item == 0:
            return base, base.reshape(-1), delta // item, tuple(s // item for s in arr.strides)
    flat = np.ascontiguousarray(arr).reshape(-1)
    stride, acc = [], 1
    for n in reversed(arr.shape):
        stride.append(acc)
        acc *= max(n, 1)
    return arr, flat, 0, tuple(reversed(stride))
