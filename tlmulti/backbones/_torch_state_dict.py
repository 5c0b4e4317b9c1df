"""Read a PyTorch state dict (``.pth`` / ``.pt`` / ``.bin``) into numpy arrays, without PyTorch.

Several pretrained checkpoints are only published as PyTorch state dicts. ``torch.load`` would
need PyTorch (a large dependency this project does not have) and, in its default mode, unpickles
whatever the file asks for: a pickle can import and call any Python function, so a hostile
weights file could run code on the machine just by being opened. This module reads the two
formats ``torch.save`` writes and nothing more:

* the legacy format (``torch.save(..., _use_new_zipfile_serialization=False)`` and everything
  written before PyTorch 1.6): a magic-number pickle, a protocol-version pickle, a system-info
  pickle, the object pickle (tensors refer to their storages by persistent ids), a pickle of the
  list of storage keys, then each storage's raw bytes, each preceded by its element count as a
  little-endian int64;
* the zip format (PyTorch >= 1.6): ``<archive>/data.pkl`` is the object pickle, and the storage
  with key ``k`` is the raw record ``<archive>/data/k``; ``<archive>/byteorder`` says whether the
  bytes are little- or big-endian (little when absent).

The object pickle is read by an unpickler whose ``find_class`` allows only what a state dict of
tensors needs: ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` (and the older
``_rebuild_tensor``, ``_rebuild_parameter``, ``_rebuild_parameter_with_state``) and the
``torch.*Storage`` types. None of these are imported; each is replaced by a local stand-in that
builds numpy arrays. Any other global (``os.system``, ``builtins.eval``,
``torch.storage._load_from_bytes``, a model class, ...) is refused before it is imported, with
:class:`tlmulti.errors.MissingWeightsError` naming the file and the global.

Tensors come back as C-contiguous numpy arrays in native byte order, respecting the storage
offset, size and stride of each tensor (views of a shared storage are copied out separately).
``bfloat16`` tensors, which numpy has no type for, are widened to ``float32`` exactly.

Example::

    from tlmulti.backbones._torch_state_dict import read_state_dict
    weights = read_state_dict("efficientnet-lite0-57934424.pth")
    print(weights["_conv_stem.weight"].shape)  # (32, 3, 3, 3)

:func:`tlmulti.backbones._torch_state_dict_writer.write_state_dict` writes numpy arrays in either
format (used by the tests, and handy to hand a small state dict to PyTorch users).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from tlmulti.backbones._store import verify_file
from tlmulti.errors import MissingWeightsError

__all__ = ["read_state_dict"]

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# torch storage class name -> numpy dtype of its elements as stored (little-endian).
_STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "BFloat16Storage": "<u2",  # raw bits; widened to float32 after reading
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "<i1",
    "ByteStorage": "<u1",
    "BoolStorage": "?",
    "UntypedStorage": "<u1",
}
_REBUILDERS = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state")


class _NoState:
    """Refuse pickle BUILD on the stand-ins, so a file cannot rewrite them after validation."""

    __slots__ = ()

    def __setstate__(self, state):
        raise pickle.UnpicklingError("a weights file tried to set the state of a tensor or storage")


class _StorageType(_NoState):
    __slots__ = ("name", "dtype")

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage(_NoState):
    """One storage: ``numel`` elements of ``dtype``; a view is a slice of a root storage."""

    __slots__ = ("key", "dtype", "numel", "root", "offset", "data", "bfloat16")

    def __init__(self, key: str, stype: _StorageType, numel: int, root: "_Storage | None" = None,
                 offset: int = 0):
        self.key = key
        self.dtype = stype.dtype
        self.bfloat16 = stype.name == "BFloat16Storage"
        self.numel = numel
        self.root = root
        self.offset = offset
        self.data: np.ndarray | None = None  # 1-D array of the root's elements, once read

    def elements(self) -> np.ndarray:
        if self.root is not None:
            whole = self.root.elements()
            return whole[self.offset:self.offset + self.numel]
        if self.data is None:
            raise pickle.UnpicklingError(f"storage '{self.key}' is used by a tensor but its data is missing")
        return self.data


class _Tensor(_NoState):
    """A tensor waiting for its storage's bytes (the legacy format stores them after the pickle)."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        if not isinstance(storage, _Storage):
            raise pickle.UnpicklingError("a tensor was rebuilt from something that is not a storage")
        size = tuple(size)
        stride = tuple(stride)
        if not _is_int(offset) or len(size) != len(stride) or not all(map(_is_int, size + stride)):
            raise pickle.UnpicklingError("a tensor has a malformed offset, size or stride")
        self.storage, self.offset, self.size, self.stride = storage, int(offset), size, stride

    def to_numpy(self) -> np.ndarray:
        elements = self.storage.elements()
        if self.offset < 0 or any(s < 0 for s in self.size) or any(s < 0 for s in self.stride):
            raise pickle.UnpicklingError("a tensor has a negative offset, size or stride")
        if 0 in self.size:
            out = np.empty(self.size, dtype=elements.dtype)
        else:
            last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
            if last >= len(elements):
                raise pickle.UnpicklingError(
                    f"a tensor of size {self.size}, stride {self.stride} at offset {self.offset} reads past "
                    f"the end of its storage of {len(elements)} elements"
                )
            base = elements[self.offset:]
            step = base.dtype.itemsize
            out = np.lib.stride_tricks.as_strided(
                base, shape=self.size, strides=tuple(s * step for s in self.stride), writeable=False
            )
        out = np.array(out, dtype=out.dtype.newbyteorder("="), order="C", copy=True)
        if self.storage.bfloat16:
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_ignored):
    if not isinstance(data, _Tensor):
        raise pickle.UnpicklingError("a parameter was rebuilt from something that is not a tensor")
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}
_ALLOWED.update({("torch", name): _StorageType(name) for name in _STORAGE_DTYPES})


