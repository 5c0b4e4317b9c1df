"""``tf.distribute`` for the trainer: the recipe's strategy, this process's place among the
workers, and each worker's share of the data.

``auto`` is MirroredStrategy when several GPUs are visible (else the default strategy),
``mirrored`` every GPU of this machine, ``tpu`` a TPU (``TPU_NAME``), and ``multi_worker``
runs one process per machine (or per port) with ``TF_CONFIG``
naming the cluster and this process's index (``tf.distribute.MultiWorkerMirroredStrategy``):

* every worker reads the same manifest and draws the same split (same seed), then keeps its shard
  of the training and validation examples (``i, i + W, i + 2W, ...``) and computes frozen-phase
  features only for them; when the examples stream from their files (``data.streaming``: past
  1 GiB of decoded inputs, or ``true``) it decodes only its own files, while a smaller set
  is decoded whole by every worker, which is faster than streaming it;
* each step trains on ``batch_size / W`` examples per worker, and gradients and metrics are
  summed across the workers, so the global batch and the logged metrics are the single-process
  ones (the order of examples differs);
* the chief (``task.type: chief``, or worker 0 when there is none) writes the run folder; the other
  workers keep their checkpoints in a temporary folder, removed when they finish, and evaluate
  nothing.

Keras 3 (3.15) cannot fit under this strategy as shipped (keras-team/keras#20585): ``fit`` reduces
the first batch and the step's scalar logs along an axis they do not have. :func:`prepare`
works around both for the models tlmulti trains.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from tlmulti.errors import RecipeError

_MULTI_WORKER = None  # one MultiWorkerMirroredStrategy per process, created before other TF work


@dataclass(frozen=True)
class Workers:
    """This process's place: ``count`` workers in all, this one ``index``; ``chief`` writes."""

    count: int = 1
    index: int = 0
    chief: bool = True
    strategy: object = None

    @property
    def several(self) -> bool:
        return self.count > 1

    def shard(self, examples):
        """This worker's examples: every ``count``-th from ``index`` (all of them alone)."""
        if not self.several or examples is None:
            return examples
        import numpy as np

        return examples.subset(np.arange(self.index, len(examples), self.count))

    def feed(self, make, batch_size: int, repeat: bool = False):
        """``make(batch_size) -> tf.data.Dataset`` as ``fit`` reads it: alone, that dataset; with
        several workers, each worker's dataset at the per-worker batch size (and repeated for
        training, so every worker takes the same number of steps however its shard divides)."""
        if not self.several:
            return make(batch_size)

        def per_worker(context):
            ds = make(context.get_per_replica_batch_size(batch_size))
            return ds.repeat() if repeat else ds

        return self.strategy.distribute_datasets_from_function(per_worker)


def _cluster() -> dict:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise RecipeError(
            "distribute: multi_worker needs TF_CONFIG in the environment of every worker, e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}; '
            "use distribute: mirrored for several GPUs on one machine.")
    try:
        config = json.loads(raw)
        workers = list(config["cluster"].get("chief", [])) + list(config["cluster"]["worker"])
        task = config["task"]
        kind, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as exc:
        raise RecipeError(f"TF_CONFIG is not a cluster description ({exc}); it needs cluster.worker (a list of "
                          "host:port) and task.type / task.index for this process.") from None
    if kind not in ("chief", "worker"):
        raise RecipeError(f"TF_CONFIG task.type '{kind}' is not a trainer role; use 'worker' (or 'chief').")
    return {"count": len(workers), "kind": kind, "index": index, "has_chief": bool(config["cluster"].get("chief"))}


def get_strategy(name: str):
    """``auto``: MirroredStrategy over all GPUs when there are several, else the default;
    ``multi_worker``: the process's MultiWorkerMirroredStrategy (created once)."""
    import tensorflow as tf

    global _MULTI_WORKER
    if name == "multi_worker":
        if _MULTI_WORKER is None:
            _cluster()
            try:
                _MULTI_WORKER = tf.distribute.MultiWorkerMirroredStrategy()
            except RuntimeError as exc:
                raise RecipeError(f"Could not start the multi-worker strategy ({exc}). It must be created before "
                                  "TensorFlow runs anything in the process: start each worker with "
                                  "'tlmulti run RECIPE' (or call tlmulti.train first).") from None
            _patch_keras()
        return _MULTI_WORKER
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "tpu":
        return _tpu_strategy()
    if name == "auto" and len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _tpu_strategy():
    """TPUStrategy over the TPU that ``TPU_NAME`` names (or a Cloud TPU VM's own chips, with
    ``TPU_NAME=local``); the input pipeline runs on the host."""
    import tensorflow as tf

    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=os.environ.get("TPU_NAME"))
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as exc:
        raise RecipeError(f"distribute: tpu found no TPU ({str(exc).strip().splitlines()[0]}). Set TPU_NAME to "
                          "the TPU's name (or 'local' on a Cloud TPU VM), or use distribute: auto.") from None
    return tf.distribute.TPUStrategy(resolver)


def workers(name: str) -> Workers:
    """Where this process stands for ``distribute: name`` (one worker unless ``multi_worker``)."""
    if name != "multi_worker":
        return Workers()
    strategy = get_strategy(name)
    info = _cluster()
    chief = info["kind"] == "chief" or (not info["has_chief"] and info["index"] == 0)
    index = info["index"] + (1 if info["has_chief"] and info["kind"] == "worker" else 0)
    return Workers(count=info["count"], index=index, chief=chief, strategy=strategy)


def prepare(model, workers: Workers):
    """Let ``model`` fit under a multi-worker strategy: it takes the strategy from the scope it is
    called in (the trainer's) instead of the one it was built in, which skips Keras's eager first
    batch reduction; ``predict`` outside that scope then runs on this worker alone."""
    if workers.several:
        model._distribute_strategy = None
    return model


def _patch_keras() -> None:
    """Reduce a step's scalar logs across workers without an axis (Keras 3 passes ``axis=0``)."""
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = tf_trainer.reduce_per_replica
    if getattr(original, "_tlmulti", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
            def one(v):
                local = strategy.experimental_local_results(v)[0] if tf_trainer._is_per_replica_instance(v) else v
                return strategy.reduce("MEAN", v, axis=None if len(local.shape) == 0 else 0)

            return tree.map_structure(one, values)
        return original(values, strategy, reduction)

    reduce_per_replica._tlmulti = True
    tf_trainer.reduce_per_replica = reduce_per_replica
