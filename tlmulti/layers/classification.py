"""Keras pieces of classification models that are saved with them.

``SmoothedSparseCrossentropy``: cross-entropy on integer labels with label smoothing (the weight
``label_smoothing`` moves from the true class to a uniform target; Szegedy et al. 2016). Keras's
sparse cross-entropy has no smoothing, and its dense one needs one-hot labels.

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
