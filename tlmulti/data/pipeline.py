"""tf.data pipelines from in-memory examples (arrays, dicts of arrays, or strings)."""

from __future__ import annotations

import numpy as np


def make_dataset(x, y=None, batch_size: int = 32, shuffle: bool = False, seed: int = 0, augment=None):
    """Batched ``tf.data.Dataset`` of ``(x, y)`` (or ``x`` alone when ``y`` is None).

    Shuffling depends only on ``seed`` and the number of examples, so a cached-feature phase and
    an end-to-end phase see the same batches in the same order. ``x`` may also be a list of
    arrays (the multi-scale features a segmentation backbone outputs). ``augment`` is a function
    ``(x, y) -> (x, y)`` applied to each example before batching: augmentation that must change
    input and label together, such as flipping an image and its mask.
    """
    import tensorflow as tf

    def as_tensor(a):
        if isinstance(a, np.ndarray) and a.dtype.kind in "OU":
            return tf.constant(a.astype(str))
        return a

    if isinstance(x, list):
        x = tuple(x)  # tf.data reads a list as one tensor, a tuple as several inputs
    x = {k: as_tensor(v) for k, v in x.items()} if isinstance(x, dict) else as_tensor(x)
    ds = tf.data.Dataset.from_tensor_slices(x if y is None else (x, y))
    if shuffle:
        n = len(y) if y is not None else int(ds.cardinality())
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    if augment is not None:
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
