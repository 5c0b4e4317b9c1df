"""Unsupervised domain adaptation in the shared trainer: AdaBN, DANN and CORAL.

All three use unlabelled target data (``adaptation.target_data``, read by the task's own reader
with labels ignored) and work for every task, because they act on the backbone's features:

* ``adabn`` (Li et al. 2016): after training, every BatchNorm layer's moving mean and variance
  are re-estimated on the target data (a cumulative average over target batches). Nothing else
  changes; the saved model is the adapted one. Needs BatchNorm layers somewhere in the model.
* ``dann`` (Ganin et al. 2016): a small domain classifier on pooled backbone features, behind a
  gradient-reversal layer, trained jointly with the task head in the phases that train the
  backbone. The reversal weight ramps from 0 to ``adaptation.weight`` with
  ``2 / (1 + exp(-10 p)) - 1`` over each phase (``schedule: constant`` keeps it fixed).
* ``coral`` (Sun & Saenko 2016, Deep CORAL): adds ``weight * ||C_s - C_t||_F^2 / (4 d^2)``, the
  distance between source and target feature covariances, to the task loss in the phases that
  train the backbone.

Phases with a frozen backbone are unchanged (their cached features cannot move), so DANN and
CORAL need at least one phase that unfreezes a group.

Example recipe section::

    adaptation:
      method: coral
      target_data: data/hospital_b/       # unlabelled images of the target domain
      weight: 1.0
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from tlmulti.errors import RecipeError, TlmultiError
from tlmulti.training.freezing import all_sublayers, is_batchnorm


@keras.saving.register_keras_serializable(package="tlmulti")
class GradientReversal(keras.layers.Layer):
    """Identity on the forward pass; multiplies the gradient by ``-scale`` on the way back."""

    def __init__(self, scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = self.add_weight(shape=(), initializer=keras.initializers.Constant(scale),
                                     trainable=False, name="scale")

    def call(self, x):
        import tensorflow as tf

        scale = ops.convert_to_tensor(self.scale)

        @tf.custom_gradient
        def reverse(t):
            return tf.identity(t), lambda dy: -scale * dy

        return reverse(x)

    def get_config(self):
        config = super().get_config()
        config["scale"] = float(np.array(self.scale))
        return config


def coral_loss(source, target):
    """Deep CORAL: squared Frobenius distance of feature covariances over ``4 d^2``."""
    d = ops.cast(ops.shape(source)[-1], "float32")

    def cov(x):
        n = ops.cast(ops.shape(x)[0], "float32")
        centered = x - ops.mean(x, axis=0, keepdims=True)
        return ops.matmul(ops.transpose(centered), centered) / ops.maximum(n - 1.0, 1.0)

    diff = cov(ops.cast(source, "float32")) - cov(ops.cast(target, "float32"))
    return ops.sum(diff * diff) / (4.0 * d * d)


def pool_features(features):
    """One vector per example from any backbone output: pooled output of a dict, the deepest of a
    list of feature maps, spatial/temporal average of a map or sequence."""
    if isinstance(features, dict):
        if "pooled_output" in features:
            return features["pooled_output"]
        if "sequence_output" in features:
            return ops.mean(features["sequence_output"], axis=1)
        features = list(features.values())[0]
    if isinstance(features, (list, tuple)):
        features = features[-1]
    while len(features.shape) > 2:
        features = ops.mean(features, axis=1)
    return features


def ramp(progress: float) -> float:
    """DANN's reversal-weight ramp, 0 at the start of a phase to 1 at its end."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


class AdaptationModel(keras.Model):
    """Task model plus an alignment loss between source and target features (DANN or CORAL).

    ``align(f_source, f_target)`` returns the alignment loss, added to the task loss. Trained
    on batches ``((x_source, y_source), x_target)``; predicts and validates like the task model
    alone.
    """

    def __init__(self, joint, align, align_name: str, align_layers=(), **kwargs):
        super().__init__(**kwargs)
        self.joint = joint
        self.align = align
        self.align_layers = list(align_layers)  # tracked, so their weights train
        self.align_tracker = keras.metrics.Mean(name=f"{align_name}_loss")

    def call(self, x, training=False):
        return self.joint(x, training=training)[0]

    def train_step(self, data):
        import tensorflow as tf

        (x_s, y_s), x_t = data
        with tf.GradientTape() as tape:
            y_pred, f_s = self.joint(x_s, training=True)
            _, f_t = self.joint(x_t, training=True)
            loss = self.compute_loss(x=x_s, y=y_s, y_pred=y_pred)
            align = self.align(f_s, f_t)
            total = loss + align
        variables = self.trainable_variables
        grads = tape.gradient(total, variables)
        self.optimizer.apply(grads, variables)
        self.align_tracker.update_state(align)
        for metric in self.metrics:
            if metric is self.align_tracker:
                continue
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y_s, y_pred)
        return self.get_metrics_result()

    @property
    def metrics(self):
        return super().metrics + [self.align_tracker]


class _RampCallback(keras.callbacks.Callback):
    def __init__(self, reversal, weight: float, total_steps: int, schedule: str):
        super().__init__()
        self.reversal, self.weight, self.total, self.schedule = reversal, weight, max(total_steps, 1), schedule
        self.step = 0

    def on_train_batch_begin(self, batch, logs=None):
        p = min(self.step / self.total, 1.0)
        value = self.weight * (ramp(p) if self.schedule == "ramp" else 1.0)
        self.reversal.scale.assign(value)
        self.step += 1


