"""Backbone features on disk under ``$TLMULTI_HOME/cache/features``, reused by later runs.

A frozen phase trains the head on what the frozen backbone outputs for each example. Those
outputs depend only on the feature model (architecture, weights, preprocessing, input size,
precision) and on the inputs (the exact files with their sizes and modification times, or the
bytes of in-memory inputs), so they are stored under a key hashed from all of these: a second
run with another head, learning rate or number of epochs reads them instead of running the
backbone again, and any change to what they depend on gives a new key, so a stale entry is
never read.

An entry is a folder ``<key>/`` with one ``.npy`` file per backbone output (a segmentation
backbone has several scales) and ``meta.json`` recording shapes, dtypes, sha256 of every file
and what the key was made of. Files are written batch by batch into memory-mapped arrays (the
features of a large dataset never sit in memory) and read back memory-mapped; an entry is
published by renaming a finished folder, and checked against its hashes when read: a corrupt or
half-written entry is reported, deleted and computed again.

Features are stored as float16 (half the disk and page cache; rounding error at most 2**-11 of
each value, below the noise of training a head) unless a value would overflow it, in which case
the entry is float32; ``cache.dtype: float32`` keeps full precision always.

Policy when an entry does not fit: if the disk holding the cache has less free space than the
entry needs plus 1 GiB, features are kept in memory for this run only (as with ``cache.disk:
false``), and a line says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from tlmulti import paths

FORMAT = 1
MARGIN_BYTES = 1 << 30
_FLOAT16_MAX = 65000.0


def root() -> Path:
    return paths.home() / "cache" / "features"


def slices_root() -> Path:
    """Where :mod:`tlmulti.data.stacks` keeps decoded volume slices, in entries like the features'."""
    return paths.home() / "cache" / "slices"


def roots() -> list[Path]:
    """Every cache ``tlmulti cache`` manages: backbone features, then decoded volume slices
    (:mod:`tlmulti.data.stacks`)."""
    return [root(), slices_root()]


