"""Augmentation that moves object boxes with the pixels: flips and scale jitter.

The map function works on one fixed-size example of a ``tf.data`` pipeline: the image uint8
``(H, W, C)``; the targets float32 ``(M, 5)``, rows ``[x_min, y_min, x_max, y_max, class]`` in
pixels of that image (continuous coordinates: pixel column ``j`` covers ``[j, j+1)``, as
:mod:`tlmulti.data.boxes` gives them), padded with rows of -1; and int32 ``seeds`` ``[2]`` (from
:func:`tlmulti.data.pipeline.make_epoch_dataset`) for stateless draws, so the same seeds give the
same result and an epoch repeats exactly after a resume.

* Flips mirror the image and the boxes (``x -> W - x``): ``none``, ``horizontal``, ``vertical``
  or ``both`` (each axis by its own coin).
* Scale jitter zooms by a factor ``f`` drawn uniformly from ``scale``: ``f > 1`` crops a random
  ``(H/f, W/f)`` window and stretches it back to ``(H, W)``; ``f < 1`` shrinks the image into a
  random place of an ``(H, W)`` canvas filled with the image's mean colour. A point moves as
  ``x -> f * x + t`` with the pixels (bilinear resampling about pixel centres, so a drawn
  rectangle and its box stay within a pixel of each other). Boxes are clipped to the frame; a
  box keeping less than 40% of its area, or under 2 pixels a side, is dropped: its row becomes
  -1 where it was (kept rows are not moved up).

Shapes and dtypes come out as they went in; padding rows stay as they were.

Example::

    augment = box_augmentation(flip="horizontal", scale=(0.75, 1.25), seed=3)
    dataset = dataset.map(augment)   # elements (image, targets, seeds) -> (image, targets)
"""

from __future__ import annotations

from tlmulti.choices import FLIPS
from tlmulti.errors import DataError

MIN_KEPT = 0.4  # a box keeping less of its area inside the frame is dropped
MIN_SIDE = 2.0  # pixels


def _check_scale(scale) -> tuple[float, float] | None:
    if scale is None:
        return None
    try:
        lo, hi = (float(v) for v in scale)
    except (TypeError, ValueError):
        lo = hi = -1.0
    if not 0 < lo <= hi:
        raise DataError(f"data.augment.scale must be [low, high] zoom factors with 0 < low <= high (e.g. "
                        f"[0.75, 1.25]) or null, got {scale!r}.")
    return None if lo == hi == 1.0 else (lo, hi)


def zoom_image(image, factor, tx, ty):
    """``image`` (H, W, C) resampled so that the point ``(x, y)`` moves to ``(f x + tx, f y + ty)``
    (continuous pixel coordinates); the uncovered canvas takes the image's mean colour."""
    import tensorflow as tf

    factor, tx, ty = (tf.cast(v, tf.float32) for v in (factor, tx, ty))
    x = tf.cast(image, tf.float32)
    mean = tf.reduce_mean(x, axis=[0, 1], keepdims=True)
    inv = 1.0 / factor
    # output pixel centre u + 0.5 comes from input (u + 0.5 - t) / f, in pixel-index terms
    transform = tf.stack([inv, 0.0, (0.5 - tx) * inv - 0.5, 0.0, inv, (0.5 - ty) * inv - 0.5, 0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=(x - mean)[None], transforms=tf.reshape(transform, [1, 8]), output_shape=tf.shape(image)[:2],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")[0]
    out = tf.cast(tf.clip_by_value(tf.round(out + mean), 0.0, 255.0), image.dtype)
    return tf.ensure_shape(out, image.shape)


def box_augmentation(flip: str = "horizontal", scale: tuple[float, float] | None = (0.75, 1.25), seed: int = 0):
    """A ``tf.data`` map function ``(image, targets, seeds) -> (image, targets)`` that flips and
    zooms images with their boxes, or None when ``flip`` is ``none`` and ``scale`` is None."""
    flip = flip or "none"
    if flip not in FLIPS:
        raise DataError(f"data.augment.flip must be one of {', '.join(FLIPS)}, got {flip!r}.")
    scale = _check_scale(scale)
    if flip == "none" and scale is None:
        return None
    import tensorflow as tf

    def fn(image, targets, seeds):
        def draw(offset):
            return tf.random.stateless_uniform([], seed=seeds + [seed, offset])

        shape = tf.shape(image)
        h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
        targets = tf.convert_to_tensor(targets, tf.float32)
        valid = targets[:, 4] >= 0
        x0, y0, x1, y1 = tf.unstack(targets[:, :4], axis=1)
        if flip in ("horizontal", "both"):
            do = draw(1) < 0.5
            image = tf.cond(do, lambda: tf.image.flip_left_right(image), lambda: image)
            x0, x1 = tf.where(do, w - x1, x0), tf.where(do, w - x0, x1)
        if flip in ("vertical", "both"):
            do = draw(2) < 0.5
            image = tf.cond(do, lambda: tf.image.flip_up_down(image), lambda: image)
            y0, y1 = tf.where(do, h - y1, y0), tf.where(do, h - y0, y1)
        keep = tf.ones_like(valid)
        if scale is not None:
            f = scale[0] + (scale[1] - scale[0]) * draw(3)
            tx, ty = draw(4) * (w - w * f), draw(5) * (h - h * f)  # crop window / canvas place
            image = zoom_image(image, f, tx, ty)
            x0, x1, y0, y1 = x0 * f + tx, x1 * f + tx, y0 * f + ty, y1 * f + ty
            area = (x1 - x0) * (y1 - y0)
            x0, x1 = tf.clip_by_value(x0, 0.0, w), tf.clip_by_value(x1, 0.0, w)
            y0, y1 = tf.clip_by_value(y0, 0.0, h), tf.clip_by_value(y1, 0.0, h)
            keep = ((x1 - x0) * (y1 - y0) >= MIN_KEPT * area) & (x1 - x0 >= MIN_SIDE) & (y1 - y0 >= MIN_SIDE)
        moved = tf.stack([x0, y0, x1, y1, targets[:, 4]], axis=1)
        moved = tf.where(keep[:, None], moved, -tf.ones_like(moved))
        return image, tf.where(valid[:, None], moved, targets)

    return fn
