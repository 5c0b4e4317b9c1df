"""Source ``keras_applications``: ``keras.applications`` models without their classifier.

``handle`` names the class (``ResNet50``); ``weights_file`` is the file Keras downloads, looked
for in the Keras cache (``$KERAS_HOME/models``). A ``.h5`` / ``.keras`` weights file given as
``weights`` (or imported into the store) is loaded into the architecture instead of downloading.
"""

from __future__ import annotations

from pathlib import Path

from tlmulti import paths
from tlmulti.backbones._store import RANDOM, keras_cache, missing, store_dir
from tlmulti.errors import TlmultiError


def status(spec) -> tuple[bool, str]:
    cached = keras_cache(spec.weights_file)
    return cached.is_file(), str(cached)


def load(spec, weights, input_shape):
    import keras

    try:
        cls = getattr(keras.applications, spec.handle)
    except AttributeError:
        raise TlmultiError(f"Backbone '{spec.name}': keras.applications has no model '{spec.handle}'.") from None
    kwargs = dict(include_top=False, input_shape=tuple(input_shape) if input_shape else None, **spec.options)
    if weights == RANDOM:
        return cls(weights=None, **kwargs)
    if weights is not None:
        path = Path(weights)
        if path.is_dir():
            candidates = sorted(path.glob("*.h5")) + sorted(path.glob("*.keras"))
            if not candidates:
                raise missing(spec, [str(path)], "no .h5 file in the folder")
            path = candidates[0]
        model = cls(weights=None, **kwargs)
        model.load_weights(str(path))
        return model
    cached = keras_cache(spec.weights_file)
    if not cached.is_file() and paths.offline():
        raise missing(spec, [str(store_dir(spec)), str(cached)], "TLMULTI_OFFLINE is set")
    try:
        return cls(weights="imagenet", **kwargs)
    except Exception as exc:  # download errors come as several exception types
        raise missing(spec, [str(store_dir(spec)), str(cached), "keras.applications download"],
                      type(exc).__name__) from None
