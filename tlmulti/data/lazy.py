"""Inputs read from files when the pipeline needs them, not before.

A :class:`FileArray` is what a reader puts in :attr:`Examples.x` for a large dataset: the
manifest (one item per example, usually a file path) stays in memory, and ``load(item)``
decodes one example in the ``tf.data`` pipeline (:mod:`tlmulti.data.pipeline`), in parallel,
so memory does not grow with the number of examples. It behaves like the array it stands for
where the rest of the code needs one: ``len``, ``shape``, ``x[i]`` (one decoded example),
``x[idx]`` (a smaller FileArray) and ``np.asarray(x)`` (everything decoded, for small subsets).
:func:`flipped_views` makes one of the flipped views of images, each made when it is read.

:func:`stream_choice` decides between it and decoding everything up front: ``data.streaming:
auto`` streams when the decoded inputs would take more than :data:`STREAM_BYTES`.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable

import numpy as np

from tlmulti.errors import RecipeError

#: ``data.streaming: auto`` streams from files when the decoded inputs would exceed this.
STREAM_BYTES = 1 << 30


class FileArray:
    """``len(items)`` examples of ``shape`` / ``dtype``, example ``i`` being ``load(items[i])``.

    ``describe`` is a JSON-able description of how ``load`` decodes (size, channels, intensity
    options): with the files' sizes and modification times it forms :meth:`fingerprint`, the
    part of a feature-cache key that stands for these inputs."""

    def __init__(self, items, load: Callable[[Any], np.ndarray], shape, dtype, describe: dict | None = None):
        self.items = _object_vector(items)
        self.load = load
        self.item_shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.describe = dict(describe or {})

    def __len__(self) -> int:
        return len(self.items)

    @property
    def shape(self) -> tuple:
        return (len(self),) + self.item_shape

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, idx):
        if isinstance(idx, (int, np.integer)):
            return self.load(self.items[int(idx)])
        return FileArray(self.items[idx], self.load, self.item_shape, self.dtype, self.describe)

    def __array__(self, dtype=None, copy=None):
        out = np.empty(self.shape, self.dtype)
        for i, item in enumerate(self.items):
            out[i] = self.load(item)
        return out if dtype is None else out.astype(dtype)

    def concatenate(self, other: "FileArray") -> "FileArray":
        return FileArray(list(self.items) + list(other.items), self.load, self.item_shape, self.dtype,
                         self.describe)

    def fingerprint(self) -> str:
        """Hash of the decoding options and of every file's path, size and modification time."""
        h = hashlib.sha256(json.dumps(self.describe, sort_keys=True, default=str).encode())
        h.update(repr((self.item_shape, self.dtype.str)).encode())
        stamps: dict = {}  # many items may come from one file (slices, rows of a manifest)
        for item in self.items:
            path = item[0] if isinstance(item, tuple) else item
            if path not in stamps:
                try:  # a number is an index, not a file (os.stat would read a file descriptor)
                    st = os.stat(path) if isinstance(path, (str, bytes, os.PathLike)) else None
                    stamps[path] = None if st is None else (st.st_size, st.st_mtime_ns)
                except (OSError, TypeError):
                    stamps[path] = None
            h.update(repr((item, stamps[path])).encode())
        return h.hexdigest()


def flipped_views(x, flips) -> FileArray:
    """Every view of images ``x`` (an array or a FileArray of height x width x channels images,
    or of height x width masks) that ``flips`` lists, view-major: item ``v * len(x) + i`` is
    ``x[i]`` flipped as ``flips[v]`` says (``(vertical, horizontal)``, or ``(vertical,
    horizontal, quarter_turns)``: the flips, then that many counter-clockwise quarter turns, as
    ``tf.image.rot90`` turns), made when the pipeline reads it, so no flipped copy of the images
    is held. Its fingerprint covers ``x``'s and the flips."""
    n = len(x)
    flips = [tuple(int(a) if k == 2 else bool(a) for k, a in enumerate(f)) for f in flips]

    def load(item):
        view, i = item
        image = np.asarray(x[i])
        vertical, horizontal, *turns = flips[view]
        image = image[::-1 if vertical else 1, ::-1 if horizontal else 1]
        return np.ascontiguousarray(np.rot90(image, turns[0], axes=(0, 1)) if turns and turns[0] % 4 else image)

    items = [(view, i) for view in range(len(flips)) for i in range(n)]
    shape = tuple(x.shape[1:])
    if any(len(f) > 2 and f[2] % 2 for f in flips) and shape[0] != shape[1]:
        raise ValueError(f"a quarter turn changes the shape of {shape[0]}x{shape[1]} images")
    return FileArray(items, load, shape, x.dtype,
                     {"views": [list(f) for f in flips], "of": fingerprint_array(x)})


def _object_vector(items) -> np.ndarray:
    """A 1-D object array of ``items`` (tuples stay tuples, never become rows of a 2-D array)."""
    if isinstance(items, np.ndarray) and items.dtype == object and items.ndim == 1:
        return items
    items = list(items)
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


def is_lazy(x) -> bool:
    """True for inputs the pipeline must read by index (files, memory-mapped feature arrays)."""
    if isinstance(x, (list, tuple)):
        return any(is_lazy(a) for a in x)
    if isinstance(x, dict):
        return any(is_lazy(a) for a in x.values())
    return isinstance(x, (FileArray, np.memmap))


def stream_choice(setting, n: int, example_bytes: int, source: str = "") -> bool:
    """Whether to stream ``n`` examples of ``example_bytes`` each (``data.streaming``)."""
    if setting is True or setting is False:
        return setting
    if setting != "auto":
        raise RecipeError(f"Key 'data.streaming' must be auto, true or false, got {setting!r}.")
    return n * example_bytes > STREAM_BYTES


def fingerprint_array(x) -> str:
    """Hash of in-memory inputs (array, dict or list of arrays, strings) or of a FileArray."""
    h = hashlib.sha256()

    def add(a):
        if isinstance(a, FileArray):
            h.update(b"files:" + a.fingerprint().encode())
        elif isinstance(a, dict):
            for k in sorted(a):
                h.update(str(k).encode())
                add(a[k])
        elif isinstance(a, (list, tuple)):
            for v in a:
                add(v)
        else:
            a = np.asarray(a)
            if a.dtype.kind in "OU":
                for s in a.reshape(-1):
                    h.update(str(s).encode("utf-8", "surrogatepass") + b"\0")
            else:
                h.update(repr((a.shape, a.dtype.str)).encode())
                h.update(np.ascontiguousarray(a).data)

    add(x)
    return h.hexdigest()
