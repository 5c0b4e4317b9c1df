"""Files that hold several 2-D images (NIfTI volumes, multi-frame DICOM, multi-page TIFF),
streamed one image at a time from a decoded copy on disk.

A photo can be decoded on its own in the input pipeline; a volume cannot: a ``.nii.gz`` is
decompressed from its start, a multi-frame DICOM's frames are one pixel-data element, and the
intensity transform (percentiles, min / max, MONOCHROME1 inversion) is computed over the whole
volume. To stream them, each such file is decoded once, one file at a time and exactly as it
is read into memory, and its 2-D images are written as ``.npy`` files under
``$TLMULTI_HOME/cache/slices/<key>/``; the pipeline then reads one slice at a time from the
memory-mapped copy (the way nnU-Net preprocesses volumes into memory-mapped arrays). The key
covers the file's path, size and modification time (and its mask's, for segmentation) and
every decoding option, so a later run reuses the copy and a changed file gets a new one.
Entries are written, verified (SHA-256 when a run opens them; a corrupt entry is rebuilt) and
removed like the feature cache's (:mod:`tlmulti.data.cache`): ``tlmulti cache list|clear``.
When the disk has no room for a copy (before writing, or a full disk while writing), the data is
read into memory for the run instead, with a line saying so, and no temporary files are left.

Example::

    from tlmulti.data import stacks
    files = stacks.stored("ct/case1.nii.gz", {"normalize": "window"}, decode=lambda: [images])
    one = stacks.read_slice(files[0], 7)          # slice 7, read from the memory-mapped copy
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from tlmulti.data import cache
from tlmulti.errors import DataError


def root() -> Path:
    return cache.slices_root()


def key_of(path, options: dict, others=()) -> str:
    """Entry name for ``path`` (and ``others``, e.g. its mask) decoded with ``options``."""

    def stamp(p):
        st = os.stat(p)
        return [str(Path(p).resolve()), st.st_size, st.st_mtime_ns]

    return cache.make_key({"kind": "slices", "files": [stamp(p) for p in (path, *others) if p is not None],
                           "options": options})


def stored(path, options: dict, decode: Callable[[], list[np.ndarray]], others=()) -> list[str] | None:
    """Paths of the ``.npy`` files holding the arrays ``decode()`` returns for ``path`` (first
    axis: one entry per 2-D image), from the cache when there, else decoded now and written.
    None when the disk has no room for them (the caller keeps ``decode()``'s arrays in memory)."""
    key = key_of(path, options, others)
    base = root()
    found = cache.load(key, base)
    if found is None:
        arrays = decode()
        if not cache.fits(sum(a.nbytes for a in arrays), base):
            print(f"No room on the disk of '{base}' for the decoded slices of '{path}'; the data is read "
                  "into memory for this run instead.", file=sys.stderr, flush=True)
            return None
        writer = cache.Writer(key, len(arrays[0]), dtype=None, base=base)
        try:
            writer.add(arrays)
            found = writer.finish({"file": str(path), "options": options})
        except BaseException:
            writer.abort()
            raise
        if writer.in_memory:  # the disk filled up while writing: the writer said so
            return None
    return [str(base / key / f"{i}.npy") for i in range(len(found))]


def read_slice(npy: str, index: int) -> np.ndarray:
    """Slice ``index`` of a stored ``.npy`` (read from the memory-mapped file, copied)."""
    try:
        return np.array(np.load(npy, mmap_mode="r", allow_pickle=False)[index])
    except FileNotFoundError:
        raise DataError(f"The decoded slices '{npy}' were removed while the run used them (tlmulti cache "
                        "clear?); run again.") from None
