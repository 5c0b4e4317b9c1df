"""TF-Hub handles and local TF2 SavedModels: resolving and loading them, and deciding whether to.

:func:`resolve_handle` turns a handle into the one location that is both checked and loaded: a
URL (``https://``, ``gs://``, any ``scheme://``) stays as it is; a local path has ``~`` expanded,
is made absolute and has every symbolic link and ``..`` resolved (``os.path.realpath``), so what
:func:`check_trusted` decides on is byte for byte what :func:`open_saved_model` loads.
:func:`open_saved_model` loads a local folder directly and a URL through
``tensorflow_hub.resolve`` (found in or downloaded to the TF-Hub cache); a location that is not
on this machine and cannot be downloaded, or a folder that is not a TF2 SavedModel, is
:class:`tlmulti.errors.MissingWeightsError` naming where it was looked for and the ways out.

A SavedModel runs its own graph, so one named by a model *file* or by a run folder's recipe
(``tlmulti resume``, ``tlmulti run RUN/recipe.yaml``: within :func:`checking_saved_models`) is
loaded only when :func:`check_trusted` allows it: the handle of a registered backbone, or a
folder in tlmulti's weights or backbone store that still has the sha256 recorded when the model
was saved. Within :func:`trusting_saved_models` (``--trust``), or with ``TLMULTI_TRUST=1``, any
SavedModel is loaded. :class:`tlmulti.layers.hub.HubLayer` wraps the loaded SavedModel as a
Keras 3 layer.

Example::

    from tlmulti.backbones._saved_model import check_trusted, open_saved_model, resolve_handle, trusting_saved_models
    location = resolve_handle("~/models/my_saved_model")   # e.g. /home/me/models/my_saved_model
    with trusting_saved_models():
        check_trusted(location, None)   # passes: trusted by the block
    module, folder = open_saved_model(location)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile

import tensorflow as tf

from tlmulti.errors import MissingWeightsError, RunError

__all__ = ["check_trusted", "checking_saved_models", "expected_cache_dir", "first_line", "load_saved_model",
           "must_check", "open_saved_model", "resolve_handle", "trusting_saved_models"]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_WAYS_OUT = (
    "download it on a machine with internet and pass the local SavedModel directory as the handle, "
    "or run `tlmulti weights import NAME PATH`"
)


def first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def is_url(handle: str) -> bool:
    return bool(_URL.match(handle))


def resolve_handle(handle) -> str:
    """The location ``handle`` names, computed once for both the trust check and the load: a URL
    unchanged; a local path with ``~`` expanded, joined to the current directory and resolved
    with ``os.path.realpath`` (symbolic links and ``..`` followed as the file system does)."""
    handle = os.fspath(handle)
    if is_url(handle):
        return handle
    return os.path.realpath(os.path.join(os.getcwd(), os.path.expanduser(handle)))


def expected_cache_dir(handle):
    """Where ``hub.resolve`` caches (and looks for) a downloaded URL handle."""
    try:
        from tensorflow_hub import resolver

        cache_dir = resolver.tfhub_cache_dir(use_temp=True)
    except Exception:  # pragma: no cover - depends on the tensorflow_hub internals
        cache_dir = os.environ.get("TFHUB_CACHE_DIR") or os.path.join(
            tempfile.gettempdir(), "tfhub_modules"
        )
    return os.path.join(cache_dir, hashlib.sha1(handle.encode("utf8")).hexdigest())


def open_saved_model(location, handle=None):
    """Loads the SavedModel at ``location`` (from :func:`resolve_handle`); returns ``(module,
    folder)``, the folder it was read from. MissingWeightsError when it is not here. ``handle``
    (what the user wrote) only appears in messages."""
    handle = location if handle is None else handle
    looked = "" if location == handle else f" (looked for {location})"
    if is_url(location):
        try:
            import tensorflow_hub as hub

            path = os.fspath(hub.resolve(location))
        except Exception as exc:
            raise MissingWeightsError(
                f"TF-Hub model {handle!r} is not on this machine and could not be downloaded "
                f"({first_line(exc)}); it was looked for in the TF-Hub cache at "
                f"{expected_cache_dir(location)} "
                f"(set TFHUB_CACHE_DIR to use another cache), so {_WAYS_OUT}."
            ) from exc
    else:
        path = location
        if not os.path.isdir(path):
            raise MissingWeightsError(
                f"TF-Hub SavedModel directory {handle!r}{looked} does not exist, so {_WAYS_OUT}."
            )
    if not any(
        tf.io.gfile.exists(os.path.join(path, name))
        for name in ("saved_model.pb", "saved_model.pbtxt")
    ):
        raise MissingWeightsError(
            f"TF-Hub handle {handle!r} resolved to {path!r}, which holds no saved_model.pb "
            f"(an incomplete download or not a TF2 SavedModel directory), so {_WAYS_OUT}."
        )
    try:
        return tf.saved_model.load(path), path
    except (OSError, tf.errors.NotFoundError) as exc:
        raise MissingWeightsError(
            f"TF-Hub SavedModel {path!r} (handle {handle!r}) could not be read "
            f"({first_line(exc)}), so {_WAYS_OUT}."
        ) from exc


def load_saved_model(handle):
    """Resolves ``handle`` and loads the SavedModel (no trust check); MissingWeightsError when it is not here."""
    return open_saved_model(resolve_handle(handle), handle)[0]


_TRUST = {"all": False, "check": 0}


@contextlib.contextmanager
def trusting_saved_models():
    """Within this block, model files may name any SavedModel (``--trust``; or TLMULTI_TRUST=1)."""
    before = _TRUST["all"]
    _TRUST["all"] = True
    try:
        yield
    finally:
        _TRUST["all"] = before


@contextlib.contextmanager
def checking_saved_models():
    """Within this block, every SavedModel a HubLayer loads must pass :func:`check_trusted`: what
    is built here was named by a model file or a run folder's recipe, not by the user."""
    _TRUST["check"] += 1
    try:
        yield
    finally:
        _TRUST["check"] -= 1


