"""The frozen phase's backbone features: read from the disk cache or computed once, with progress.

:func:`frozen_features` gives, for each set of examples (training, validation), what the
frozen feature model outputs, as memory-mapped arrays from :mod:`tlmulti.data.cache` (or in
memory with ``cache.disk: false``). The cache key is made of the feature model's identity
(backbone name and weights source, the hash of every weight it holds, each layer's
configuration, input and output shapes, precision policy) and the inputs' fingerprint, plus
what the caller adds (:mod:`tlmulti.training.cut` adds the cut point).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time

import numpy as np

from tlmulti.data import cache as disk


def _without_names(value):
    if isinstance(value, dict):
        return {k: _without_names(v) for k, v in value.items() if k != "name"}
    if isinstance(value, (list, tuple)):
        return [_without_names(v) for v in value]
    return value


def model_fingerprint(model) -> dict:
    """What determines a model's outputs for given inputs: a hash of every weight (in order, with
    shapes) and of every layer's configuration (names left out: Keras numbers them per process)."""
    import keras

    weights = hashlib.sha256()
    for v in model.weights:
        a = np.asarray(keras.ops.convert_to_numpy(v))
        weights.update(repr((a.shape, a.dtype.str)).encode())
        weights.update(np.ascontiguousarray(a).data)
    layers = hashlib.sha256()
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.Model):
            continue
        try:
            config = _without_names(layer.get_config())
        except Exception:  # a layer without get_config: its class still counts
            config = None
        layers.update(json.dumps([type(layer).__name__, config], sort_keys=True, default=str).encode())
    shapes = [list(t.shape) for t in (model.inputs + model.outputs)]
    return {"weights_sha256": weights.hexdigest(), "layers_sha256": layers.hexdigest(), "shapes": shapes,
            "policy": keras.config.dtype_policy().name}


def example_bytes(outputs, dtype: str) -> int:
    """Bytes one example takes in a cache entry of ``outputs`` (Keras tensors of known shape):
    integer and boolean outputs (a padding mask) in their own dtype, the others as ``dtype``."""
    total = 0
    for o in outputs:
        own = str(o.dtype)
        stored = own if own.startswith(("int", "uint", "bool")) else dtype
        total += int(np.prod(o.shape[1:])) * np.dtype(stored).itemsize
    return total


class DoesNotFit(Exception):
    """A cache entry that must be on disk would not fit there (``need``: its bytes)."""

    def __init__(self, need: int):
        super().__init__(need)
        self.need = need


def frozen_features(feature_model, example_sets, recipe, verbose: int = 1, local: bool = False,
                    key_extra: dict | None = None, must_fit: bool = False):
    """``(features per example set, info)``: each element is the backbone output (an array, or a
    list of arrays for several outputs) for the matching set's ``x``; ``info`` says for each
    whether it was read from the cache (``hits``), its key (``keys``) and the seconds spent.
    ``local``: call the model on this worker alone (a multi-worker run: each worker computes its
    own shard's). ``key_extra`` joins the cache key. An entry that does not fit on the disk is
    kept in memory for this run, or, with ``must_fit``, raises :class:`DoesNotFit`."""
    predictor = feature_model
    if local:
        import tensorflow as tf

        predictor = _Local(tf.function(lambda batch: feature_model(batch, training=False), reduce_retracing=True))
    from tlmulti.data.lazy import fingerprint_array
    from tlmulti.data.pipeline import make_dataset

    t0 = time.perf_counter()
    model_id = None
    results, hits, keys = [], [], []
    for examples in example_sets:
        n = len(examples)
        if n == 0:
            results.append(None)
            hits.append(False)
            keys.append(None)
            continue
        if not recipe.cache.disk:
            results.append(_in_memory(predictor, make_dataset(examples.x, None, recipe.data.batch_size), n, verbose))
            hits.append(False)
            keys.append(None)
            continue
        if model_id is None:
            model_id = {"backbone": recipe.backbone.name, "weights": recipe.backbone.weights,
                        "output_layer": recipe.backbone.output_layer, "model": model_fingerprint(feature_model),
                        **(key_extra or {})}
        description = {**model_id, "task": recipe.task, "inputs": fingerprint_array(examples.x), "examples": n,
                       "dtype": recipe.cache.dtype}
        key = disk.make_key(description)
        keys.append(key)
        found = disk.load(key)
        if found is not None:
            if verbose:
                print(f"Backbone features of {n} examples read from the cache ({disk.root() / key})", flush=True)
            results.append(found if len(found) > 1 else found[0])
            hits.append(True)
            continue
        ds = make_dataset(examples.x, None, recipe.data.batch_size)
        need = n * example_bytes(feature_model.outputs, recipe.cache.dtype)
        if not disk.fits(need):
            if must_fit:
                raise DoesNotFit(need)
            print(f"The feature cache needs {need / 2**30:.1f} GiB and the disk of '{disk.root()}' has less free "
                  "(with 1 GiB to spare): keeping this run's features in memory instead.", flush=True)
            results.append(_in_memory(predictor, ds, n, verbose))
            hits.append(False)
            continue
        if verbose:
            print(f"Computing backbone features of {n} examples, kept in {disk.root() / key}", flush=True)
        writer = disk.Writer(key, n, recipe.cache.dtype)
        try:
            _each_batch(predictor, ds, n, writer.add, verbose)
            found = writer.finish({**description, "backbone": recipe.backbone.name})
        except BaseException:
            writer.abort()
            raise
        results.append(found if len(found) > 1 else found[0])
        hits.append(False)
    return results, {"hits": hits, "keys": keys, "seconds": time.perf_counter() - t0}


class _Local:
    """``predict_on_batch`` by calling the model, without Keras's cross-worker gathering."""

    def __init__(self, fn):
        self.fn = fn

    def predict_on_batch(self, batch):
        out = self.fn(batch)
        return [t.numpy() for t in out] if isinstance(out, (list, tuple)) else out.numpy()


class NotPerExample(Exception):
    """A feature model output does not hold one row per example (a model that folds windows of
    each example into the batch, say)."""


def _each_batch(model, ds, n: int, sink, verbose: int) -> None:
    import keras

    bar = keras.utils.Progbar(n, verbose=1 if sys.stdout.isatty() else 2, unit_name="example") if verbose else None
    done = 0
    for batch in ds:
        out = model.predict_on_batch(batch)
        rows = len(keras.tree.flatten(batch)[0])
        for k, o in enumerate(out if isinstance(out, (list, tuple)) else [out]):
            if len(o) != rows:
                raise NotPerExample(f"output {k} has {len(o)} rows for a batch of {rows} examples")
        sink(out)
        done += len(out[0] if isinstance(out, (list, tuple)) else out)
        if bar is not None:
            bar.update(done)


def _in_memory(model, ds, n: int, verbose: int):
    chunks = []
    _each_batch(model, ds, n, chunks.append, verbose)
    if isinstance(chunks[0], (list, tuple)):
        return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]
    return np.concatenate(chunks)
