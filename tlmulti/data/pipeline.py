"""tf.data pipelines from examples: in-memory arrays (dicts of arrays, strings) or inputs read
by index (:class:`~tlmulti.data.lazy.FileArray` files, memory-mapped cached features).

:func:`make_dataset` batches examples for prediction and validation. :func:`make_epoch_dataset`
is what training reads: the order of epoch ``e`` (and the draws of paired augmentation) are a
pure function of ``(seed, e)``, so a run resumed from its checkpoint after epoch ``e`` sees
exactly the batches it would have seen without the interruption.

In-memory inputs are sliced from tensors (the fast path for small data). Inputs read by index
are never held whole: the pipeline shuffles example indices (the same permutation the in-memory
path draws for the same seed, so both give the same batches), then decodes each example or
gathers each batch in parallel with prefetch; memory depends on the batch size, not on the
number of examples.
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


def _parts(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _fetch(x, y, per_example: bool):
    """A function from index tensor(s) to ``x`` (or ``(x, y)``) tensors, reading lazy inputs with
    ``tf.numpy_function``; in-memory parts (labels) are gathered from tensors."""
    import tensorflow as tf

    from tlmulti.data.lazy import FileArray, is_lazy

    parts = _parts(x) + ([] if y is None else [y])  # the labels last: masks may be read from files too
    n_x = len(parts) - (y is not None)
    lazy = [i for i, a in enumerate(parts) if is_lazy(a)]
    kept = {i: tf.constant(np.asarray(a)) for i, a in enumerate(parts) if i not in lazy}

    def read(idx):
        idx = np.atleast_1d(idx)
        out = []
        for i in lazy:
            a = parts[i]
            if isinstance(a, FileArray):
                out.append(np.stack([a.load(a.items[j]) for j in idx]).astype(a.dtype, copy=False))
            else:
                out.append(np.asarray(a[np.sort(idx)][np.argsort(np.argsort(idx))]))
        return out

    def fetch(idx):
        got = tf.numpy_function(read, [idx], [tf.as_dtype(parts[i].dtype) for i in lazy], stateful=False)
        values = []
        for i, a in enumerate(parts):
            if i in kept:
                values.append(tf.gather(kept[i], idx))
            else:
                t = got[lazy.index(i)]
                shape = tuple(a.shape[1:])
                t = tf.reshape(t, shape) if per_example else tf.ensure_shape(t, (None,) + shape)
                if t.dtype == tf.float16:  # features cached at half precision: computed on as float32
                    t = tf.cast(t, tf.float32)
                values.append(t)
        xs = tuple(values[:n_x]) if isinstance(x, (list, tuple)) else values[0]
        return xs if y is None else (xs, values[n_x])

    return fetch


def _indexed(x, y, batch_size: int, order=None, augment=None, per_example: bool = False):
    """Batches of lazy ``x`` read by index: ``order`` (a dataset of indices) or 0..n-1."""
    import tensorflow as tf

    n = len(_parts(x)[0])
    ds = order if order is not None else tf.data.Dataset.range(n)
    if augment is not None or per_example:
        ds = ds.map(_fetch(x, y, per_example=True), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if augment is not None:
            ds = augment(ds)
        return ds.batch(batch_size)
    return ds.batch(batch_size).map(_fetch(x, y, per_example=False), num_parallel_calls=tf.data.AUTOTUNE,
                                    deterministic=True)


def make_dataset(x, y=None, batch_size: int = 32, shuffle: bool = False, seed: int = 0, augment=None):
    """Batched ``tf.data.Dataset`` of ``(x, y)`` (or ``x`` alone when ``y`` is None).

    Shuffling depends only on ``seed`` and the number of examples, so a cached-feature phase and
    an end-to-end phase see the same batches in the same order. ``x`` may also be a list of
    arrays (the multi-scale features a segmentation backbone outputs). ``augment`` is a function
    ``(x, y) -> (x, y)`` applied to each example before batching: augmentation that must change
    input and label together, such as flipping an image and its mask.
    """
    import tensorflow as tf

    from tlmulti.data.lazy import is_lazy

    if is_lazy(x) or is_lazy(y):
        n = len(_parts(x)[0])
        order = tf.data.Dataset.range(n)
        if shuffle:
            order = order.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        each = None if augment is None else (lambda ds: ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE))
        return _indexed(x, y, batch_size, order, each).prefetch(tf.data.AUTOTUNE)
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

    from tlmulti.data.lazy import is_lazy

    lazy = is_lazy(x) or is_lazy(y)
    n = len(y)
    base = tf.data.Dataset.range(n) if lazy else _slices(x, y)

    def one_epoch(epoch: int):
        ds = base.shuffle(n, seed=epoch * 1_000_003 + seed, reshuffle_each_iteration=False)
        pair = epoch + 7919 * seed

        def paired(d):
            return d.enumerate().map(
                lambda i, xy: augment(xy[0], xy[1], tf.stack([tf.constant(pair, tf.int32), tf.cast(i, tf.int32)])),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

        if lazy:
            return _indexed(x, y, batch_size, ds, None if augment is None else paired)
        if augment is not None:
            ds = paired(ds)
        return ds.batch(batch_size)

    out = None
    for epoch in range(initial_epoch, max(epochs, initial_epoch + 1)):
        out = one_epoch(epoch) if out is None else out.concatenate(one_epoch(epoch))
    return out.prefetch(tf.data.AUTOTUNE)


def with_class_weights(ds, class_weight: dict | None):
    """``(x, y)`` batches -> ``(x, y, weight)`` with each example's class weight (what Keras's
    ``fit(class_weight=...)`` does, for datasets it cannot map itself: a multi-worker run's)."""
    import tensorflow as tf

    if not class_weight:
        return ds
    table = tf.constant([float(class_weight.get(c, 1.0)) for c in range(max(class_weight) + 1)], tf.float32)

    def weigh(x, y):
        labels = tf.cast(y, tf.int32) if y.shape.rank == 1 else tf.argmax(y, axis=-1, output_type=tf.int32)
        return x, y, tf.gather(table, labels)

    return ds.map(weigh, num_parallel_calls=tf.data.AUTOTUNE)
