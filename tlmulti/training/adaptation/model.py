"""The Keras model that the training methods fit on batches of labelled source and unlabelled
target examples, and its two callbacks: the ramped strength of the target loss, and the guard
on source validation."""

from __future__ import annotations

import keras

from tlmulti.training.domain import batchnorm_layers, ramp


class AdaptationModel(keras.Model):
    """Task model trained on batches ``((x_source, y_source), x_target)`` with the task loss on
    the source plus ``strength`` times the method's ``target_loss``; predicts and validates like
    the task model alone. BatchNorm moving statistics follow the source batches only."""

    def __init__(self, joint, method, extra_layers=(), **kwargs):
        super().__init__(**kwargs)
        self.joint = joint
        self.method = method
        self.extra_layers = list(extra_layers)  # tracked, so their weights train
        self.strength = keras.Variable(0.0, trainable=False, name="strength")
        self.target_tracker = keras.metrics.Mean(name=f"{method.name}_loss")
        # moving statistics that only source batches may update (see train_step)
        self.source_statistics = [v for l in batchnorm_layers(joint) for v in (l.moving_mean, l.moving_variance)]

    def call(self, x, training=False):
        return self.joint(x, training=training)[0]

    def train_step(self, data):
        import tensorflow as tf

        (x_s, y_s), x_t = data
        with tf.GradientTape() as tape:
            y_pred, f_s = self.joint(x_s, training=True)
            # the target pass normalises with its own batch statistics, but BatchNorm layers that
            # train keep the source's moving statistics: a source/target mixture would shift
            # what the model computes on source data (and what the guard measures)
            kept = [tf.identity(v) for v in self.source_statistics]
            with tf.control_dependencies(kept):
                y_t, f_t = self.joint(x_t, training=True)
            with tf.control_dependencies([y_t, f_t]):
                for v, value in zip(self.source_statistics, kept):
                    v.assign(value)
            loss = self.compute_loss(x=x_s, y=y_s, y_pred=y_pred)
            extra = self.method.target_loss(y_pred, f_s, y_t, f_t, self.strength)
            total = loss + extra
        variables = self.trainable_variables
        self.optimizer.apply(tape.gradient(total, variables), variables)
        self.target_tracker.update_state(extra)
        for metric in self.metrics:
            if metric is self.target_tracker:
                continue
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y_s, y_pred)
        return self.get_metrics_result()

    def test_step(self, data):
        logs = super().test_step(data)
        logs.pop(self.target_tracker.name, None)  # a training-only loss: no val_ column for it
        return logs

    @property
    def metrics(self):
        return super().metrics + [self.target_tracker]


class _Strength(keras.callbacks.Callback):
    """Sets the model's ``strength`` to ``weight * ramp(p)`` (or ``weight``) before each batch."""

    def __init__(self, weight: float, total_steps: int, schedule: str):
        super().__init__()
        self.weight, self.total, self.schedule, self.step = weight, max(total_steps, 1), schedule, 0

    def on_train_batch_begin(self, batch, logs=None):
        p = min(self.step / self.total, 1.0)
        self.model.strength.assign(self.weight * (ramp(p) if self.schedule == "ramp" else 1.0))
        self.step += 1


class _Guard(keras.callbacks.Callback):
    """Stops training when ``val_<metric>`` falls more than ``margin`` below ``base`` and puts
    back the weights of the last epoch within the margin (those at the start if none)."""

    def __init__(self, metric: str, base: float, margin: float):
        super().__init__()
        self.key, self.base, self.margin = f"val_{metric}", base, margin
        self.safe, self.tripped_at, self.values = None, None, []

    def on_train_begin(self, logs=None):
        self.safe = self.model.get_weights()

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.key)
        if value is None:
            return
        self.values.append(float(value))
        if value < self.base - self.margin:
            self.tripped_at = epoch + 1
            self.model.stop_training = True
        else:
            self.safe = self.model.get_weights()

    def on_train_end(self, logs=None):
        if self.tripped_at is not None:
            self.model.set_weights(self.safe)
