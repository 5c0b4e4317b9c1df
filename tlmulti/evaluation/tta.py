"""Test-time augmentation: a model's outputs averaged over flipped views of each input.

The views are the identity and the flips the run trained with (``data.augment.flip``:
horizontal, vertical or both); a run trained without flips gets the horizontal flip, the usual
test-time view, and :func:`views` says so. For outputs that are maps (segmentation) each view's
output is flipped back before the average, so every pixel averages its own predictions. For detectors
(:func:`detection_tta_model`) each flipped view's per-anchor output is moved to the mirrored
anchor with its centre offset negated, so the class logits and box deltas of one object average
over the views before decoding and suppression, which stay as they are.

Example::

    axes, note = views("horizontal")              # [(2,)], ""
    averaged = tta_model(model, axes, maps=False)  # a Keras model with the same input and output
"""

from __future__ import annotations

AXES = {"horizontal": [(2,)], "vertical": [(1,)], "both": [(2,), (1,), (1, 2)]}
NAMES = {(2,): "horizontal flip", (1,): "vertical flip", (1, 2): "both flips"}


def views(flip: str) -> tuple[list[tuple[int, ...]], str]:
    """The flip axes for a run trained with ``flip``, and a note when they were not trained."""
    if flip in AXES:
        return AXES[flip], ""
    return AXES["horizontal"], ("the run trained without flips (data.augment.flip: none), so the flipped view is "
                                "new to the model: compare the metric without --tta before relying on it")


def describe(axes: list[tuple[int, ...]]) -> str:
    return ", ".join(["identity"] + [NAMES[a] for a in axes])


def tta_model(model, axes: list[tuple[int, ...]], maps: bool):
    """A Keras model whose output is the mean of ``model`` over the identity and each flip in
    ``axes`` (axes of the ``(batch, H, W, C)`` input); ``maps``: flip each output back first."""
    import keras
    from keras import ops

    inputs = keras.Input(shape=model.input_shape[1:], dtype=model.inputs[0].dtype, name="tta_input")
    outputs = [model(inputs)]
    for axis in axes:
        out = model(ops.flip(inputs, axis=axis))
        outputs.append(ops.flip(out, axis=axis) if maps else out)
    mean = ops.mean(ops.stack(outputs, axis=0), axis=0)
    return keras.Model(inputs, mean, name=f"tta_{model.name}")


def mirror_order(anchors, size, axis: int):
    """For ``(anchors, 4)`` xyxy boxes in an image of ``size`` (H, W): the index of each anchor's
    mirror image across the flip ``axis`` (1: vertical, 2: horizontal), -1 where the mirror is
    not an anchor (keras-hub centres anchors at multiples of the stride from 0, so the first
    column or row of each level has none, nor has a level whose stride does not divide the size)."""
    import numpy as np

    a = np.asarray(anchors, dtype=np.float64)
    h, w = size
    m = a.copy()
    if axis == 2:
        m[:, [0, 2]] = w - a[:, [2, 0]]
    else:
        m[:, [1, 3]] = h - a[:, [3, 1]]
    index = {tuple(np.round(row, 2)): i for i, row in enumerate(a)}
    return np.asarray([index.get(tuple(np.round(row, 2)), -1) for row in m], dtype=np.int32)


def detection_tta_model(model, axes: list[tuple[int, ...]], anchors, size):
    """A detector with the same raw output ``(batch, anchors, 4 + classes)`` (centre x, y, w, h
    deltas, then logits) averaged over the identity and each flip in ``axes``; an anchor whose
    mirror is not an anchor averages only the views where it has one."""
    import keras
    import numpy as np
    from keras import ops

    inputs = keras.Input(shape=model.input_shape[1:], dtype=model.inputs[0].dtype, name="tta_input")
    total = ops.cast(model(inputs), "float32")
    count = np.ones(len(np.asarray(anchors)), np.float32)
    for view in axes:
        raw = ops.cast(model(ops.flip(inputs, axis=view)), "float32")
        order, valid = np.arange(len(count)), np.ones(len(count), bool)
        sign = np.ones(int(raw.shape[-1]), np.float32)
        for axis in view:  # anchor i <- its mirror in the flipped image, the centre offset negated
            mirror = mirror_order(anchors, size, axis)[order]
            valid &= mirror >= 0
            order = np.where(valid, mirror, 0)
            sign[0 if axis == 2 else 1] *= -1.0
        valid = valid.astype(np.float32)
        total = total + ops.take(raw, order, axis=1) * sign * valid[None, :, None]
        count += valid
    return keras.Model(inputs, total / count[None, :, None], name=f"tta_{model.name}")
