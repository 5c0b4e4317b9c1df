"""The detection head: keras-hub's RetinaNet feature pyramid and prediction heads over a
pretrained encoder's multi-scale features.

``retinanet_head`` takes the encoder's features at strides ``2**level`` (for EfficientNet-Lite0
the stride 8, 16 and 32 features), builds keras-hub's ``FeaturePyramid`` from ``min_level`` to
``max_level`` (levels above the encoder's deepest are strided convolutions, as in RetinaNet) and
runs one shared box head and one shared class head (keras-hub ``PredictionHead``, the class head's
bias set to the prior 0.01 for the focal loss) on every level. The output is one tensor
``(batch, anchors, 4 + classes)`` in the anchor order of :mod:`tlmulti.layers.detection`.

Example::

    import keras
    from tlmulti.heads.detection import retinanet_head
    from tlmulti.layers.detection import AnchorConfig
    feats = [keras.Input((8, 8, 16)), keras.Input((4, 4, 32)), keras.Input((2, 2, 64))]
    head = retinanet_head(feats, [3, 4, 5], num_classes=2, anchors=AnchorConfig(max_level=5))
    head.output.shape  # (None, 756, 6)
"""

from __future__ import annotations

import keras


def retinanet_head(features, levels, num_classes: int, anchors, filters: int = 96, convs: int = 2,
                   prior: float = 0.01) -> keras.Model:
    """A model from the encoder's features (at pyramid ``levels``, shallow to deep) to raw
    detections ``(batch, anchors, 4 + num_classes)``."""
    from keras_hub.src.models.retinanet.feature_pyramid import FeaturePyramid

    from tlmulti.layers.detection import DetectionPredictionHead as PredictionHead

    inputs = [keras.Input(shape=t.shape[1:], dtype=t.dtype, name=f"feature_{i}") for i, t in enumerate(features)]
    pyramid = FeaturePyramid(min_level=anchors.min_level, max_level=anchors.max_level, use_p5=False,
                             num_filters=filters, name="feature_pyramid")
    maps = pyramid({f"P{l}": t for l, t in zip(levels, inputs) if l >= anchors.min_level})
    per_location = anchors.per_location
    box_head = PredictionHead(output_filters=per_location * 4, num_filters=filters, num_conv_layers=convs,
                              name="box_head")
    class_head = PredictionHead(output_filters=per_location * num_classes, num_filters=filters, num_conv_layers=convs,
                                use_prior_probability=True, prior_probability=prior, name="class_head")
    boxes, logits = [], []
    for level in range(anchors.min_level, anchors.max_level + 1):
        m = maps[f"P{level}"]
        boxes.append(keras.layers.Reshape((-1, 4), name=f"boxes_P{level}")(box_head(m)))
        logits.append(keras.layers.Reshape((-1, num_classes), name=f"logits_P{level}")(class_head(m)))
    boxes = keras.layers.Concatenate(axis=1, name="boxes")(boxes)
    logits = keras.layers.Concatenate(axis=1, name="logits")(logits)
    out = keras.layers.Concatenate(axis=-1, name="detections", dtype="float32")([boxes, logits])
    return keras.Model(inputs, out, name="detection_head")
