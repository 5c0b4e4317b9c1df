"""TF-Hub handles and local TF2 SavedModels: resolving and loading them, and deciding whether to.

:func:`load_saved_model` resolves a handle with ``tensorflow_hub.resolve`` (a TF-Hub URL, found
in or downloaded to the TF-Hub cache, or a local SavedModel directory) and loads it with
``tf.saved_model.load``; a handle that is not on this machine and cannot be downloaded, or a
folder that is not a TF2 SavedModel, is :class:`tlmulti.errors.MissingWeightsError` naming where
it was looked for and the ways out.

A SavedModel runs its own graph, so one named by a model *file* is loaded only when
:func:`check_trusted` allows it: the handle of a registered backbone, or a folder in tlmulti's
weights or backbone store that still has the sha256 recorded when the model was saved. Within
:func:`trusting_saved_models` (``--trust``), or with ``TLMULTI_TRUST=1``, any SavedModel is
loaded. :class:`tlmulti.layers.hub.HubLayer` wraps the loaded SavedModel as a Keras 3 layer.

Example::

    from tlmulti.backbones._saved_model import check_trusted, load_saved_model, trusting_saved_models
    with trusting_saved_models():
        check_trusted("/data/my_saved_model", None)   # passes: trusted by the block
    module = load_saved_model("/data/my_saved_model")
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile

import tensorflow as tf

from tlmulti.errors import MissingWeightsError

__all__ = ["LAST_PATH", "check_trusted", "expected_cache_dir", "first_line", "load_saved_model",
           "trusting_saved_models"]

_REMOTE_PREFIXES = ("http://", "https://", "gs://")
_WAYS_OUT = (
    "download it on a machine with internet and pass the local SavedModel directory as the handle, "
    "or run `tlmulti weights import NAME PATH`"
)


def first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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


def load_saved_model(handle):
    """Resolves ``handle`` and loads the SavedModel; MissingWeightsError when it is not here."""
    remote = handle.startswith(_REMOTE_PREFIXES)
    try:
        import tensorflow_hub as hub

        path = hub.resolve(handle)
    except Exception as exc:
        reason = first_line(exc)
        if remote:
            raise MissingWeightsError(
                f"TF-Hub model {handle!r} is not on this machine and could not be downloaded "
                f"({reason}); it was looked for in the TF-Hub cache at "
                f"{expected_cache_dir(handle)} "
                f"(set TFHUB_CACHE_DIR to use another cache), so {_WAYS_OUT}."
            ) from exc
        where = os.path.abspath(handle)
        looked = "" if where == handle else f" (looked for {where})"
        detail = "" if isinstance(exc, OSError) else f" ({reason})"
        raise MissingWeightsError(
            f"TF-Hub SavedModel directory {handle!r}{looked} does not exist{detail}, "
            f"so {_WAYS_OUT}."
        ) from exc
    path = os.fspath(path)
    LAST_PATH[handle] = path
    if not any(
        tf.io.gfile.exists(os.path.join(path, name))
        for name in ("saved_model.pb", "saved_model.pbtxt")
    ):
        raise MissingWeightsError(
            f"TF-Hub handle {handle!r} resolved to {path!r}, which holds no saved_model.pb "
            f"(an incomplete download or not a TF2 SavedModel directory), so {_WAYS_OUT}."
        )
    try:
        return tf.saved_model.load(path)
    except (OSError, tf.errors.NotFoundError) as exc:
        raise MissingWeightsError(
            f"TF-Hub SavedModel {path!r} (handle {handle!r}) could not be read "
            f"({first_line(exc)}), so {_WAYS_OUT}."
        ) from exc


LAST_PATH: dict[str, str] = {}  # handle -> the folder it resolved to (for the sha256 record)
_TRUST = {"all": False}


@contextlib.contextmanager
def trusting_saved_models():
    """Within this block, model files may name any SavedModel (``--trust``; or TLMULTI_TRUST=1)."""
    before = _TRUST["all"]
    _TRUST["all"] = True
    try:
        yield
    finally:
        _TRUST["all"] = before


def check_trusted(handle: str, sha256: str | None) -> None:
    """Refuse to load a SavedModel that a model *file* names, unless it is a registered
    backbone's handle or lies in tlmulti's weights or backbone store, and (when the file recorded
    one) still has the sha256 it had when the model was saved. A SavedModel runs its own graph,
    so a run folder must not be able to make tlmulti run one it did not write itself."""
    from tlmulti import paths, registry
    from tlmulti.errors import RunError
    from tlmulti.integrity import tree_sha256

    if _TRUST["all"] or os.environ.get("TLMULTI_TRUST", "").lower() in ("1", "true", "yes"):
        return
    known = {s.handle for s in registry.list_backbones() if s.source in ("tfhub", "local")}
    local = os.path.abspath(os.path.expanduser(handle)) if "://" not in handle else None
    stores = [str(paths.weights_store().resolve()), str(paths.backbone_store().resolve())]
    inside = local is not None and any(os.path.realpath(local).startswith(s + os.sep) for s in stores)
    if handle not in known and not inside:
        raise RunError(
            f"Refusing to load the SavedModel {handle!r} named in this model file: tlmulti runs only the "
            "SavedModels of registered backbones or of its weights store (a SavedModel runs its own graph). "
            "If you trust it, load with --trust (or TLMULTI_TRUST=1), or import it with 'tlmulti weights import'."
        )
    if sha256 and local is not None and os.path.isdir(local) and tree_sha256(local) != sha256:
        raise RunError(
            f"Refusing to load the SavedModel {handle!r}: its files changed since the model was saved "
            "(sha256 differs). Restore the original or load with --trust."
        )
