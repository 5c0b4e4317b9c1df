"""Where tlmulti keeps what it builds: imported weights, saved backbones, prepared datasets.

Everything lives under one folder, ``$TLMULTI_HOME`` if set, else ``$XDG_CACHE_HOME/tlmulti``
(``~/.cache/tlmulti``). Nothing is ever written inside the repository. The free-space helpers
at the end are shared by everything that writes (run folders, exports, caches, converted weights).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


def home() -> Path:
    env = os.environ.get("TLMULTI_HOME")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "tlmulti"


def weights_store() -> Path:
    """Imported weight files and preset directories, one sub-folder per backbone name."""
    return home() / "weights"


def backbone_store() -> Path:
    """Backbones saved by ``tlmulti.save_backbone`` (``NAME/backbone.keras`` + ``backbone.json``)."""
    return home() / "backbones"


def dataset_root() -> Path:
    """Datasets prepared from installed packages (``dataset:NAME/SPLIT`` in recipes)."""
    return home() / "datasets"


def offline() -> bool:
    """True when downloads must not even be attempted (``TLMULTI_OFFLINE=1``)."""
    return os.environ.get("TLMULTI_OFFLINE", "").lower() in ("1", "true", "yes")


# Free space: checked before large writes whose size is known, and the one message for a full disk.

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "errno = 28,", "errno = 122,")


def existing(path) -> Path:
    """``path`` or its nearest folder above that exists (where a file about to be written goes)."""
    path = Path(path).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def mount_point(path) -> Path:
    """The mount point of the disk that holds ``path``."""
    path = existing(path).resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def free_bytes(path) -> int:
    """Bytes free for this user on the disk that holds ``path``."""
    return shutil.disk_usage(existing(path)).free


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says a disk is full or a quota is exceeded (an OSError with ENOSPC / EDQUOT,
    or an error of a library, such as h5py, whose message carries it)."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    return isinstance(exc, (OSError, RuntimeError)) and any(t in str(exc) for t in _DISK_FULL_TEXTS)


def size_text(nbytes: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{int(nbytes)} bytes"


def disk_full(path, what: str, fix: str, need: int | None = None):
    """The one-line :class:`~tlmulti.errors.DiskFullError` for writing ``what`` to ``path``:
    the disk (its mount point), the space needed when known, the space free, and ``fix``."""
    from tlmulti.errors import DiskFullError

    try:
        free, mount = size_text(free_bytes(path)), mount_point(path)
    except OSError:
        free, mount = "unknown", "?"
    needs = f"needs about {size_text(need)}, " if need else ""
    return DiskFullError(f"No space left on device for {what} in '{path}' (the disk mounted at '{mount}': "
                         f"{needs}{free} free); {fix}.")


def check_free(path, need: int, what: str, fix: str, margin: int = 1 << 20) -> None:
    """Raise :func:`disk_full` unless the disk of ``path`` has ``need`` bytes free plus ``margin``."""
    try:
        free = free_bytes(path)
    except OSError:
        return  # the write itself will say what is wrong
    if free < need + margin:
        raise disk_full(path, what, fix, need + margin)
