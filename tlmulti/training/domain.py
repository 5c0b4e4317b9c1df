"""Building blocks of domain adaptation (:mod:`tlmulti.training.adaptation` combines them):
alignment losses between source and target features, losses on target predictions, label-free
scores of target predictions, gradient reversal, Ganin et al.'s learning-rate annealing, and the
transfer of BatchNorm statistics from source to target inputs.

Example::

    from tlmulti.training.domain import label_free_scores, class_prior
    label_free_scores(probs, class_prior(train_labels, num_classes))   # {"score": ..., ...}
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from tlmulti.errors import TlmultiError
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


def mmd_loss(source, target, kernels: int = 5, multiplier: float = 2.0):
    """Squared maximum mean discrepancy with a sum of Gaussian kernels whose bandwidths are the
    mean pairwise squared distance times ``multiplier ** (k - kernels // 2)`` (DAN's estimator)."""
    s, t = ops.cast(source, "float32"), ops.cast(target, "float32")
    x = ops.concatenate([s, t], axis=0)
    sq = ops.sum(x * x, axis=1)
    dist = ops.maximum(sq[:, None] + sq[None, :] - 2.0 * ops.matmul(x, ops.transpose(x)), 0.0)
    n = ops.cast(ops.shape(x)[0], "float32")
    bandwidth = ops.stop_gradient(ops.sum(dist) / ops.maximum(n * n - n, 1.0))
    bandwidth = ops.maximum(bandwidth, 1e-6)
    kernel = sum(ops.exp(-dist / (bandwidth * multiplier ** (k - kernels // 2))) for k in range(kernels))
    ns = ops.shape(s)[0]
    k_ss, k_tt, k_st = kernel[:ns, :ns], kernel[ns:, ns:], kernel[:ns, ns:]
    return ops.mean(k_ss) + ops.mean(k_tt) - 2.0 * ops.mean(k_st)


def _distributions(probs, sigmoid: bool):
    """Predictions as rows of class distributions: softmax outputs flattened over any spatial
    axes (pixels), sigmoid outputs as one two-class distribution per label."""
    if sigmoid:
        p = ops.reshape(probs, (-1, 1))
        return ops.concatenate([1.0 - p, p], axis=1)
    return ops.reshape(probs, (-1, ops.shape(probs)[-1]))


def information_maximisation(probs, sigmoid: bool = False):
    """Mean prediction entropy minus the entropy of the mean prediction (to be minimised)."""
    p = ops.clip(ops.cast(_distributions(probs, sigmoid), "float32"), 1e-7, 1.0)
    entropy = -ops.mean(ops.sum(p * ops.log(p), axis=1))
    mean = ops.mean(p, axis=0)
    return entropy + ops.sum(mean * ops.log(mean))


def confident_pseudo_label_loss(probs, threshold: float, sigmoid: bool = False):
    """Cross-entropy of predictions against their own argmax where its probability is at least
    ``threshold``, averaged over all predictions (unconfident ones count as zero)."""
    p = ops.clip(ops.cast(_distributions(probs, sigmoid), "float32"), 1e-7, 1.0)
    confidence = ops.stop_gradient(ops.max(p, axis=1))
    target = ops.stop_gradient(ops.one_hot(ops.argmax(p, axis=1), ops.shape(p)[1]))
    mask = ops.cast(confidence >= threshold, "float32")
    return ops.mean(mask * -ops.sum(target * ops.log(p), axis=1))


def label_free_scores(probs: np.ndarray, prior: np.ndarray, sigmoid: bool = False) -> dict:
    """Target-prediction scores needing no target labels (higher ``score`` is better).

    ``probs``: predicted probabilities (examples x classes, or x pixels x classes; sigmoid
    outputs per label); ``prior``: the training labels' class frequencies (per label for
    sigmoid: the positive rate). ``entropy`` is the mean prediction entropy and ``balance_kl``
    the KL divergence of the mean prediction from the prior, each divided by ``log K``."""
    probs = np.asarray(probs, dtype=np.float64)
    if sigmoid:
        p = np.clip(probs.reshape(-1, probs.shape[-1]), 1e-7, 1 - 1e-7)
        entropy = float(np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p)))) / math.log(2)
        q, r = p.mean(axis=0), np.clip(np.asarray(prior, np.float64), 1e-7, 1 - 1e-7)
        kl = float(np.mean(q * np.log(q / r) + (1 - q) * np.log((1 - q) / (1 - r)))) / math.log(2)
    else:
        k = probs.shape[-1]
        p = np.clip(probs.reshape(-1, k), 1e-12, 1.0)
        entropy = float(np.mean(-np.sum(p * np.log(p), axis=1))) / math.log(k)
        q, r = p.mean(axis=0), np.clip(np.asarray(prior, np.float64), 1e-12, 1.0)
        r = r / r.sum()
        kl = float(np.sum(q * np.log(q / r))) / math.log(k)
    return {"target_entropy": round(entropy, 4), "target_balance_kl": round(kl, 4),
            "score": round(-entropy - kl, 4)}


def class_prior(y, num_outputs: int, sigmoid: bool = False) -> np.ndarray:
    """Class frequencies of training labels (class ids of any shape: images, pixels), or the
    positive rate per label for multi-label targets."""
    y = np.asarray(y)
    if sigmoid:
        return y.reshape(-1, num_outputs).astype(float).mean(axis=0)
    ids = y.reshape(-1).astype(int)
    ids = ids[(ids >= 0) & (ids < num_outputs)]
    counts = np.bincount(ids, minlength=num_outputs).astype(float)
    return counts / max(counts.sum(), 1.0)


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
    """DANN's weight ramp, 0 at the start of the stage to 1 at its end."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


@keras.saving.register_keras_serializable(package="tlmulti")
class AnnealedRate(keras.optimizers.schedules.LearningRateSchedule):
    """Ganin et al.'s annealing: ``rate / (1 + 10 p) ** 0.75`` with ``p`` the stage's progress."""

    def __init__(self, rate: float, total_steps: int):
        self.rate, self.total_steps = float(rate), max(int(total_steps), 1)

    def __call__(self, step):
        p = ops.minimum(ops.cast(step, "float32") / float(self.total_steps), 1.0)
        return self.rate / ops.power(1.0 + 10.0 * p, 0.75)

    def get_config(self):
        return {"rate": self.rate, "total_steps": self.total_steps}


def batchnorm_layers(model) -> list:
    return [l for l in all_sublayers(model) if is_batchnorm(l)]


STATISTICS_EXAMPLES = 256  # examples (one batch) from which BatchNorm statistics are measured


def _channel_moments(x, axis: int):
    import tensorflow as tf

    axes = [a for a in range(len(x.shape)) if a != axis % len(x.shape)]
    mean, var = tf.nn.moments(tf.cast(x, "float32"), axes=axes)
    return mean.numpy().astype(np.float64), var.numpy().astype(np.float64)


def _sample(x, n: int, seed: int = 0):
    size = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
    idx = np.sort(np.random.default_rng(seed).permutation(size)[:n])
    return {k: v[idx] for k, v in x.items()} if isinstance(x, dict) else np.asarray(x[idx])  # files: decoded here


def adapt_batchnorm(parts, target_x, source_x, prior: float = 0.0, batch: int = 32,
                    examples: int = STATISTICS_EXAMPLES) -> int:
    """Set every BatchNorm layer's moving statistics so that target inputs are normalised the way
    source inputs were; returns the number of layers changed (only their moving mean and variance).

    For each layer, with ``(m, v)`` its moving statistics, ``(mu_s, var_s)`` the statistics of its
    input on source examples and ``(mu_t, var_t)`` on target examples, the new statistics make the
    normalised target activations have the mean and variance the source ones had:
    ``v' = var_t (v + eps) / var_s - eps`` and ``m' = mu_t - sqrt(v' + eps) (mu_s - m) / sqrt(v + eps)``.
    When a layer's statistics were measured on the source (BatchNorm trained there) this is
    AdaBN's ``(mu_t, var_t)``; when they are still ImageNet's (BatchNorm frozen while fine-tuning)
    plain replacement would also move the source away from what the head learnt, and this does
    not. ``prior > 0`` (test-time BN) first mixes the target statistics with the source ones,
    ``(prior * source + batch * target) / (prior + batch)``.

    Statistics are measured on one batch of up to ``examples`` source and target examples, the
    source pass with the model as trained, the target pass layer after layer as adapted so far
    (exact, in one forward pass, because each layer sees the whole batch)."""
    import tensorflow as tf

    model = parts.assemble(backbone_training=False, augment=False, name="statistics")
    layers = batchnorm_layers(model)
    if not layers:
        raise TlmultiError("AdaBN needs BatchNorm layers, and this model has none (e.g. VGG16 backbones); "
                           "use adaptation.method dann, coral, mmd, entropy or self_training instead.")
    source_stats: dict[int, tuple] = {}
    originals = {id(l): l.call for l in layers}

    def recording(layer):
        def call(inputs, *args, **kwargs):
            source_stats[id(layer)] = _channel_moments(inputs, layer.axis)
            return originals[id(layer)](inputs, training=False)
        return call

    def adapting(layer):
        def call(inputs, *args, **kwargs):
            mu_t, var_t = _channel_moments(inputs, layer.axis)
            mu_s, var_s = source_stats[id(layer)]
            if prior:
                mu_t, var_t = (prior * mu_s + n * mu_t) / (prior + n), (prior * var_s + n * var_t) / (prior + n)
            m, v, eps = np.array(layer.moving_mean, np.float64), np.array(layer.moving_variance, np.float64), layer.epsilon
            new_v = np.maximum(var_t * (v + eps) / np.maximum(var_s, 1e-12) - eps, 0.0)
            new_m = mu_t - np.sqrt(new_v + eps) * (mu_s - m) / np.sqrt(v + eps)
            layer.moving_mean.assign(new_m.astype(np.float32))
            layer.moving_variance.assign(new_v.astype(np.float32))
            return originals[id(layer)](inputs, training=False)
        return call

    def run(x, wrap):
        for l in layers:
            l.call = wrap(l)
        try:
            xs = _sample(x, examples)
            model({k: tf.constant(v) for k, v in xs.items()} if isinstance(xs, dict) else tf.constant(xs), training=False)
        finally:
            for l in layers:
                l.call = originals[id(l)]

    n = float(batch)
    run(source_x, recording)
    run(target_x, adapting)
    return len(layers)
