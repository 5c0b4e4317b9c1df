"""Time-frequency saliency of speech classifiers over the log-mel features the model computes
itself, on ``tf.GradientTape``.

The run's model is ``waveform -> front end -> backbone -> head``. :class:`MelSaliency` splits it
at the front end's output (the log-mel, ``(frames, mel bands)``) and takes the gradient of the
predicted class's score with respect to it; the map is ``|gradient x (log-mel - its mean)|``
(gradient times input, measured from the clip's average level, so a first-order estimate of
what replacing a cell by the average would change), divided by its maximum: values 0..1, one
per frame and mel band. The class score is as in :mod:`tlmulti.evaluation.saliency`: the head's
logit against the others' probability-weighted logits, which does not vanish near probability 1.

Where the front end sits:

* :class:`~tlmulti.layers.audio.LogMelSpectrogram` as the model's own preprocessing layer
  (alone, or in a ``preprocess`` Sequential with SpecAugment, a no-op at inference): the
  ``log_mel`` contract of ``audio_cnn.*`` and the Whisper encoders;
* a mel layer inside the backbone (``speech_embedding.google``'s ``frontend``,
  :class:`~tlmulti.layers.speech_embedding.SpeechEmbeddingMel`): the backbone is cut in two there.

A model with neither (YAMNet's TF-Hub SavedModel computes its features inside one opaque layer)
cannot be explained: :class:`MelSaliency` raises a one-line :class:`RunError` naming it.

Example::

    sal = MelSaliency(model)
    maps, mels, classes = sal(waveforms)        # maps, mels: (N, frames, mel bands)
"""

from __future__ import annotations

import numpy as np

from tlmulti.errors import RunError

BATCH = 16
FRONT_ENDS = ("LogMelSpectrogram", "SpeechEmbeddingMel")


def _is_model(layer) -> bool:
    return hasattr(layer, "layers") and hasattr(layer, "inputs")


def _is_front(layer) -> bool:
    return layer.__class__.__name__ in FRONT_ENDS


def _split(model, backbone_name: str):
    """``(front, rest)``: the model's top-level steps up to the log-mel, and after it."""
    import keras

    chain = [l for l in model.layers if l.__class__.__name__ != "InputLayer"]
    for k, layer in enumerate(chain):
        if _is_front(layer):
            return chain[:k + 1], chain[k + 1:]
        if not _is_model(layer):
            continue
        inner = [l for l in layer.layers if _is_front(l)]
        if not inner:
            continue
        if isinstance(layer, keras.Sequential):  # preprocess: log-mel then SpecAugment (identity here)
            return chain[:k + 1], chain[k + 1:]
        cut = inner[0]
        head = keras.Model(layer.inputs, cut.output, name=f"{layer.name}_front")
        tail = keras.Model(cut.output, layer.output, name=f"{layer.name}_rest")
        return chain[:k] + [head], [tail] + chain[k + 1:]
    raise RunError(f"--explain needs the log-mel front end inside the model to take gradients over; backbone "
                   f"'{backbone_name}' computes its features inside one opaque layer, so speech saliency maps "
                   "cannot be made for it: drop --explain.")


