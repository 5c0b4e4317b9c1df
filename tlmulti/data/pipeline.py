"""tf.data pipelines from in-memory examples (arrays, dicts of arrays, or strings).

:func:`make_dataset` batches examples for prediction and validation. :func:`make_epoch_dataset`
is what training reads: the order of epoch ``e`` (and the draws of paired augmentation) are a
pure function of ``(seed, e)``, so a run resumed from its checkpoint after epoch ``e`` sees
exactly the batches it would have seen without the interruption.
"""

from __future__ import annotations

import numpy as np


def _slices(x, y=None):
    import tensorflow as tf

    def as_tensor(a):
        if isinstance(a, np.ndarray) and a.dtype.kind in "OU":
            return tf.constant(a.astype(str))
        return a

    if isinstance(x, list):
        x = tuple(x)  # tf.data reads a list as one tensor, a tuple as several inputs
    x = {k: as_tensor(v) for k, v in x.items()} if isinstance(x, dict) else as_tensor(x)
    return tf.data.Dataset.from_tensor_slices(x if y is None else (x, y))


def make_dataset(x, y=None, batch_size: int = 32, shuffle: bool = False, seed: int = 0, augment=None):
    """Batched ``tf.data.Dataset`` of ``(x, y)`` (or ``x`` alone when ``y`` is None).

    Shuffling depends only on ``seed`` and the number of examples, so a cached-feature phase and
    an end-to-end phase see the same batches in the same order. ``x`` may also be a list of
    arrays (the multi-scale features a segmentation backbone outputs). ``augment`` is a function
    ``(x, y) -> (x, y)`` applied to each example before batching: augmentation that must change
    input and label together, such as flipping an image and its mask.
    """
    import tensorflow as tf

    ds = _slices(x, y)
    if shuffle:
        n = len(y) if y is not None else int(ds.cardinality())
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    if augment is not None:
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def make_epoch_dataset(x, y, batch_size: int, seed: int, epochs: int, initial_epoch: int = 0, augment=None):
    """Training batches for epochs ``initial_epoch .. epochs - 1``, one after the other.

    Each epoch shuffles with seed ``(seed, epoch)``; ``augment`` is a function
    ``(x, y, seeds) -> (x, y)`` where ``seeds`` (int32 ``[2]``: epoch and example position) seeds
    stateless random ops. Fit it with ``steps_per_epoch = ceil(n / batch_size)``.
    """
    import tensorflow as tf

    base = _slices(x, y)
    n = len(y)

    def one_epoch(epoch: int):
        ds = base.shuffle(n, seed=epoch * 1_000_003 + seed, reshuffle_each_iteration=False)
        if augment is not None:
            pair = epoch + 7919 * seed
            ds = ds.enumerate().map(
                lambda i, xy: augment(xy[0], xy[1], tf.stack([tf.constant(pair, tf.int32), tf.cast(i, tf.int32)])),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(batch_size)

    out = None
    for epoch in range(initial_epoch, max(epochs, initial_epoch + 1)):
        out = one_epoch(epoch) if out is None else out.concatenate(one_epoch(epoch))
    return out.prefetch(tf.data.AUTOTUNE)