def must_check() -> bool:
    """True inside :func:`checking_saved_models`."""
    return _TRUST["check"] > 0


def _trusted_by_user() -> bool:
    return _TRUST["all"] or os.environ.get("TLMULTI_TRUST", "").lower() in ("1", "true", "yes")


def check_trusted(location: str, sha256: str | None, handle: str | None = None) -> None:
    """Refuse to load the SavedModel at ``location`` (from :func:`resolve_handle`, the location
    that is then loaded) unless it is a registered backbone's handle or a folder inside tlmulti's
    weights or backbone store, and (when one was recorded) still has the sha256 it had when the
    model was saved. A SavedModel runs its own graph, so a run folder must not be able to make
    tlmulti run one it did not write itself. ``handle`` (as written) only appears in messages."""
    from tlmulti import paths, registry
    from tlmulti.integrity import tree_sha256

    if _trusted_by_user():
        return
    handle = location if handle is None else handle
    shown = repr(handle) if handle == location else f"{handle!r} ({location})"
    local = not is_url(location)
    known = {resolve_handle(s.handle) for s in registry.list_backbones() if s.source in ("tfhub", "local")}
    stores = [os.path.realpath(paths.weights_store()), os.path.realpath(paths.backbone_store())]
    inside = local and any(location.startswith(s + os.sep) for s in stores)
    if location not in known and not inside:
        raise RunError(
            f"Refusing to load the SavedModel {shown} named by a model file or a run folder's recipe: tlmulti "
            "runs only the SavedModels of registered backbones or of its weights store (a SavedModel runs its "
            "own graph). If you trust it, pass --trust (or TLMULTI_TRUST=1), or import it with "
            "'tlmulti weights import NAME PATH'."
        )
    if inside and not os.path.isdir(location):
        raise RunError(
            f"Refusing to load the SavedModel {shown}: it is not a SavedModel folder in the weights store "
            "(missing, or a file); import it with 'tlmulti weights import NAME PATH' or pass --trust."
        )
    if sha256 and local and (not os.path.isdir(location) or tree_sha256(location) != sha256):
        raise RunError(
            f"Refusing to load the SavedModel {shown}: its files changed since the model was saved "
            "(sha256 differs). Restore the original or pass --trust."
        )
