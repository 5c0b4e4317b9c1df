"""Keras pieces of classification models that are saved with them.

``SmoothedSparseCrossentropy``: cross-entropy on integer labels with label smoothing (the weight
``label_smoothing`` moves from the true class to a uniform target; Szegedy et al. 2016). Keras's
sparse cross-entropy has no smoothing, and its dense one needs one-hot labels.
``SparseFocalCrossentropy``: Keras's focal loss (Lin et al. 2017: cross-entropy scaled by
``(1 - p_true) ** gamma``, so easy, confident examples count less; for imbalanced data) on
integer labels.

Example::

    import numpy as np
    from tlmulti.layers.classification import SmoothedSparseCrossentropy
    loss = SmoothedSparseCrossentropy(0.1)
    float(loss(np.array([0]), np.array([[0.9, 0.1]], "float32")))
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tlmulti")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    def __init__(self, label_smoothing: float = 0.1, name: str = "smoothed_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        classes = ops.shape(y_pred)[-1]
        onehot = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), classes)
        return keras.losses.categorical_crossentropy(onehot, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self):
        config = super().get_config()
        config["label_smoothing"] = self.label_smoothing
        return config


@keras.saving.register_keras_serializable(package="tlmulti")
class SparseFocalCrossentropy(keras.losses.Loss):
    def __init__(self, gamma: float = 2.0, label_smoothing: float = 0.0, name: str = "focal_crossentropy",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        classes = ops.shape(y_pred)[-1]
        onehot = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), classes)
        return keras.losses.categorical_focal_crossentropy(onehot, y_pred, alpha=1.0, gamma=self.gamma,
                                                           label_smoothing=self.label_smoothing)

    def get_config(self):
        config = super().get_config()
        config.update(gamma=self.gamma, label_smoothing=self.label_smoothing)
        return config
