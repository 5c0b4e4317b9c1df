"""Source ``tfhub``: TF-Hub handles and local TF2 SavedModel folders, wrapped for Keras 3.

The model is ``Input -> HubLayer`` (:mod:`tlmulti.layers.hub`: the SavedModel's variables become
Keras variables, so they freeze and fine-tune like any layer). ``options``: ``input_shape`` and
``input_dtype`` of the input (a per-example input shape, default ``(None,)``); ``per_example:
true`` for SavedModels that take one unbatched input (YAMNet takes one waveform and returns a
tuple, of which ``output_index`` is kept); ``signature`` / ``output_key`` pick a signature and
an output. TF-Hub models have no random-initialisation mode.
"""

from __future__ import annotations

from pathlib import Path

from tlmulti.backbones._store import RANDOM
from tlmulti.errors import TlmultiError


def status(spec) -> tuple[bool, str]:
    if Path(spec.handle).expanduser().is_dir():
        return True, spec.handle
    return False, f"{spec.handle} (download)"


def load(spec, weights, input_shape):
    if weights == RANDOM:
        raise TlmultiError(f"Backbone '{spec.name}' comes from TF-Hub and has no random-initialisation mode.")
    handle = weights or spec.handle
    opts = dict(spec.options)
    if opts.pop("per_example", False):
        return per_example_backbone(handle, input_shape, opts.get("output_index"))
    return build_tfhub_backbone(handle, input_shape=tuple(input_shape or opts.pop("input_shape", (None,))),
                                input_dtype=opts.pop("input_dtype", "float32"), **opts)


def build_tfhub_backbone(
    handle, input_shape, input_dtype="float32", trainable=False, signature=None, output_key=None
):
    """A functional ``keras.Model`` named ``"backbone"``: Input -> HubLayer (named ``"hub"``)."""
    import keras

    from tlmulti.layers.hub import HubLayer

    inputs = keras.Input(shape=tuple(input_shape), dtype=input_dtype, name="inputs")
    hub_layer = HubLayer(
        handle, trainable=trainable, signature=signature, output_key=output_key, name="hub"
    )
    outputs = hub_layer(inputs)
    return keras.Model(inputs, outputs, name="backbone")


def per_example_backbone(handle, input_shape, output_index=None):
    """``(batch, samples)`` -> the SavedModel's output for each example, stacked (YAMNet: frames)."""
    import keras

    from tlmulti.layers.hub import PerExampleHub

    samples = input_shape[-1] if input_shape else None
    inputs = keras.Input(shape=(samples,), name="waveform")
    hub = PerExampleHub(handle, output_index=output_index, trainable=False, name="hub")
    return keras.Model(inputs, hub(inputs), name="backbone")
