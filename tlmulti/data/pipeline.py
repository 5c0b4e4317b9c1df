"""tf.data pipelines from examples: in-memory arrays (dicts of arrays, strings) or inputs read
by index (:class:`~tlmulti.data.lazy.FileArray` files, memory-mapped cached features).

:func:`make_dataset` batches examples for prediction and validation. :func:`make_epoch_dataset`
is what training reads: the order of epoch ``e`` (and the draws of paired augmentation) are a
pure function of ``(seed, e)``, so a run resumed from its checkpoint after epoch ``e`` sees
exactly the batches it would have seen without the interruption.

Training reads every input by index: each epoch shuffles the indices with seed ``(seed,
epoch)``, and the batches are gathered from in-memory arrays (held once, however many epochs) or
decoded from files in parallel with prefetch, so in-memory and streamed inputs give the same
batches and memory depends on the batch size, not on the number of epochs (nor, for streamed
inputs, on the number of examples). :func:`make_dataset` slices in-memory arrays directly, or
reads them by index too when given ``indices``.
"""

from __future__ import annotations

import numpy as np


def _as_tensor(a):
    import tensorflow as tf

    if isinstance(a, np.ndarray) and a.dtype.kind in "OU":
        return tf.constant(a.astype(str))
    return tf.constant(a)


def _slices(x, y=None):
    import tensorflow as tf

    def as_tensor(a):
        if isinstance(a, np.ndarray) and a.dtype.kind in "OU":
            return tf.constant(a.astype(str))
        return a

    def structure(v):
        if isinstance(v, list):
            v = tuple(v)  # tf.data reads a list as one tensor, a tuple as several parts
        if isinstance(v, dict):
            return {k: as_tensor(a) for k, a in v.items()}
        return tuple(as_tensor(a) for a in v) if isinstance(v, tuple) else as_tensor(v)

    return tf.data.Dataset.from_tensor_slices(structure(x) if y is None else (structure(x), structure(y)))


