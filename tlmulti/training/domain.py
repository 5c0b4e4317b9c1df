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
    the KL divergence of the mean prediction from the prior, each divided by ``log K``.
    :class:`LabelFreeScore` gives the same from predictions added batch by batch."""
    score = LabelFreeScore(sigmoid)
    score.add(probs)
    return score.result(prior)


class LabelFreeScore:
    """:func:`label_free_scores` of predictions added batch by batch (``add``), from running sums
    over their rows, so only one batch of predictions is held at a time."""

    def __init__(self, sigmoid: bool = False):
        self.sigmoid = sigmoid
        self.rows, self.entropy, self.sums = 0, 0.0, None

    @property
    def outputs(self) -> int:
        """Classes (or labels, for sigmoid outputs) of the predictions added so far."""
        return 0 if self.sums is None else len(self.sums)

    def add(self, probs) -> None:
        probs = np.asarray(probs, dtype=np.float64)
        p = probs.reshape(-1, probs.shape[-1])
        if self.sigmoid:
            p = np.clip(p, 1e-7, 1 - 1e-7)
            self.entropy += float(np.sum(-(p * np.log(p) + (1 - p) * np.log(1 - p))))
        else:
            p = np.clip(p, 1e-12, 1.0)
            self.entropy += float(np.sum(-np.sum(p * np.log(p), axis=1)))
        sums = p.sum(axis=0)
        self.sums = sums if self.sums is None else self.sums + sums
        self.rows += len(p)

    def result(self, prior) -> dict:
        q = self.sums / self.rows
        if self.sigmoid:
            entropy = self.entropy / (self.rows * len(q)) / math.log(2)
            r = np.clip(np.asarray(prior, np.float64), 1e-7, 1 - 1e-7)
            kl = float(np.mean(q * np.log(q / r) + (1 - q) * np.log((1 - q) / (1 - r)))) / math.log(2)
        else:
            k = len(q)
            entropy = self.entropy / self.rows / math.log(k)
            r = np.clip(np.asarray(prior, np.float64), 1e-12, 1.0)
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


STATISTICS_EXAMPLES = 256  # examples from which BatchNorm statistics are measured (streamed in batches)


def _example_moments(x, axis: int):
    """Per-example, per-channel float32 mean and variance of a layer input (``(batch, channels)``
    each) and the number of values each example has per channel."""
    import tensorflow as tf

    rank = len(x.shape)
    axes = [a for a in range(1, rank) if a != axis % rank]
    x = tf.cast(x, "float32")
    if not axes:  # (batch, channels): one value per example and channel (tf.nn.moments would
        return x, tf.zeros_like(x), tf.constant(1)  # squeeze every size-1 axis, batch included)
    mean, var = tf.nn.moments(x, axes=axes)
    return mean, var, tf.reduce_prod(tf.gather(tf.shape(x), axes))


class _Moments:
    """Per-channel mean and variance of a layer's inputs over every batch added, from each
    example's float32 moments merged in float64 (Chan et al.'s parallel update): no float32 sum
    runs over more than one example's values, and only the running moments are kept."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, mean, var, count) -> None:
        mean, var, count = np.asarray(mean, np.float64), np.asarray(var, np.float64), int(count)
        batch_mean = mean.mean(axis=0)
        n, m2 = count * len(mean), count * (var.sum(axis=0) + ((mean - batch_mean) ** 2).sum(axis=0))
        total = self.n + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.n * n / total)
        self.n = total

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return self.mean, self.m2 / self.n


def _adapted(m, v, eps: float, source, target):
    """The moving statistics ``(m', v')`` with which inputs of moments ``target`` are normalised
    as inputs of moments ``source`` were with ``(m, v)`` (see :func:`adapt_batchnorm`), from NumPy
    arrays or tensors."""
    (mu_s, var_s), (mu_t, var_t) = source, target
    new_v = ops.maximum(var_t * (v + eps) / ops.maximum(var_s, 1e-12) - eps, 0.0)
    return mu_t - ops.sqrt(new_v + eps) * (mu_s - m) / ops.sqrt(v + eps), new_v


def _mixed(source, target, prior: float, n: float):
    """Target moments mixed with source ones, ``(prior * source + n * target) / (prior + n)``."""
    if not prior:
        return target
    return tuple((prior * s + n * t) / (prior + n) for s, t in zip(source, target))