def make_key(parts: dict) -> str:
    """The entry name for a JSON-able description of everything the features depend on."""
    blob = json.dumps({"format": FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class CorruptEntry(Exception):
    pass


def load(key: str, base: Path | None = None) -> list[np.ndarray] | None:
    """The arrays of entry ``key`` (memory-mapped, read-only), or None when there is none.

    A corrupt entry (missing or unreadable file, wrong size or hash) is deleted, with a line
    saying so, and None returned, so the caller computes it again."""
    entry = (base or root()) / key
    if not entry.is_dir():
        return None
    try:
        arrays = _verified(entry)
    except CorruptEntry as exc:
        print(f"Cache entry '{entry}' is corrupt ({exc}); deleting it and computing it again.",
              file=sys.stderr, flush=True)
        shutil.rmtree(entry, ignore_errors=True)
        return None
    try:
        meta_path = entry / "meta.json"
        meta = json.loads(meta_path.read_text())
        meta["last_used"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        meta_path.write_text(json.dumps(meta, indent=1))
    except OSError:
        pass  # a read-only cache is still a cache
    return arrays


def _verified(entry: Path) -> list[np.ndarray]:
    try:
        meta = json.loads((entry / "meta.json").read_text())
        outputs = meta["outputs"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptEntry(f"meta.json unreadable: {type(exc).__name__}") from None
    arrays = []
    for out in outputs:
        path = entry / out["file"]
        if not path.is_file():
            raise CorruptEntry(f"{out['file']} is missing")
        if _sha256(path) != out["sha256"]:
            raise CorruptEntry(f"{out['file']} does not match its sha256")
        try:
            a = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CorruptEntry(f"{out['file']}: {exc}") from None
        if list(a.shape) != list(out["shape"]) or a.dtype.str != out["dtype"]:
            raise CorruptEntry(f"{out['file']} has shape {a.shape} {a.dtype}, meta.json says {out['shape']} {out['dtype']}")
        arrays.append(a)
    return arrays


def fits(nbytes: int, base: Path | None = None) -> bool:
    """Whether an entry of ``nbytes`` fits on the cache's disk with 1 GiB to spare."""
    base = base or root()
    probe = base
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free >= nbytes + MARGIN_BYTES


class Writer:
    """Writes one entry batch by batch: ``add(outputs)`` for each batch in order, then
    ``finish(description)``; ``abort()`` (or an exception) leaves nothing behind. ``dtype``
    None keeps each output's own dtype."""

    def __init__(self, key: str, n: int, dtype: str | None = "float16", base: Path | None = None):
        self.base = base or root()
        self.key, self.n, self.want = key, int(n), dtype
        self.base.mkdir(parents=True, exist_ok=True)
        self.tmp = self.base / f".{key}.partial-{os.getpid()}-{time.time_ns()}"
        self.tmp.mkdir()
        self.arrays: list[np.ndarray] = []
        self.done = 0

    def add(self, outputs) -> None:
        outputs = [np.asarray(o) for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]
        if not self.arrays:
            for i, o in enumerate(outputs):
                self.arrays.append(np.lib.format.open_memmap(
                    self.tmp / f"{i}.npy", mode="w+", dtype=self.want or o.dtype, shape=(self.n,) + o.shape[1:]))
        for i, o in enumerate(outputs):
            if self.arrays[i].dtype == np.float16 and o.size and float(np.nanmax(np.abs(o))) > _FLOAT16_MAX:
                self._widen(i)
            self.arrays[i][self.done:self.done + len(o)] = o
        self.done += len(outputs[0])

    def _widen(self, i: int) -> None:
        """A value would overflow float16: this output becomes float32 (what was written is kept)."""
        old = self.arrays[i]
        wide = np.lib.format.open_memmap(self.tmp / f"{i}.f32.npy", mode="w+", dtype="float32", shape=old.shape)
        wide[:self.done] = old[:self.done]
        del old
        os.replace(self.tmp / f"{i}.f32.npy", self.tmp / f"{i}.npy")
        self.arrays[i] = wide

    def finish(self, description: dict) -> list[np.ndarray]:
        outputs = []
        for i, a in enumerate(self.arrays):
            a.flush()
            outputs.append({"file": f"{i}.npy", "shape": list(a.shape), "dtype": a.dtype.str})
        self.arrays.clear()
        for out in outputs:
            out["sha256"] = _sha256(self.tmp / out["file"])
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        meta = {"format": FORMAT, "key": self.key, "created": stamp, "last_used": stamp, "examples": self.n,
                "outputs": outputs, "bytes": sum((self.tmp / o["file"]).stat().st_size for o in outputs),
                "description": description}
        (self.tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        final = self.base / self.key
        try:
            os.rename(self.tmp, final)
        except OSError:  # another run published the same entry first: its files are the same
            shutil.rmtree(self.tmp, ignore_errors=True)
        return load(self.key, self.base)

    def abort(self) -> None:
        self.arrays.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


def entries(base: Path | None = None) -> list[dict]:
    """Every entry's meta.json (with ``dir``) of ``base`` (default: every one of :func:`roots`),
    newest use first; corrupt ones marked so."""
    found = []
    for folder in [base] if base else roots():
        for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            try:
                meta = json.loads((entry / "meta.json").read_text())
            except (OSError, ValueError):
                meta = {"key": entry.name, "corrupt": True,
                        "bytes": sum(p.stat().st_size for p in entry.iterdir() if p.is_file())}
            meta["dir"] = str(entry)
            found.append(meta)
    return sorted(found, key=lambda m: str(m.get("last_used", "")), reverse=True)


def _writer_alive(name: str) -> bool:
    try:
        pid = int(name.split(".partial-")[1].split("-")[0])
        os.kill(pid, 0)
    except (IndexError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def clear(keys=None, base: Path | None = None) -> tuple[int, int]:
    """Delete the given entries of ``base`` (default: every cache; all entries, and unfinished
    ones, when ``keys`` is empty); returns
    (entries deleted, bytes freed). An unknown key is an error naming the known ones."""
    from tlmulti.errors import TlmultiError

    folders = [base] if base else roots()
    known = {m["key"]: m for m in entries(base)}
    if keys:
        missing = [k for k in keys if k not in known]
        if missing:
            raise TlmultiError(f"No cache entry {', '.join(missing)} in {' or '.join(repr(str(f)) for f in folders)}; "
                               "'tlmulti cache list' shows the entries.")
        chosen = [known[k] for k in keys]
    else:
        chosen = list(known.values())
    freed = 0
    for meta in chosen:
        freed += int(meta.get("bytes", 0))
        shutil.rmtree(meta["dir"], ignore_errors=True)
    for folder in folders if not keys else []:
        for partial in folder.glob(".*.partial-*") if folder.is_dir() else []:
            if not _writer_alive(partial.name):  # a run writing it now keeps it
                shutil.rmtree(partial, ignore_errors=True)
    return len(chosen), freed
