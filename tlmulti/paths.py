"""Where tlmulti keeps what it builds: imported weights, saved backbones, prepared datasets.

Everything lives under one folder, ``$TLMULTI_HOME`` if set, else ``$XDG_CACHE_HOME/tlmulti``
(``~/.cache/tlmulti``). Nothing is ever written inside the repository.
"""

from __future__ import annotations

import os
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