def _stream(model, layers, x, examples: int, batch: int, transform=None) -> list:
    """``[(layer, _Moments)]``, in the order ``model`` first calls them, of the inputs of ``layers``
    (BatchNorm layers of ``model``) on up to ``examples`` examples of ``x`` drawn with seed 0, in
    random order (each batch a random sample of them, whatever order ``x`` is in, e.g. by class),
    read by index a batch at a time, every batch through one compiled function (traced once).

    The layers run in inference mode, except where ``transform(layer, mean, var)``, given the
    float32 per-channel moments of the layer's input over the batch at its first call, returns a
    function of the input: that layer's output in this pass, at that call and any later one."""
    import tensorflow as tf

    from tlmulti.data.pipeline import make_dataset

    size = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
    idx = np.random.default_rng(0).permutation(size)[:examples]
    ds = make_dataset(x, None, batch, indices=idx)
    originals = {id(l): l.call for l in layers}
    seen: list = []  # the layers measured, in the order of the traced pass
    measured: list = []
    applied: dict = {}

    def measuring(layer):
        def call(inputs, *args, **kwargs):
            if id(layer) not in applied:  # a layer called twice: measured at its first call
                mean, var, count = _example_moments(inputs, layer.axis)
                seen.append(layer)
                measured.append((mean, var, count))
                batch_mean = tf.reduce_mean(mean, axis=0)
                batch_var = tf.reduce_mean(var + tf.square(mean - batch_mean), axis=0)
                applied[id(layer)] = transform(layer, batch_mean, batch_var) if transform else None
            if applied[id(layer)] is None:
                return originals[id(layer)](inputs, training=False)
            return applied[id(layer)](inputs)
        return call

    def forward(xs):
        seen.clear()
        measured.clear()
        applied.clear()
        model(xs, training=False)
        return list(measured)

    for l in layers:
        l.call = measuring(l)
    try:
        fn = tf.function(forward, autograph=False).get_concrete_function(ds.element_spec)  # traced here, once
        moments = [(layer, _Moments()) for layer in seen]
        for xs in ds:
            for (_, m), (mean, var, count) in zip(moments, fn(xs)):
                m.add(mean.numpy(), var.numpy(), count.numpy())
    finally:
        for l in layers:
            l.call = originals[id(l)]
    return moments


def _batch_adapted(source: dict, prior: float, n: float):
    """The ``transform`` of :func:`_stream` that normalises each layer's input with the adapted
    statistics computed from the batch's own target moments and the layer's ``source`` moments."""

    def transform(layer, mean, var):
        if id(layer) not in source:
            return None
        src = tuple(ops.convert_to_tensor(a.astype(np.float32)) for a in source[id(layer)])
        m, v = ops.cast(layer.moving_mean, "float32"), ops.cast(layer.moving_variance, "float32")
        new_m, new_v = _adapted(m, v, layer.epsilon, src, _mixed(src, (mean, var), prior, n))
        gamma = ops.cast(layer.gamma, "float32") if layer.scale else None
        beta = ops.cast(layer.beta, "float32") if layer.center else None

        def apply(inputs):
            out = ops.batch_normalization(ops.cast(inputs, "float32"), new_m, new_v, axis=layer.axis,
                                          offset=beta, scale=gamma, epsilon=layer.epsilon)
            return ops.cast(out, layer.compute_dtype)
        return apply
    return transform


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

    Statistics are measured on up to ``examples`` source and target examples, at each layer's
    first call in a forward pass, streamed in batches of ``batch`` through one compiled function
    per pass and accumulated per channel, so memory holds one batch's activations whatever the
    number of examples or their resolution. One pass over the source examples measures every
    layer with the model as trained (inference mode). One pass over the target examples measures
    them with the target statistics propagating, as AdaBN does: every layer normalises each
    batch (a random sample of the examples) with the statistics above computed from that batch's
    own target moments (mixed with the prior too), so a layer's input is measured with the layers
    before it adapted to that batch. With ``batch`` at least the
    number of examples, the batch is the whole sample and this is exact: the statistics set
    normalise every layer's input, in inference mode, as that pass did."""
    model = parts.assemble(backbone_training=False, augment=False, name="statistics")
    layers = batchnorm_layers(model)
    if not layers:
        raise TlmultiError("AdaBN needs BatchNorm layers, and this model has none (e.g. VGG16 backbones); "
                           "use adaptation.method dann, coral, mmd, entropy or self_training instead.")
    n = float(batch)
    source = {id(l): m.result() for l, m in _stream(model, layers, source_x, examples, batch)}
    target = _stream(model, layers, target_x, examples, batch, _batch_adapted(source, prior, n))
    for layer, moments in target:
        m, v = np.array(layer.moving_mean, np.float64), np.array(layer.moving_variance, np.float64)
        src = source[id(layer)]
        new_m, new_v = _adapted(m, v, layer.epsilon, src, _mixed(src, moments.result(), prior, n))
        layer.moving_mean.assign(ops.cast(new_m, "float32"))
        layer.moving_variance.assign(ops.cast(new_v, "float32"))
    return len(layers)
