"""Detection layers over keras-hub's RetinaNet parts: anchors, the training loss and decoding.

A detection model outputs one tensor ``(batch, anchors, 4 + classes)``: box deltas (centre x,
y, width, height, encoded against each anchor with :data:`BOX_VARIANCE`) then class logits. The
anchors come from keras-hub's ``AnchorGenerator`` with the run's :class:`AnchorConfig`, in the
order the prediction heads emit them (level by level, row-major, anchor shapes innermost).

* :class:`DetectionLoss` matches ground-truth boxes to anchors with keras-hub's
  ``RetinaNetLabelEncoder`` (IoU >= 0.5 positive, < 0.4 background, in between ignored; a box
  without an anchor of IoU >= 0.5 is not learned, which is why anchors are derived from the
  training boxes and the data summary states their coverage) and sums the focal loss over classes and the Huber loss of positive
  anchors' deltas, both divided by the number of positive anchors in the batch, as RetinaNet does.
  Targets are ``(batch, max_boxes, 5)`` rows ``[x_min, y_min, x_max, y_max, class]`` in network
  pixels, padded with -1.
* :class:`DecodeDetections` turns raw outputs into boxes (``xyxy`` network pixels), scores and
  class ids with keras-hub's ``NonMaxSuppression`` (each anchor's best class, class-agnostic, at
  ``head.iou_threshold``, up to ``max_detections``; rows past ``num_detections`` are -1);
  :meth:`DecodeDetections.select` applies the same suppression to an export's raw boxes and scores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import keras
from keras import ops

BOX_VARIANCE = [0.1, 0.1, 0.2, 0.2]
ENCODING = "center_xywh"


@dataclass
class AnchorConfig:
    """Anchor shapes of a detector: levels ``min_level..max_level`` (stride ``2**level``), at each
    ``num_scales`` sizes ``2**level * anchor_size * 2**(k / num_scales)`` times ``aspect_ratios``
    (width / height)."""

    min_level: int = 3
    max_level: int = 7
    num_scales: int = 3
    aspect_ratios: list = field(default_factory=lambda: [0.5, 1.0, 2.0])
    anchor_size: float = 4.0

    @property
    def per_location(self) -> int:
        return self.num_scales * len(self.aspect_ratios)

    def generator(self):
        from keras_hub.layers import AnchorGenerator

        return AnchorGenerator("xyxy", min_level=self.min_level, max_level=self.max_level, num_scales=self.num_scales,
                               aspect_ratios=list(self.aspect_ratios), anchor_size=self.anchor_size)

    def anchors(self, image_size) -> "keras.KerasTensor":
        """``(anchors, 4)`` xyxy boxes for an input of ``image_size`` (H, W)."""
        h, w = int(image_size[0]), int(image_size[1])
        levels = self.generator()(ops.zeros((1, h, w, 1)))
        return ops.concatenate([levels[f"P{l}"] for l in range(self.min_level, self.max_level + 1)], axis=0)

    def sizes(self) -> list[float]:
        """Every anchor side (``sqrt(w * h)``) the generator makes, smallest first."""
        return sorted(float(int(2 ** l * self.anchor_size * 2 ** (k / self.num_scales)))
                      for l in range(self.min_level, self.max_level + 1) for k in range(self.num_scales))


def _prediction_head_class():
    from keras_hub.src.models.retinanet.prediction_head import PredictionHead

    return PredictionHead


@keras.saving.register_keras_serializable(package="tlmulti")
class DetectionPredictionHead(_prediction_head_class()):
    """keras-hub's RetinaNet ``PredictionHead``, rebuilt from a saved model's list-valued
    ``build_config`` shapes as it is from tuples."""

    def build(self, input_shape):
        super().build(tuple(input_shape))


def _anchor_config(config) -> AnchorConfig:
    return config if isinstance(config, AnchorConfig) else AnchorConfig(**dict(config))


@keras.saving.register_keras_serializable(package="tlmulti")
class DetectionLoss(keras.losses.Loss):
    """RetinaNet's loss for outputs ``(batch, anchors, 4 + classes)`` and targets
    ``(batch, max_boxes, 5)``; each example's value is its share of the batch's total, so their
    sum (the reduction) is the loss per positive anchor."""

    def __init__(self, image_size, anchors, num_classes: int, alpha: float = 0.25, gamma: float = 2.0,
                 box_weight: float = 1.0, name="detection_loss", reduction="sum", **kwargs):
        super().__init__(name=name, reduction=reduction, **kwargs)
        from keras_hub.src.models.retinanet.retinanet_label_encoder import RetinaNetLabelEncoder

        self.image_size = [int(image_size[0]), int(image_size[1])]
        self.anchor_config = _anchor_config(anchors)
        self.num_classes = int(num_classes)
        self.alpha, self.gamma, self.box_weight = float(alpha), float(gamma), float(box_weight)
        self.encoder = RetinaNetLabelEncoder(self.anchor_config.generator(), bounding_box_format="xyxy",
                                             encoding_format=ENCODING, box_variance=BOX_VARIANCE)

    def encode(self, y_true):
        """``(box targets (batch, anchors, 4), class targets (batch, anchors))``: class -1 is
        background, -2 ignored."""
        y_true = ops.cast(y_true, "float32")
        boxes, classes = y_true[..., :4], y_true[..., 4]
        # padded rows (class -1) become empty boxes far outside the image: no anchor matches them
        pad = ops.expand_dims(ops.less(classes, 0), -1)
        boxes = ops.where(pad, -1e4 * ops.ones_like(boxes), boxes)
        image = ops.zeros((1, self.image_size[0], self.image_size[1], 1))
        return self.encoder(image, boxes, classes)

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        box_targets, class_targets = self.encode(y_true)
        class_targets = ops.reshape(class_targets, ops.shape(y_pred)[:2])
        box_pred, logits = y_pred[..., :4], y_pred[..., 4:]
        positive = ops.cast(ops.greater(class_targets, -1.0), "float32")
        counted = ops.cast(ops.not_equal(class_targets, -2.0), "float32")
        normalizer = ops.maximum(ops.sum(positive), 1.0)
        labels = ops.one_hot(ops.cast(ops.maximum(class_targets, 0.0), "int32"), self.num_classes) * \
            ops.expand_dims(positive, -1)
        focal = keras.losses.binary_focal_crossentropy(labels, logits, apply_class_balancing=True, alpha=self.alpha,
                                                       gamma=self.gamma, from_logits=True) * self.num_classes
        # anchors matched to nothing real may carry infinite deltas: only positive ones count
        box_targets = ops.where(ops.expand_dims(positive > 0, -1), box_targets, ops.zeros_like(box_targets))
        box = keras.losses.huber(box_targets, box_pred, delta=1.0) * 4.0
        per_example = ops.sum(focal * counted + self.box_weight * box * positive, axis=1)
        return per_example / normalizer

    def get_config(self):
        return {"name": self.name, "reduction": self.reduction, "image_size": self.image_size,
                "anchors": asdict(self.anchor_config), "num_classes": self.num_classes, "alpha": self.alpha,
                "gamma": self.gamma, "box_weight": self.box_weight}


@keras.saving.register_keras_serializable(package="tlmulti")
class DecodeDetections(keras.layers.Layer):
    """Raw detector outputs ``(batch, anchors, 4 + classes)`` -> ``{"boxes" (batch, K, 4) xyxy in
    network pixels, "scores" (batch, K), "classes" (batch, K) int32, "num_detections" (batch,)}``
    after non-maximum suppression; invalid rows are -1. ``suppress=False``: ``{"boxes" (batch,
    anchors, 4), "scores" (batch, anchors, classes)}`` of every anchor, for runtimes without the
    suppression's operations (ONNX)."""

    def __init__(self, image_size, anchors, num_classes: int, iou_threshold: float = 0.5,
                 score_threshold: float = 0.0, max_detections: int = 100, suppress: bool = True, **kwargs):
        super().__init__(**kwargs)
        from keras_hub.layers import NonMaxSuppression

        self.image_size = [int(image_size[0]), int(image_size[1])]
        self.anchor_config = _anchor_config(anchors)
        self.num_classes = int(num_classes)
        self.iou_threshold, self.score_threshold = float(iou_threshold), float(score_threshold)
        self.max_detections = int(max_detections)
        self.suppress = bool(suppress)
        self.nms = NonMaxSuppression(bounding_box_format="xyxy", from_logits=True, iou_threshold=self.iou_threshold,
                                     confidence_threshold=self.score_threshold, max_detections=self.max_detections)

    def call(self, raw):
        raw = ops.cast(raw, "float32")
        h, w = self.image_size
        anchors = self.anchor_config.anchors((h, w))
        boxes = keras.utils.bounding_boxes.decode_deltas_to_boxes(
            anchors=anchors, boxes_delta=raw[..., :4], anchor_format="xyxy", box_format="xyxy",
            encoded_format=ENCODING, variance=BOX_VARIANCE, image_shape=(h, w, 3))
        boxes = ops.stack([ops.clip(boxes[..., 0], 0, w), ops.clip(boxes[..., 1], 0, h),
                           ops.clip(boxes[..., 2], 0, w), ops.clip(boxes[..., 3], 0, h)], axis=-1)
        if not self.suppress:  # every anchor's box and class scores, for suppression outside the model
            return {"boxes": boxes, "scores": ops.sigmoid(raw[..., 4:])}
        return self.select(boxes, raw[..., 4:])

    def select(self, boxes, class_scores, from_logits: bool = True):
        """The suppression :meth:`call` applies, on decoded ``boxes`` (batch, anchors, 4) xyxy and
        ``class_scores`` (batch, anchors, classes): logits, or with ``from_logits=False`` the sigmoid
        scores a ``suppress=False`` layer (a TFLite / ONNX export) returns. keras-hub's
        ``NonMaxSuppression`` keeps each anchor's best class and suppresses across classes."""
        import tensorflow as tf
        from keras_hub.layers import NonMaxSuppression

        nms = self.nms if from_logits else NonMaxSuppression(
            bounding_box_format="xyxy", from_logits=False, iou_threshold=self.iou_threshold,
            confidence_threshold=self.score_threshold, max_detections=self.max_detections)

        def one(args):  # keras-hub's suppression needs a static batch size: one image at a time
            out = nms(args[0][None], args[1][None])
            return {"boxes": out["boxes"][0], "scores": out["confidence"][0],
                    "classes": tf.cast(out["labels"][0], "int32"),
                    "num_detections": tf.cast(out["num_detections"][0], "int32")}

        k = self.max_detections
        return tf.map_fn(one, (tf.cast(boxes, "float32"), tf.cast(class_scores, "float32")), fn_output_signature={
            "boxes": tf.TensorSpec((k, 4), tf.float32), "scores": tf.TensorSpec((k,), tf.float32),
            "classes": tf.TensorSpec((k,), tf.int32), "num_detections": tf.TensorSpec((), tf.int32)})

    def compute_output_spec(self, raw):
        batch, k = raw.shape[0], self.max_detections
        if not self.suppress:
            return {"boxes": keras.KerasTensor((batch, raw.shape[1], 4), "float32"),
                    "scores": keras.KerasTensor((batch, raw.shape[1], self.num_classes), "float32")}
        return {"boxes": keras.KerasTensor((batch, k, 4), "float32"), "scores": keras.KerasTensor((batch, k), "float32"),
                "classes": keras.KerasTensor((batch, k), "int32"), "num_detections": keras.KerasTensor((batch,), "int32")}

    def get_config(self):
        config = super().get_config()
        config.update(image_size=self.image_size, anchors=asdict(self.anchor_config), num_classes=self.num_classes,
                      iou_threshold=self.iou_threshold, score_threshold=self.score_threshold,
                      max_detections=self.max_detections, suppress=self.suppress)
        return config