class MelSaliency:
    """``sal(waveforms)`` (``(N, samples)`` float32, as the model takes them) gives
    ``(maps, log_mels, classes)``: maps 0..1 and the log-mel features, both ``(N, frames, mel
    bands)``, and the class explained for each clip (by default the most probable one)."""

    def __init__(self, model, backbone_name: str = "?"):
        import keras

        self.model = model
        self.front, self.rest = _split(model, backbone_name)
        self.logits = None
        heads = [l for l in self.rest if _is_model(l)]
        head = heads[1] if len(heads) > 1 and heads[0] is self.rest[0] else None
        last = head.layers[-1] if head is not None and head.layers else None
        if last is not None and last.__class__.__name__ == "Dense" and self.rest[1] is head:
            self.logits = (self.rest[0], keras.Model(head.inputs, last.input), last)

    def _scores(self, mel, classes):
        import tensorflow as tf

        index = tf.convert_to_tensor(np.asarray(classes, np.int32))
        if self.logits is not None:
            body, pre, dense = self.logits
            h = tf.cast(pre(body(mel, training=False), training=False), tf.float32)
            z = tf.matmul(h, tf.cast(dense.kernel, tf.float32))
            z = z + tf.cast(dense.bias, tf.float32) if dense.use_bias else z
            activation = getattr(getattr(dense, "activation", None), "__name__", "")
            own = tf.gather(z, index, axis=1, batch_dims=1)
            if activation == "softmax" and z.shape[-1] >= 2:
                mask = tf.one_hot(index, z.shape[-1], dtype=z.dtype)
                others = tf.stop_gradient(tf.nn.softmax(z - 1e9 * mask))
                own = own - tf.reduce_sum(others * z, axis=1)
            return own, z
        out = mel
        for layer in self.rest:
            out = layer(out, training=False)
        out = tf.cast(out, tf.float32)
        return tf.math.log(tf.clip_by_value(tf.gather(out, index, axis=1, batch_dims=1), 1e-7, 1.0)), out

    def _batch(self, x, classes):
        import tensorflow as tf

        mel = tf.convert_to_tensor(np.asarray(x, np.float32))
        for layer in self.front:
            mel = layer(mel, training=False)
        mel = tf.cast(mel, tf.float32)
        probs = np.asarray(self.model(tf.convert_to_tensor(np.asarray(x, np.float32)), training=False))
        if classes is None:
            classes = probs.argmax(axis=1)
        with tf.GradientTape() as tape:
            tape.watch(mel)
            score, z = self._scores(mel, classes)
        if not np.array_equal(np.asarray(z).argmax(1), probs.argmax(1)):
            raise RunError(f"Model '{self.model.name}' is not a plain chain of front end, backbone and head; its "
                           "saliency maps cannot be computed: drop --explain.")
        grads = tape.gradient(score, mel)
        mel = np.asarray(mel, np.float32)
        if grads is None:
            raise RunError(f"Model '{self.model.name}' gives no gradient from its class score to its log-mel "
                           "features; its saliency maps cannot be computed: drop --explain.")
        centred = mel - mel.mean(axis=(1, 2), keepdims=True)
        maps = np.abs(np.asarray(grads, np.float32) * centred)
        top = maps.reshape(len(maps), -1).max(axis=1)
        maps = np.where(top[:, None, None] > 0, maps / np.maximum(top, 1e-12)[:, None, None], 0.0)
        return maps.astype(np.float32), mel, np.asarray(classes, np.int64)

    def __call__(self, x, classes=None):
        x = np.asarray(x, np.float32)
        parts = [self._batch(x[i:i + BATCH], None if classes is None else np.asarray(classes)[i:i + BATCH])
                 for i in range(0, len(x), BATCH)]
        if not parts:
            return np.zeros((0, 0, 0), np.float32), np.zeros((0, 0, 0), np.float32), np.zeros(0, np.int64)
        return tuple(np.concatenate([p[j] for p in parts]) for j in range(3))


def spectrogram_overlay(mel: np.ndarray, saliency: np.ndarray, cell: int = 4) -> np.ndarray:
    """RGB uint8 picture: the log-mel ``(frames, mel bands)`` in grey with the saliency over it
    (:func:`tlmulti.evaluation.saliency.overlay`), time on x, low mel bands at the bottom, every
    cell ``cell`` pixels wide and high."""
    from tlmulti.evaluation.saliency import overlay

    mel = np.asarray(mel, np.float32)
    low, high = float(mel.min()), float(mel.max())
    grey = ((mel - low) / (high - low) * 255.0) if high > low else np.zeros_like(mel)
    picture = overlay(grey.T[::-1].astype(np.uint8), np.asarray(saliency, np.float32).T[::-1])
    return np.repeat(np.repeat(picture, cell, axis=0), cell, axis=1)