def _parts(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _flat(v) -> tuple[list | None, list]:
    """``(dict keys or None, arrays)`` of inputs or targets: one array, a list / tuple or a dict."""
    if isinstance(v, dict):
        keys = sorted(v)
        return keys, [v[k] for k in keys]
    return None, _parts(v)


def _unflat(v, keys, values):
    """The structure of ``v`` (see :func:`_flat`) around tensors ``values``."""
    if keys:
        return dict(zip(keys, values))
    return tuple(values) if isinstance(v, (list, tuple)) else values[0]


def _length(v) -> int:
    return len(_flat(v)[1][0])


def _large_array(a) -> bool:
    """An array (numbers or texts) read with NumPy in the pipeline rather than embedded as a
    tensor: a graph constant would be copied into every epoch's part of the dataset."""
    if not isinstance(a, np.ndarray):
        return False
    if a.dtype.kind in "OU":
        return len(a) > 1000 and sum(len(str(t)) for t in a.reshape(-1)) > (1 << 20)
    return a.dtype.kind in "biuf" and a.nbytes > (1 << 20)


def _strings(values) -> np.ndarray:
    return np.array([str(v).encode("utf-8", "surrogatepass") for v in values], dtype=object)


def _tf_dtype(a):
    import tensorflow as tf

    return tf.string if np.dtype(a.dtype).kind in "OUS" else tf.as_dtype(a.dtype)


def _read_dtype(a):
    """The dtype :func:`_fetch` reads ``a`` as: float16 arrays (the feature cache) become float32
    in NumPy, so no half-precision tensor reaches TensorFlow (whose oneDNN build logs an error for
    one on CPUs without AVX-512)."""
    import tensorflow as tf

    return tf.float32 if np.dtype(a.dtype) == np.float16 else _tf_dtype(a)


def _fetch(x, y, per_example: bool):
    """A function from index tensor(s) to ``x`` (or ``(x, y)``) tensors, reading lazy inputs with
    ``tf.numpy_function`` (large in-memory arrays too); small in-memory parts (labels) are gathered
    from tensors. Targets may be structured like inputs (a dict of arrays, say boxes and their
    classes), one row per example in each array."""
    import tensorflow as tf

    from tlmulti.data.lazy import FileArray, is_lazy

    keys, x_parts = _flat(x)
    y_keys, y_parts = _flat(y) if y is not None else (None, [])
    parts = x_parts + y_parts  # targets last
    n_x = len(x_parts)
    lazy = [i for i, a in enumerate(parts) if is_lazy(a) or _large_array(a)]
    kept = {i: _as_tensor(np.asarray(a)) for i, a in enumerate(parts) if i not in lazy}

    def read(idx):
        idx = np.atleast_1d(idx)
        out = []
        for i in lazy:
            a = parts[i]
            if isinstance(a, FileArray):
                values = [a.load(a.items[j]) for j in idx]
                out.append(_strings(values) if a.dtype == object else np.stack(values).astype(a.dtype, copy=False))
            elif a.dtype.kind in "OU":
                out.append(_strings(a[idx]))
            elif not isinstance(a, np.memmap):
                out.append(a[idx])
            else:
                out.append(np.asarray(a[np.sort(idx)][np.argsort(np.argsort(idx))]))
            if out[-1].dtype == np.float16:  # features cached at half precision: computed on as float32
                out[-1] = out[-1].astype(np.float32)
        return out

    def fetch(idx):
        got = tf.numpy_function(read, [idx], [_read_dtype(parts[i]) for i in lazy], stateful=False) if lazy else []
        values = []
        for i, a in enumerate(parts):
            if i in kept:
                values.append(tf.gather(kept[i], idx))
            else:
                t = got[lazy.index(i)]
                shape = tuple(a.shape[1:])
                values.append(tf.reshape(t, shape) if per_example else tf.ensure_shape(t, (None,) + shape))
        xs = _unflat(x, keys, values[:n_x])
        return xs if y is None else (xs, _unflat(y, y_keys, values[n_x:]))

    return fetch


def _indexed(x, y, batch_size: int, order=None, augment=None, per_example: bool = False):
    """Batches of lazy ``x`` read by index: ``order`` (a dataset of indices) or 0..n-1."""
    import tensorflow as tf

    n = _length(x)
    ds = order if order is not None else tf.data.Dataset.range(n)
    if augment is not None or per_example:
        ds = ds.map(_fetch(x, y, per_example=True), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if augment is not None:
            ds = augment(ds)
        return ds.batch(batch_size)
    return ds.batch(batch_size).map(_fetch(x, y, per_example=False), num_parallel_calls=tf.data.AUTOTUNE,
                                    deterministic=True)


def make_dataset(x, y=None, batch_size: int = 32, shuffle: bool = False, seed: int = 0, augment=None,
                 indices=None):
    """Batched ``tf.data.Dataset`` of ``(x, y)`` (or ``x`` alone when ``y`` is None).

    Shuffling depends only on ``seed`` and the number of examples, so a cached-feature phase and
    an end-to-end phase see the same batches in the same order. ``x`` may also be a list of
    arrays (the multi-scale features a segmentation backbone outputs). ``augment`` is a function
    ``(x, y) -> (x, y)`` applied to each example before batching: augmentation that must change
    input and label together, such as flipping an image and its mask. ``indices``: only the
    examples at these positions, in this order, read by index as training reads them (large
    in-memory arrays with NumPy batch by batch, see :func:`_fetch`, never copied whole into the
    dataset).
    """
    import tensorflow as tf

    from tlmulti.data.lazy import is_lazy

    if indices is not None or is_lazy(x) or is_lazy(y):
        n = _length(x) if indices is None else len(indices)
        order = tf.data.Dataset.range(n) if indices is None else \
            tf.data.Dataset.from_tensor_slices(np.asarray(indices, dtype=np.int64))
        if shuffle:
            order = order.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        each = None if augment is None else (lambda ds: ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE))
        return _indexed(x, y, batch_size, order, each).prefetch(tf.data.AUTOTUNE)
    ds = _slices(x, y)
    if shuffle:
        n = _length(y) if y is not None else int(ds.cardinality())
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    if augment is not None:
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


class Views:
    """Training inputs with ``views`` views of each example (the flips of an image), view-major:
    row ``v * n + i`` of ``rows`` is view ``v`` of example ``i``, view 0 the example as it is.
    :func:`make_epoch_dataset` reads one view of each example per epoch, drawn at random.
    ``targets``: the targets of each view, in the same order, where they change with the view
    (a mask flipped with its image); None: each view has its example's targets."""

    def __init__(self, rows, views: int, targets=None):
        if _length(rows) % views:
            raise ValueError(f"{_length(rows)} rows are not {views} views of the same examples")
        if targets is not None and _length(targets) != _length(rows):
            raise ValueError(f"{_length(targets)} targets for {_length(rows)} views")
        self.rows, self.views, self.targets = rows, int(views), targets

    def __len__(self) -> int:
        return _length(self.rows) // self.views


def _tiled(y, times: int):
    """Targets ``y`` (see :func:`_flat`) repeated ``times`` times along the examples."""
    keys, parts = _flat(y)
    return _unflat(y, keys, [np.concatenate([np.asarray(a)] * times) for a in parts])


def make_epoch_dataset(x, y, batch_size: int, seed: int, epochs: int, initial_epoch: int = 0, augment=None):
    """Training batches for epochs ``initial_epoch .. epochs - 1``, one after the other.

    Each epoch shuffles example indices with seed ``(seed, epoch)``; ``augment`` is a function
    ``(x, y, seeds) -> (x, y)`` where ``seeds`` (int32 ``[2]``: epoch and example position) seeds
    stateless random ops. Fit it with ``steps_per_epoch = ceil(n / batch_size)``. Every epoch
    reads by index (:func:`_fetch`: large arrays with NumPy, so they are held once however many
    epochs there are), and in-memory and streamed inputs give the same batches.

    ``x`` may be :class:`Views`: each epoch reads, for example ``i``, the view drawn uniformly by
    a stateless random op seeded with ``(seed, epoch)`` and ``i``, so a resumed run draws the same
    views; the targets are read at ``i``, or, where the view has its own (``Views.targets``), at
    the view's row.
    """
    import tensorflow as tf

    n = _length(y)
    views = 1
    if isinstance(x, Views):  # the targets of row v * n + i: those of example i, or of its view
        x, views, y = x.rows, x.views, (_tiled(y, x.views) if x.targets is None else x.targets)
    base = tf.data.Dataset.range(n)

    def one_epoch(epoch: int):
        ds = base.shuffle(n, seed=epoch * 1_000_003 + seed, reshuffle_each_iteration=False)
        pair = epoch + 7919 * seed
        if views > 1:
            drawn = epoch * 1_000_003 + 104_729 * seed + 1

            def view_row(i):
                seeds = tf.stack([tf.constant(drawn, tf.int64), i])
                v = tf.random.stateless_uniform([], seeds, minval=0, maxval=views, dtype=tf.int64)
                return i + n * v

            ds = ds.map(view_row)

        def paired(d):
            return d.enumerate().map(
                lambda i, xy: augment(xy[0], xy[1], tf.stack([tf.constant(pair, tf.int32), tf.cast(i, tf.int32)])),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

        return _indexed(x, y, batch_size, ds, None if augment is None else paired)

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
