"""Classification head: pool, optional hidden layers with dropout, softmax over classes.

Example::

    import keras
    from tlmulti.heads.classification import classification_head
    from tlmulti.recipe import HeadConfig
    features = keras.Input((4, 4, 512))
    head = classification_head(features, num_classes=10, config=HeadConfig(hidden=[256]))
"""

from __future__ import annotations

import keras

from tlmulti.choices import POOLINGS


def pool(x, pooling: str):
    """Reduce a feature map (B, H, W, C) or sequence (B, T, C) to a vector (B, C)."""
    rank = len(x.shape)
    if pooling == "none" or rank == 2:
        return x
    if pooling == "flatten":
        return keras.layers.Flatten(name="flatten")(x)
    if pooling == "avg":
        layer = keras.layers.GlobalAveragePooling2D if rank == 4 else keras.layers.GlobalAveragePooling1D
    elif pooling == "max":
        layer = keras.layers.GlobalMaxPooling2D if rank == 4 else keras.layers.GlobalMaxPooling1D
    else:
        raise ValueError(f"head.pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    return layer(name=f"{pooling}_pool")(x)


def dense_stack(x, config):
    """Dropout and hidden Dense layers (``head.hidden``) before the output layer."""
    for i, units in enumerate(config.hidden):
        x = keras.layers.Dropout(config.dropout, name=f"dropout_{i}")(x) if config.dropout else x
        x = keras.layers.Dense(units, activation=config.activation, name=f"hidden_{i}")(x)
    if config.dropout:
        x = keras.layers.Dropout(config.dropout, name="dropout")(x)
    return x


def classification_head(features, num_classes: int, config, name: str = "head",
                        normalize: str = "none", activation: str = "softmax") -> keras.Model:
    """A ``keras.Model`` from tensors shaped like ``features`` to class probabilities.

    ``normalize="batchnorm"`` standardises the pooled features (moving statistics over the
    training data, no learnt scale or offset) before the dense layers."""
    inputs = keras.tree.map_structure(
        lambda t: keras.Input(shape=t.shape[1:], dtype=t.dtype, name=None), features
    )
    x = inputs
    if isinstance(x, dict) or isinstance(x, (list, tuple)):
        raise ValueError("classification_head takes one feature tensor; use a task-specific head for dicts")
    x = pool(x, config.pooling)
    if normalize == "batchnorm":
        x = keras.layers.BatchNormalization(momentum=0.9, center=False, scale=False, name="feature_norm")(x)
    x = dense_stack(x, config)
    outputs = keras.layers.Dense(num_classes, activation=activation, dtype="float32", name="classes")(x)
    return keras.Model(inputs, outputs, name=name)


def classification_loss(label_smoothing: float = 0.0, loss: str = "crossentropy", focal_gamma: float = 2.0):
    """Cross-entropy on integer labels, with ``label_smoothing`` when it is not 0; ``loss="focal"``:
    focal cross-entropy with ``focal_gamma``."""
    if loss == "focal":
        from tlmulti.layers.classification import SparseFocalCrossentropy

        return SparseFocalCrossentropy(focal_gamma, label_smoothing)
    if not label_smoothing:
        return keras.losses.SparseCategoricalCrossentropy()
    from tlmulti.layers.classification import SmoothedSparseCrossentropy

    return SmoothedSparseCrossentropy(label_smoothing)
