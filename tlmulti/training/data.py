"""tf.data pipelines from in-memory examples (arrays, dicts of arrays, or strings)."""

from __future__ import annotations

import numpy as np


def make_dataset(x, y=None, batch_size: int = 32, shuffle: bool = False, seed: int = 0):
    """Batched ``tf.data.Dataset`` of ``(x, y)`` (or ``x`` alone when ``y`` is None).

    Shuffling depends only on ``seed`` and the number of examples, so a cached-feature phase and
    an end-to-end phase see the same batches in the same order.
    """
    import tensorflow as tf

    def as_tensor(a):
        if isinstance(a, np.ndarray) and a.dtype.kind in "OU":
            return tf.constant(a.astype(str))
        return a

    x = {k: as_tensor(v) for k, v in x.items()} if isinstance(x, dict) else as_tensor(x)
    ds = tf.data.Dataset.from_tensor_slices(x if y is None else (x, y))
    if shuffle:
        n = len(y) if y is not None else int(ds.cardinality())
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
