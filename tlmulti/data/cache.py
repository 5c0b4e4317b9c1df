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
published by renaming a finished folder, and checked against its hashes when read: an entry whose
files are missing or do not match their hashes is reported, deleted and computed again. Reading
an entry records ``last_used`` in its ``meta.json``, written atomically (a temporary file
renamed over it). A ``meta.json`` that cannot be parsed is read once more after a short wait;
if it still cannot, the entry is computed again for this run and is not deleted (another run may
be using its files): the new entry, once written, takes its place and the old folder is moved
aside (removed by ``tlmulti cache clear`` once this process has ended).

An entry being written is the folder ``.<key>.partial-<pid>-<ns>/``. ``tlmulti cache list``
shows these, marked partial, with their size and whether the writing process still runs; those
whose process has ended (a killed run) are removed by ``tlmulti cache clear`` and when a new
computation of the same key starts.

Features are stored as float16 (half the disk and page cache; rounding error at most 2**-11 of
each value, below the noise of training a head) unless a value would overflow it, in which case
the entry is float32; ``cache.dtype: float32`` keeps full precision always. Integer and boolean
outputs (the padding mask a text's cut holds beside its hidden states) keep their own dtype,
exactly.

Policy when an entry does not fit: if the disk holding the cache has less free space than the
entry needs plus 1 GiB, features are kept in memory for this run only (as with ``cache.disk:
false``), and a line says so. Each file is allocated in full before it is written
(``posix_fallocate``, so a full disk is an ENOSPC error, never a crash while writing to the
memory map); when the disk fills up anyway (another process wrote to it, a quota), the writer
removes its temporary folder and keeps the arrays in memory for this run, with a line naming the
disk and the space needed.
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
from tlmulti.paths import is_disk_full, mount_point, size_text

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


class UnreadableMeta(CorruptEntry):
    pass


def load(key: str, base: Path | None = None) -> list[np.ndarray] | None:
    """The arrays of entry ``key`` (memory-mapped, read-only), or None when there is none.

    An entry whose files are missing or do not match meta.json is deleted, with a line saying so,
    and None returned, so the caller computes it again. One whose meta.json stays unreadable is
    left where it is (None, with a line)."""
    entry = (base or root()) / key
    if not entry.is_dir():
        return None
    for attempt in range(2):
        try:
            arrays = _verified(entry)
            break
        except UnreadableMeta as exc:
            if attempt == 0:
                time.sleep(0.2)  # another process may be replacing it
                continue
            print(f"Cache entry '{entry}' is not usable ({exc}); computing it again (it is not deleted now: "
                  "another run may be using it; the new entry replaces it).", file=sys.stderr, flush=True)
            return None
        except CorruptEntry as exc:
            print(f"Cache entry '{entry}' is corrupt ({exc}); deleting it and computing it again.",
                  file=sys.stderr, flush=True)
            shutil.rmtree(entry, ignore_errors=True)
            return None
    _touch(entry)
    return arrays


def _touch(entry: Path) -> None:
    """Record ``last_used`` in meta.json, atomically (a reader sees the old or the new file)."""
    import threading

    meta_path = entry / "meta.json"
    tmp = entry / f".meta.json.{os.getpid()}-{threading.get_ident()}.tmp"
    try:
        meta = json.loads(meta_path.read_text())
        meta["last_used"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, meta_path)
    except (OSError, ValueError):
        pass  # a read-only (or full) cache is still a cache
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def _verified(entry: Path) -> list[np.ndarray]:
    try:
        meta = json.loads((entry / "meta.json").read_text())
        outputs = meta["outputs"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UnreadableMeta(f"meta.json unreadable: {type(exc).__name__}") from None
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
    ``finish(description)``; ``abort()`` (or an exception) leaves nothing behind. ``dtype`` is
    that of floating-point outputs (None keeps each output's own); integer and boolean outputs
    (a padding mask) keep theirs. When the disk has no room, the arrays are kept in memory
    instead (``in_memory`` True; ``finish`` returns them and publishes nothing)."""

    def __init__(self, key: str, n: int, dtype: str | None = "float16", base: Path | None = None):
        self.base = base or root()
        self.key, self.n, self.want = key, int(n), dtype
        self.arrays: list[np.ndarray] = []
        self.done = 0
        self.in_memory = False
        self.tmp = self.base / f".{key}.partial-{os.getpid()}-{time.time_ns()}"
        sweep_partials(self.base, key)  # a killed computation of this key left its folder
        try:
            self.base.mkdir(parents=True, exist_ok=True)
            self.tmp.mkdir()
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            self._to_memory(None)

    def _file(self, name: str, dtype, shape) -> np.ndarray:
        """A new memory-mapped ``.npy`` in the entry, its blocks allocated on the disk first."""
        need = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if paths.free_bytes(self.tmp) < need + (1 << 20):
            raise OSError(28, "No space left on device", str(self.tmp / name))
        a = np.lib.format.open_memmap(self.tmp / name, mode="w+", dtype=dtype, shape=shape)
        with open(self.tmp / name, "r+b") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
            except OSError as exc:
                if is_disk_full(exc):
                    raise
            except AttributeError:  # no posix_fallocate on this platform: the free-space check stands
                pass
        return a

    def add(self, outputs) -> None:
        outputs = [np.asarray(o) for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]
        try:
            if not self.arrays:
                shapes = [((self.n,) + o.shape[1:], o.dtype if o.dtype.kind in "biu" else self.want or o.dtype)
                          for o in outputs]
                if self.in_memory:
                    self.arrays = [np.empty(shape, dtype) for shape, dtype in shapes]
                else:
                    self.need = sum(int(np.prod(s)) * np.dtype(d).itemsize for s, d in shapes)
                    self.arrays = [self._file(f"{i}.npy", dtype, shape) for i, (shape, dtype) in enumerate(shapes)]
            for i, o in enumerate(outputs):
                if self.arrays[i].dtype == np.float16 and o.size and float(np.nanmax(np.abs(o))) > _FLOAT16_MAX:
                    self._widen(i)
                self.arrays[i][self.done:self.done + len(o)] = o
        except OSError as exc:
            if self.in_memory or not is_disk_full(exc):
                raise
            self._to_memory(exc)
            return self.add(outputs)
        self.done += len(outputs[0])

    def _widen(self, i: int) -> None:
        """A value would overflow float16: this output becomes float32 (what was written is kept)."""
        old = self.arrays[i]
        if self.in_memory:
            self.arrays[i] = old.astype("float32")
            return
        wide = self._file(f"{i}.f32.npy", "float32", old.shape)
        wide[:self.done] = old[:self.done]
        del old
        os.replace(self.tmp / f"{i}.f32.npy", self.tmp / f"{i}.npy")
        self.arrays[i] = wide

    def _to_memory(self, exc) -> None:
        """The disk is full: keep what was written in memory, remove the temporary folder."""
        self.arrays = [np.array(a) for a in self.arrays]
        self.in_memory = True
        shutil.rmtree(self.tmp, ignore_errors=True)
        need = getattr(self, "need", 0)
        try:
            where = f"the disk mounted at '{mount_point(self.base)}', {size_text(paths.free_bytes(self.base))} free"
        except OSError:
            where = "its disk"
        print(f"No space left on device for the cache entry '{self.base / self.key}' ("
              f"{f'needs about {size_text(need)}, ' if need else ''}{where}): keeping this run's arrays in memory "
              "instead; free some space to cache them next time.", file=sys.stderr, flush=True)

    def finish(self, description: dict) -> list[np.ndarray]:
        if not self.in_memory:
            try:
                return self._publish(description)
            except OSError as exc:
                if not is_disk_full(exc):
                    self.abort()
                    raise
                self._to_memory(exc)
        arrays, self.arrays = self.arrays, []
        return arrays

    def _publish(self, description: dict) -> list[np.ndarray]:
        outputs = []
        for i, a in enumerate(self.arrays):
            a.flush()
            outputs.append({"file": f"{i}.npy", "shape": list(a.shape), "dtype": a.dtype.str})
        for out in outputs:
            out["sha256"] = _sha256(self.tmp / out["file"])
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        meta = {"format": FORMAT, "key": self.key, "created": stamp, "last_used": stamp, "examples": self.n,
                "outputs": outputs, "bytes": sum((self.tmp / o["file"]).stat().st_size for o in outputs),
                "description": description}
        (self.tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        self.arrays.clear()
        final = self.base / self.key
        for _ in range(2):
            try:
                os.rename(self.tmp, final)
                break
            except OSError:
                found = load(self.key, self.base)  # another run published it first: its files are the same
                if found is not None:
                    shutil.rmtree(self.tmp, ignore_errors=True)
                    return found
                try:  # the entry there is unusable: moved aside (swept once this process ends), ours replaces it
                    os.rename(final, self.base / f".{self.key}.partial-{os.getpid()}-{time.time_ns()}")
                except OSError:
                    pass
        found = load(self.key, self.base)
        return found if found is not None else _verified(self.tmp if self.tmp.exists() else final)

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


def _tree_bytes(folder: Path) -> int:
    total = 0
    for p in folder.rglob("*"):
        try:
            total += p.stat().st_size if p.is_file() else 0
        except OSError:
            pass
    return total


def partials(base: Path | None = None, key: str | None = None) -> list[dict]:
    """Unfinished entries (``.<key>.partial-<pid>-<ns>`` folders) of ``base`` (default: every
    cache): ``key``, ``dir``, ``bytes``, ``pid`` and ``alive`` (whether that process still runs)."""
    found = []
    for folder in [base] if base else roots():
        pattern = f".{key}.partial-*" if key else ".*.partial-*"
        for p in sorted(folder.glob(pattern)) if folder.is_dir() else []:
            if not p.is_dir():
                continue
            name, _, rest = p.name[1:].partition(".partial-")
            found.append({"key": name, "dir": str(p), "bytes": _tree_bytes(p), "pid": rest.split("-")[0],
                          "alive": _writer_alive(p.name), "partial": True})
    return found


def sweep_partials(base: Path | None = None, key: str | None = None) -> tuple[int, int]:
    """Remove the unfinished entries whose process has ended; returns (folders removed, bytes freed)."""
    n = freed = 0
    for part in partials(base, key):
        if not part["alive"]:  # a run writing it now keeps it
            shutil.rmtree(part["dir"], ignore_errors=True)
            n, freed = n + 1, freed + part["bytes"]
    return n, freed


def clear(keys=None, base: Path | None = None) -> tuple[int, int]:
    """Delete the given entries of ``base`` (default: every cache; all entries when ``keys`` is
    empty) and the unfinished ones of those keys whose process has ended; returns (entries
    deleted, bytes freed). An unknown key is an error naming the known ones."""
    from tlmulti.errors import TlmultiError

    folders = [base] if base else roots()
    known = {m["key"]: m for m in entries(base)}
    unfinished = {p["key"] for p in partials(base)}
    if keys:
        missing = [k for k in keys if k not in known and k not in unfinished]
        if missing:
            raise TlmultiError(f"No cache entry {', '.join(missing)} in {' or '.join(repr(str(f)) for f in folders)}; "
                               "'tlmulti cache list' shows the entries.")
        chosen = [known[k] for k in keys if k in known]
    else:
        chosen = list(known.values())
    freed = 0
    for meta in chosen:
        freed += int(meta.get("bytes", 0))
        shutil.rmtree(meta["dir"], ignore_errors=True)
    for key in keys or [None]:
        freed += sweep_partials(base, key)[1]
    return len(chosen), freed