def _refusal(path: Path, what: str) -> MissingWeightsError:
    return MissingWeightsError(
        f"Refusing to load '{path}': it asks to import {what}, which a weights file never needs; "
        "only plain PyTorch state dicts (tensors in a dict) are read, and nothing in them is executed. "
        "If the file is trusted, re-save it where PyTorch is installed with "
        "torch.save(model.state_dict(), path) or convert it to safetensors."
    )


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals of a tensor state dict; storages come from ``storages``."""

    def __init__(self, file, path: Path, storages: dict[str, _Storage] | None, zip_format: bool):
        super().__init__(file, encoding="utf-8")
        self._path = path
        self._storages = storages
        self._zip = zip_format

    def find_class(self, module, name):
        found = _ALLOWED.get((module, name)) if self._storages is not None else None
        if found is None:
            raise _refusal(self._path, f"{module}.{name}")
        return found

    def persistent_load(self, pid):
        if self._storages is None or not isinstance(pid, tuple) or not pid:
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        typename = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if typename == "module":
            raise _refusal(self._path, "a pickled torch.nn.Module (a whole model, not a state dict)")
        if typename != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id type {typename!r}")
        if self._zip and len(pid) == 5:
            _, stype, key, _location, numel = pid
            view = None
        elif not self._zip and len(pid) == 6:
            _, stype, key, _location, numel, view = pid
        else:
            raise pickle.UnpicklingError(f"malformed storage id {pid!r}")
        key = key.decode("ascii") if isinstance(key, bytes) else key
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or not _is_int(numel) or numel < 0:
            raise pickle.UnpicklingError(f"malformed storage id {pid!r}")
        root = self._storages.get(key)
        if root is None:
            root = self._storages[key] = _Storage(key, stype, numel)
        elif root.dtype != stype.dtype or root.numel != numel:
            raise pickle.UnpicklingError(f"storage '{key}' is declared twice with different types or sizes")
        if view is None:
            return root
        if not (isinstance(view, tuple) and len(view) == 3):
            raise pickle.UnpicklingError(f"malformed storage view {view!r}")
        view_key, offset, view_numel = view
        if not (isinstance(view_key, (str, bytes)) and _is_int(offset) and _is_int(view_numel)):
            raise pickle.UnpicklingError(f"malformed storage view {view!r}")
        if offset < 0 or view_numel < 0 or offset + view_numel > numel:
            raise pickle.UnpicklingError(f"storage view {view!r} lies outside storage '{key}'")
        vkey = "view:" + (view_key.decode("ascii") if isinstance(view_key, bytes) else view_key)
        found = self._storages.get(vkey)
        if found is None:
            found = self._storages[vkey] = _Storage(vkey, stype, view_numel, root=root, offset=offset)
        return found



def read_state_dict(path: str | os.PathLike, sha256: str | None = None) -> dict[str, np.ndarray]:
    """The tensors of the PyTorch state dict in ``path``, by key, as numpy arrays.

    ``sha256`` (hex), when given, is checked before anything in the file is unpickled. A state
    dict saved inside a checkpoint dict (``{"state_dict": {...}, ...}``) is unwrapped when the rest
    of the checkpoint holds only plain values. Raises :class:`MissingWeightsError` for a missing,
    corrupt, unsafe or non-state-dict file.
    """
    path = verify_file(path, sha256, "Weights file")
    try:
        if zipfile.is_zipfile(path):
            result = _read_zip(path)
        else:
            result = _read_legacy(path)
    except MissingWeightsError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError, TypeError,
            AttributeError, struct.error, zipfile.BadZipFile) as e:
        raise MissingWeightsError(
            f"Weights file '{path}' is not a readable PyTorch state dict ({e}); it may be truncated or "
            "corrupt. Reinstall or download it again."
        ) from None
    return _as_state_dict(path, result)


def _read_legacy(path: Path):
    data = path.read_bytes()
    f = io.BytesIO(data)
    header = _RestrictedUnpickler(f, path, None, False)
    try:
        magic = header.load()
    except (pickle.UnpicklingError, EOFError, ValueError, IndexError, TypeError, struct.error):
        magic = None
    if magic != MAGIC_NUMBER:
        if _is_tar(path):
            raise MissingWeightsError(
                f"Weights file '{path}' uses PyTorch's pre-1.0 tar format, which is not read here; "
                "re-save it with a current PyTorch."
            )
        raise MissingWeightsError(
            f"Weights file '{path}' is not a PyTorch checkpoint (no torch.save magic number); "
            "check that the path points at a .pth/.pt state dict."
        )
    version = header.load()
    if version != PROTOCOL_VERSION:
        raise MissingWeightsError(f"Weights file '{path}' has unknown PyTorch protocol version {version!r}.")
    header.load()  # system info: byte order and type sizes of the saving machine; data is little-endian
    storages: dict[str, _Storage] = {}
    result = _RestrictedUnpickler(f, path, storages, False).load()
    keys = _RestrictedUnpickler(f, path, None, False).load()
    if not isinstance(keys, list):
        raise pickle.UnpicklingError("the storage key list is missing")
    pos = f.tell()
    for key in keys:
        key = key.decode("ascii") if isinstance(key, bytes) else key
        storage = storages.get(key)
        if storage is None or storage.root is not None:
            raise pickle.UnpicklingError(f"storage key '{key}' is not used by any tensor")
        (numel,) = struct.unpack_from("<q", data, pos)
        pos += 8
        if numel != storage.numel:
            raise pickle.UnpicklingError(f"storage '{key}' holds {numel} elements, {storage.numel} were declared")
        nbytes = numel * storage.dtype.itemsize
        if pos + nbytes > len(data):
            raise EOFError(f"storage '{key}' ends past the end of the file")
        storage.data = np.frombuffer(data, dtype=storage.dtype, count=numel, offset=pos)
        pos += nbytes
    return _materialise(result)


def _read_zip(path: Path):
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkls = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if not pkls:
            what = "a TorchScript archive" if any(n.endswith("/constants.pkl") for n in names) else "a zip file"
            raise MissingWeightsError(
                f"Weights file '{path}' is {what} without data.pkl, not a torch.save state dict; "
                "save the model's state_dict() instead."
            )
        prefix = pkls[0][: -len("data.pkl")]
        order = "<"
        if prefix + "byteorder" in names:
            mark = z.read(prefix + "byteorder").strip()
            if mark not in (b"little", b"big"):
                raise pickle.UnpicklingError(f"unknown byte order {mark!r}")
            order = "<" if mark == b"little" else ">"
        storages: dict[str, _Storage] = {}
        result = _RestrictedUnpickler(io.BytesIO(z.read(pkls[0])), path, storages, True).load()
        for key, storage in storages.items():
            record = f"{prefix}data/{key}"
            raw = z.read(record)
            dtype = storage.dtype.newbyteorder(order) if storage.dtype.itemsize > 1 else storage.dtype
            nbytes = storage.numel * dtype.itemsize
            if len(raw) < nbytes:
                raise EOFError(f"record '{record}' holds {len(raw)} bytes, {nbytes} were declared")
            storage.data = np.frombuffer(raw, dtype=dtype, count=storage.numel)
    return _materialise(result)


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _materialise(obj):
    if isinstance(obj, _Tensor):
        return obj.to_numpy()
    if isinstance(obj, dict):
        return {k: _materialise(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v) for v in obj)
    return obj


def _as_state_dict(path: Path, result) -> dict[str, np.ndarray]:
    def tensors_only(d) -> bool:
        return isinstance(d, dict) and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in d.items())

    if tensors_only(result):
        return dict(result)
    if isinstance(result, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if tensors_only(result.get(key)):
                return dict(result[key])
    raise MissingWeightsError(
        f"Weights file '{path}' holds a {type(result).__name__}, not a state dict of tensors by name; "
        "save model.state_dict() instead."
    )
