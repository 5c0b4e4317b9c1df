"""Temperature scaling (Guo et al. 2017) inside saved classification models.

``TemperatureScaling`` takes the head's probabilities and returns them recalibrated: for one
label per example ``softmax(log p / T)``, which is ``softmax(z / T)`` for the head's logits ``z``
(the log of a softmax differs from the logits by a constant per example); for multi-label
outputs ``sigmoid(logit(p_k) / T_k)`` per label. ``T > 1`` softens over-confident probabilities,
``T < 1`` sharpens under-confident ones (e.g. after label smoothing); the predicted class and the
ranking of examples by any label's probability do not change. Being a layer of the saved model,
it is in ``model.keras`` and every export.

Example::

    import numpy as np
    from tlmulti.layers.calibration import TemperatureScaling
    TemperatureScaling([2.0])(np.array([[0.9, 0.1]], "float32"))  # -> [[0.75, 0.25]]
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

EPS = 1e-7


@keras.saving.register_keras_serializable(package="tlmulti")
class TemperatureScaling(keras.layers.Layer):
    def __init__(self, temperature, activation: str = "softmax", **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.temperature = [float(t) for t in np.atleast_1d(temperature)]
        if activation not in ("softmax", "sigmoid"):
            raise ValueError(f"activation must be softmax or sigmoid, got {activation!r}")
        self.activation = activation

    def call(self, probs):
        t = ops.convert_to_tensor(np.asarray(self.temperature, np.float32))
        p = ops.clip(ops.cast(probs, "float32"), EPS, 1.0 - EPS)
        if self.activation == "softmax":
            return ops.softmax(ops.log(p) / t, axis=-1)
        return ops.sigmoid((ops.log(p) - ops.log(1.0 - p)) / t)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(temperature=self.temperature, activation=self.activation)
        return config
