"""Keras pieces of segmentation models: resizing predictions back to the input, and the loss.

``ResizeToMatch`` makes an exported segmentation model answer at the size it was asked: the
network runs at its training size and the class probabilities are resized (bilinear) to the
raw input's height and width. ``SegmentationLoss`` is cross-entropy plus soft Dice over the
foreground classes, the usual choice when the foreground is a small part of the image.

Example::

    import numpy as np
    from tlmulti.layers.segmentation import SegmentationLoss
    loss = SegmentationLoss(num_classes=2, mode="ce+dice")
    y = np.zeros((1, 4, 4), "int32"); y[0, :2] = 1
    p = np.stack([1 - y, y], -1).astype("float32") * 0.98 + 0.01
    float(loss(y, p))  # close to 0
"""

from __future__ import annotations

import keras
from keras import ops

from tlmulti.choices import SEGMENTATION_LOSSES as LOSSES


@keras.saving.register_keras_serializable(package="tlmulti")
class ResizeToMatch(keras.layers.Layer):
    """Resize ``inputs[0]`` (B, h, w, C) to the height and width of ``inputs[1]`` (B, H, W, ...).

    Shapes are read at run time, so one saved model serves images of any size; when the sizes
    already agree the values pass through unchanged.
    """

    def __init__(self, interpolation: str = "bilinear", **kwargs):
        super().__init__(**kwargs)
        self.interpolation = interpolation

    def call(self, inputs):
        import tensorflow as tf

        x, reference = inputs
        known = None not in (x.shape[1], x.shape[2], reference.shape[1], reference.shape[2])
        if known and (x.shape[1], x.shape[2]) == (reference.shape[1], reference.shape[2]):
            return x
        return tf.image.resize(x, tf.shape(reference)[1:3], method=self.interpolation)

    def compute_output_shape(self, input_shapes):
        x, reference = input_shapes
        return (x[0], reference[1], reference[2], x[-1])

    def get_config(self):
        config = super().get_config()
        config.update(interpolation=self.interpolation)
        return config


@keras.saving.register_keras_serializable(package="tlmulti")
class SegmentationLoss(keras.losses.Loss):
    """Pixel cross-entropy and/or soft Dice loss for class-probability maps.

    Args:
        num_classes: number of classes (channels of ``y_pred``).
        mode: ``ce+dice`` (default), ``ce`` or ``dice``.
        dice_weight: weight of the Dice term in ``ce+dice``.
        class_weights: optional per-class weights of the cross-entropy (e.g. inverse pixel
            frequency, recipe ``data.class_weight: balanced``).
        smooth: added to numerator and denominator of Dice so empty classes give no loss.

    Dice is computed over the whole batch for each foreground class (every class but 0, or all
    classes when there is only one) and averaged: ``1 - mean_c (2|P∩G| + s) / (|P| + |G| + s)``.
    """

    def __init__(self, num_classes: int, mode: str = "ce+dice", dice_weight: float = 1.0,
                 class_weights=None, smooth: float = 1.0, name: str = "segmentation_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if mode not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {mode!r}")
        self.num_classes = int(num_classes)
        self.mode = mode
        self.dice_weight = float(dice_weight)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        y_true = ops.cast(y_true, "int32")
        if len(y_true.shape) == len(y_pred.shape):
            y_true = ops.squeeze(y_true, -1)
        onehot = ops.one_hot(y_true, self.num_classes, dtype="float32")
        total = 0.0
        if self.mode in ("ce", "ce+dice"):
            probs = ops.clip(y_pred, 1e-7, 1.0)
            ce = -ops.sum(onehot * ops.log(probs), axis=-1)
            if self.class_weights is not None:
                ce = ce * ops.sum(onehot * ops.convert_to_tensor(self.class_weights, "float32"), axis=-1)
            total = ops.mean(ce)
        if self.mode in ("dice", "ce+dice"):
            first = 1 if self.num_classes > 1 else 0
            p = y_pred[..., first:]
            g = onehot[..., first:]
            axes = tuple(range(len(p.shape) - 1))
            inter = ops.sum(p * g, axis=axes)
            denom = ops.sum(p, axis=axes) + ops.sum(g, axis=axes)
            dice = 1.0 - ops.mean((2.0 * inter + self.smooth) / (denom + self.smooth))
            total = total + (self.dice_weight if self.mode == "ce+dice" else 1.0) * dice
        return total

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, mode=self.mode, dice_weight=self.dice_weight,
                      class_weights=self.class_weights, smooth=self.smooth)
        return config


@keras.saving.register_keras_serializable(package="tlmulti")
class ClassMap(keras.layers.Layer):
    """The class map of per-pixel probabilities: argmax over the last axis, int32 (an op that
    TFLite and ONNX have as builtins)."""

    def call(self, p):
        import tensorflow as tf

        return tf.math.argmax(p, axis=-1, output_type=tf.int32)

    def compute_output_shape(self, shape):
        return shape[:-1]

    def compute_output_spec(self, p):
        return keras.KerasTensor(p.shape[:-1], dtype="int32")
