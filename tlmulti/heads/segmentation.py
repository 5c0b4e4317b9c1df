"""Segmentation heads: a U-Net decoder over multi-scale backbone features, or a light head.

``unet_decoder`` takes the backbone's skip features (shallow to deep, as the spec's
``feature_layers`` name them), starts from the deepest, and at each level upsamples by the
level's scale, concatenates the skip feature and applies two 3x3 convolutions with BatchNorm
and ReLU. If the shallowest feature is coarser than the image (ResNet, MobileNet start at 1/2)
it adds upsampling blocks without skips up to full size. A 1x1 convolution and softmax give the
class probabilities at the network's input size.

``simple_head`` is for backbones that already end in a decoder (keras-hub DeepLabV3 and
SegFormer): optional dropout, a 1x1 convolution to the classes and bilinear resizing to the
input size.

BatchNorm in the head always trains (the head is new), with momentum 0.9 so its moving statistics
settle within the few steps per epoch small segmentation sets give; the backbone's BatchNorm
follows the phase's policy (see :mod:`tlmulti.training.freezing`).

Example::

    import keras
    from tlmulti.heads.segmentation import unet_decoder
    feats = [keras.Input((64, 64, 16)), keras.Input((32, 32, 32)), keras.Input((16, 16, 64))]
    head = unet_decoder(feats, num_classes=2, output_size=(64, 64), filters=[32, 16])
    head.output.shape  # (None, 64, 64, 2)
"""

from __future__ import annotations

import keras

# Segmentation sets are small (a few dozen tiles: a handful of steps per epoch). With Keras's
# default momentum 0.99 the moving statistics of new BatchNorm layers need hundreds of steps to
# settle, and validation (which uses them) lags far behind training; 0.9 settles in ~30 steps.
BN_MOMENTUM = 0.9


def _inputs_like(features):
    feats = list(features) if isinstance(features, (list, tuple)) else [features]
    return [keras.Input(shape=t.shape[1:], dtype=t.dtype, name=f"feature_{i}") for i, t in enumerate(feats)]


def _upsample(x, size, name):
    h, w = int(x.shape[1]), int(x.shape[2])
    th, tw = int(size[0]), int(size[1])
    if (th, tw) == (h, w):
        return x
    if th % h == 0 and tw % w == 0:
        return keras.layers.UpSampling2D((th // h, tw // w), interpolation="bilinear", name=name)(x)
    return keras.layers.Resizing(th, tw, interpolation="bilinear", name=name)(x)


def _conv_block(x, filters: int, name: str, batchnorm: bool = True, dropout: float = 0.0):
    for k in (1, 2):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=not batchnorm, name=f"{name}_conv{k}")(x)
        if batchnorm:
            x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn{k}")(x)
        x = keras.layers.ReLU(name=f"{name}_relu{k}")(x)
    if dropout:
        x = keras.layers.SpatialDropout2D(dropout, name=f"{name}_dropout")(x)
    return x


def _filters(filters, n: int) -> list[int]:
    filters = [int(f) for f in (filters or [128, 64, 32, 16])]
    while len(filters) < n:
        filters.append(max(filters[-1] // 2, 8))
    return filters[:n]


def unet_decoder(features, num_classes: int, output_size, filters=None, batchnorm: bool = True,
                 dropout: float = 0.0, name: str = "head") -> keras.Model:
    """A ``keras.Model`` from feature maps shaped like ``features`` (shallow to deep) to class
    probabilities ``(B, H, W, num_classes)`` at ``output_size=(H, W)``.

    ``filters`` lists the convolution widths of the decoder blocks, deepest first; missing ones
    halve the last (minimum 8).
    """
    inputs = _inputs_like(features)
    if any(t.shape[1] is None or t.shape[2] is None for t in inputs):
        raise ValueError("unet_decoder needs feature maps of known height and width; fix the input size")
    skips = inputs[:-1][::-1]
    x = inputs[-1]
    extra = 0
    h = int(inputs[0].shape[1])
    while h * (2 ** extra) < int(output_size[0]):
        extra += 1
    widths = _filters(filters, len(skips) + extra)
    for i, skip in enumerate(skips):
        x = _upsample(x, skip.shape[1:3], f"decoder{i + 1}_up")
        x = keras.layers.Concatenate(name=f"decoder{i + 1}_concat")([x, skip])
        x = _conv_block(x, widths[i], f"decoder{i + 1}", batchnorm, dropout)
    for j in range(extra):
        i = len(skips) + j
        target = output_size if j == extra - 1 else (int(x.shape[1]) * 2, int(x.shape[2]) * 2)
        x = _upsample(x, target, f"decoder{i + 1}_up")
        x = _conv_block(x, widths[i], f"decoder{i + 1}", batchnorm, dropout)
    x = _upsample(x, output_size, "final_resize")
    outputs = keras.layers.Conv2D(num_classes, 1, activation="softmax", dtype="float32", name="classes")(x)
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs, name=name)


def simple_head(features, num_classes: int, output_size, dropout: float = 0.0, name: str = "head") -> keras.Model:
    """Dropout, 1x1 convolution to classes, bilinear resize to ``output_size``, softmax."""
    inputs = _inputs_like(features)
    if len(inputs) > 1:
        raise ValueError("simple_head takes one feature map; use unet_decoder for several")
    x = inputs[0]
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    x = keras.layers.Conv2D(num_classes, 1, name="logits")(x)
    if x.shape[1] is None or x.shape[2] is None:
        raise ValueError("simple_head needs a feature map of known height and width; fix the input size")
    x = _upsample(x, output_size, "resize")
    outputs = keras.layers.Activation("softmax", dtype="float32", name="classes")(x)
    return keras.Model(inputs[0], outputs, name=name)