class Adapter:
    """One adaptation method, as the trainer calls it: ``wrap`` a phase's model, ``dataset`` adds
    target batches, ``callbacks`` per phase, ``finish`` after the last phase. Subclasses are
    registered by name (``tlmulti.registry.register_adaptation``); ``trains_backbone`` says that
    the method acts only in phases that unfreeze a group."""

    name = ""
    trains_backbone = False
    needs_features = False

    def __init__(self, recipe, task):
        config = recipe.adaptation
        if not config.target_data:
            raise RecipeError("Key 'adaptation.target_data' is required with adaptation.method "
                              f"'{config.method}': give unlabelled target-domain data (--target-data).")
        self.method = config.method
        self.weight = config.weight
        self.schedule = config.schedule
        self.target = task.read(config.target_data, classes=None, labelled=False)
        if len(self.target) == 0:
            raise TlmultiError(f"Target data '{config.target_data}' has no examples.")
        self.batch_size = recipe.data.batch_size

    def wrap(self, parts, backbone_training, recipe):
        return parts.assemble(backbone_training=backbone_training, augment=True)

    def dataset(self, source_ds, recipe, seed: int):
        return source_ds

    def callbacks(self, steps_per_epoch: int, epochs: int):
        return []

    def finish(self, parts, recipe):
        pass


class AdaBN(Adapter):
    """AdaBN: after training, every BatchNorm layer's moving statistics come from target data."""

    def finish(self, parts, recipe):
        adapt_batchnorm(parts, self.target.x, self.batch_size)


class _FeatureAlignment(Adapter):
    """Methods that add a loss between pooled source and target features while the backbone
    trains: the phase model also returns the features, and target batches ride along."""

    trains_backbone = True

    def alignment(self, dim: int):
        """``(align(f_s, f_t) -> loss, layers that train with it)``."""
        raise NotImplementedError

    def wrap(self, parts, backbone_training, recipe):
        feats = parts.features(parts.inputs, training=backbone_training, augment=True)
        joint = keras.Model(parts.inputs, [parts.head(feats), pool_features(feats)], name="joint")
        align, layers = self.alignment(joint.outputs[1].shape[-1])
        return AdaptationModel(joint, align, self.method, layers, name="adapted")

    def dataset(self, source_ds, recipe, seed: int):
        import tensorflow as tf

        from tlmulti.data.pipeline import make_dataset

        target = make_dataset(self.target.x, None, self.batch_size, shuffle=True, seed=seed).repeat()
        return tf.data.Dataset.zip((source_ds, target))


class CORAL(_FeatureAlignment):
    """Deep CORAL: ``weight`` times the covariance distance of source and target features."""

    def alignment(self, dim):
        return (lambda f_s, f_t: self.weight * coral_loss(f_s, f_t)), []


class DANN(_FeatureAlignment):
    """DANN: a domain classifier on pooled features behind a gradient-reversal layer whose weight
    ramps to ``adaptation.weight`` over each phase. The classifier is built once and shared by
    the phases that train the backbone."""

    domain_head = None
    reversal = None

    def alignment(self, dim):
        if self.domain_head is None:
            self.reversal = GradientReversal(0.0, name="gradient_reversal")
            self.domain_head = keras.Sequential([
                keras.Input((dim,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(1),
            ], name="domain_classifier")

        def align(f_s, f_t):
            logits = self.domain_head(self.reversal(ops.concatenate([f_s, f_t], axis=0)), training=True)
            labels = ops.concatenate([ops.zeros((ops.shape(f_s)[0], 1)), ops.ones((ops.shape(f_t)[0], 1))], 0)
            return ops.mean(keras.losses.binary_crossentropy(labels, logits, from_logits=True))

        return align, [self.domain_head, self.reversal]

    def callbacks(self, steps_per_epoch: int, epochs: int):
        return [_RampCallback(self.reversal, self.weight, steps_per_epoch * epochs, self.schedule)]


def adapt_batchnorm(parts, target_x, batch_size: int = 32) -> int:
    """Replace every BatchNorm layer's moving statistics by their average over target batches.

    Only moving means and variances change. Returns the number of BatchNorm layers adapted.
    """
    from tlmulti.data.pipeline import make_dataset

    model = parts.assemble(backbone_training=None, augment=False)
    layers = [l for l in all_sublayers(model) if is_batchnorm(l)]
    if not layers:
        raise TlmultiError(
            "AdaBN needs BatchNorm layers, and this model has none (e.g. VGG16 backbones); "
            "use adaptation.method dann or coral instead."
        )
    others = [v for v in model.weights if not any(v is w for l in layers for w in (l.moving_mean, l.moving_variance))]
    before = [np.array(v) for v in others]
    saved = [(l.trainable, l.momentum) for l in layers]
    for l in layers:
        l.trainable = True
    try:
        for k, batch in enumerate(make_dataset(target_x, None, batch_size)):
            for l in layers:
                l.momentum = k / (k + 1.0)  # cumulative average over batches
            model(batch, training=True)
    finally:
        for l, (trainable, momentum) in zip(layers, saved):
            l.trainable, l.momentum = trainable, momentum
        for v, value in zip(others, before):
            v.assign(value)  # a training-mode pass may touch nothing else; make sure of it
    return len(layers)


def make_adapter(recipe, task, parts):
    """The adapter registered for ``recipe.adaptation.method``, or None for ``none``."""
    from tlmulti import registry

    method = recipe.adaptation.method
    spec = registry.get_adaptation(method)
    if not spec.implementation:
        return None
    cls = registry.resolve(spec.implementation)
    if cls.trains_backbone:
        from tlmulti.training.freezing import resolve_unfreeze

        if not any(resolve_unfreeze(p.unfreeze, list(parts.groups)) for p in recipe.phases if p.epochs):
            raise RecipeError(
                f"adaptation.method '{method}' acts in phases that train the backbone, and no phase "
                "unfreezes a layer group; add a phase with unfreeze (e.g. top:2)."
            )
    return cls(recipe, task)
